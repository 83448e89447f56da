// Device: the framework's WDFDEVICE, with a typed context. A driver on the
// framework fills in callbacks and makes queues in its device-add routine; the
// framework owns the dispatch table: it sends I/O to the queues, and does every
// PnP and power IRP in KMDF's order (see Framework.swift), with the remove
// lock, the surprise-removal and the not-in-D0 behaviour built in.

import Synchronization
import WDM

/// A framework device object, whatever its context's type. Everything the
/// framework does per request lives here, in a class that is not generic, so
/// the dispatch path looks up no generic metadata; `Device<Context>` adds the
/// driver's typed context and the callbacks' typed signatures.
public class AnyDevice: FrameworkObject, @unchecked Sendable {
    /// The WDM device object underneath (`WdfDeviceWdmGetDeviceObject`). Not owned:
    /// the device object owns this (its extension), and the two go together.
    public unowned let deviceObject: DeviceObject
    /// True for a filter's device (requests it has no queue for go down).
    public let isFilter: Bool

    init(_ deviceObject: DeviceObject, isFilter: Bool) {
        self.deviceObject = deviceObject
        self.isFilter = isFilter
        super.init(parent: nil)
    }

    public var ioManager: IOManager { deviceObject.driverObject.ioManager }
    /// The device below (`WdfDeviceWdmGetAttachedDevice`): where `forwardToLower` sends.
    public var lowerDevice: DeviceObject? { deviceObject.lowerDevice }
    /// The device node of the stack.
    public var node: DeviceNode? { deviceObject.deviceNode }
    public var powerState: DevicePowerState { deviceObject.powerState }
    /// The logger of the device's driver (swift-log, the driver's name on each line).
    public var logger: Logger { deviceObject.driverObject.logger }

    // The callbacks, stored untyped; `Device<Context>`'s setters type them.
    // This configuration (callbacks, queues, interfaces, context) is written while
    // the device-add routine runs, before any request reaches the device, and only
    // read after: no dynamic exclusivity check on each read of the I/O path.
    typealias Step = @Sendable (AnyDevice) -> NTStatus
    typealias Action = @Sendable (AnyDevice) -> Void
    @exclusivity(unchecked) var prepareHardware: Step?, releaseHardware: Action?
    @exclusivity(unchecked) var d0Entry: (@Sendable (AnyDevice, DevicePowerState) -> NTStatus)?
    @exclusivity(unchecked) var d0Exit: (@Sendable (AnyDevice, DevicePowerState) -> Void)?
    @exclusivity(unchecked) var selfManagedInit: Action?, selfManagedSuspend: Action?, selfManagedRestart: Action?, selfManagedCleanup: Action?
    @exclusivity(unchecked) var fileCreate: (@Sendable (AnyDevice, consuming Request) -> Void)?
    @exclusivity(unchecked) var fileCleanup: (@Sendable (AnyDevice, FileObject?) -> Void)?, fileClose: (@Sendable (AnyDevice, FileObject?) -> Void)?
    @exclusivity(unchecked) var surpriseRemoval: Action?
    @exclusivity(unchecked) var queryRemove: Step?, queryStop: Step?
    /// Each with the set of majors it sees, one bit per major code.
    @exclusivity(unchecked) var preprocessors: [(majors: UInt32, run: @Sendable (AnyDevice, IRP) -> Void)] = []

    // MARK: - Queues

    @exclusivity(unchecked) var queues: [Queue] = []
    @exclusivity(unchecked) var dispatching: [MajorFunction: Queue] = [:]
    @exclusivity(unchecked) var defaultQueue: Queue?
    /// The queue each major goes to, by its code (its own, else the default for
    /// reads, writes and device controls): one load on the dispatch path.
    @exclusivity(unchecked) private(set) var queueFor = [Queue?](repeating: nil, count: Int(MajorFunction.pnp.rawValue) + 1)
    /// The majors a default queue gets.
    static var ioMajors: [MajorFunction] { [.read, .write, .deviceControl, .internalDeviceControl] }

    /// A manual queue: requests wait until the driver takes them (`next()`).
    public func manualQueue(powerManaged: Bool? = nil) -> Queue {
        makeQueue(.manual, majors: [], isDefault: false, powerManaged: powerManaged, handler: nil)
    }

    func makeQueue(_ dispatch: Queue.Dispatch, majors: [MajorFunction], isDefault: Bool, powerManaged: Bool?,
                           handler: (@Sendable (consuming Request) -> Void)?) -> Queue {
        let managed = powerManaged ?? !isFilter
        let q = Queue(parent: self, dispatch: dispatch, powerManaged: managed,
                      startsStopped: managed && !state.withLock { $0.inD0 }, handler: handler)
        queues.append(q)
        for m in majors { dispatching[m] = q }
        if isDefault { defaultQueue = q }
        for m in MajorFunction.allCases {
            queueFor[Int(m.rawValue)] = dispatching[m] ?? (AnyDevice.ioMajors.contains(m) ? defaultQueue : nil)
        }
        return q
    }

    // MARK: - Interfaces

    @exclusivity(unchecked) var interfaces: [String] = []
    /// `WdfDeviceCreateDeviceInterface`: registered now, enabled once the device
    /// starts, disabled when it goes.
    public func createInterface(_ classGUID: String) {
        guard let pdo = node?.pdo else { return }
        interfaces.append(ioManager.registerDeviceInterface(pdo, classGUID: classGUID))
    }

    func setInterfaces(enabled: Bool) {
        for i in interfaces { _ = ioManager.setDeviceInterfaceState(i, enabled: enabled) }
    }

    // MARK: - State

    struct State {
        var inD0 = false
        var hardwarePrepared = false
        var selfManagedStarted = false
        var selfManagedEverStarted = false
        var surpriseRemoved = false
    }
    let state = HandoffMutex(State())  // a Mutex whose handoffs ThreadSanitizer sees
}

/// A framework device object and its driver's context, of the driver's own type.
public final class Device<Context: AnyObject & Sendable>: AnyDevice, @unchecked Sendable {
    @exclusivity(unchecked) var contextStorage: Context?

    /// The driver's context (what its device-add routine returned).
    public var context: Context {
        guard let c = contextStorage else { preconditionFailure("a device's context is there once its device-add routine returned") }
        return c
    }

    /// The typed device a stored callback gets (the framework made it of this type).
    @inline(__always) static func of(_ device: AnyDevice) -> Device { unsafeDowncast(device, to: Device.self) }

    // MARK: - Callbacks (KMDF's EvtDevice*)

    /// `EvtDevicePrepareHardware`: at START, after the lower drivers started, before D0 entry.
    public func onPrepareHardware(_ f: @escaping @Sendable (Device) -> NTStatus) { prepareHardware = { f(Device.of($0)) } }
    /// `EvtDeviceReleaseHardware`: after D0 exit, at STOP and at removal.
    public func onReleaseHardware(_ f: @escaping @Sendable (Device) -> Void) { releaseHardware = { f(Device.of($0)) } }
    /// `EvtDeviceD0Entry`, with the state the device comes from.
    public func onD0Entry(_ f: @escaping @Sendable (Device, DevicePowerState) -> NTStatus) { d0Entry = { f(Device.of($0), $1) } }
    /// `EvtDeviceD0Exit`, with the state the device goes to.
    public func onD0Exit(_ f: @escaping @Sendable (Device, DevicePowerState) -> Void) { d0Exit = { f(Device.of($0), $1) } }
    /// `EvtDeviceSelfManagedIoInit` (first start), `...Suspend` (before D0 exit),
    /// `...Restart` (after D0 entry, later starts), `...Cleanup` (at removal).
    public func onSelfManagedIO(initialize: (@Sendable (Device) -> Void)? = nil, suspend: (@Sendable (Device) -> Void)? = nil,
                                restart: (@Sendable (Device) -> Void)? = nil, cleanup: (@Sendable (Device) -> Void)? = nil) {
        func untyped(_ f: (@Sendable (Device) -> Void)?) -> Action? {
            guard let f else { return nil }
            return { f(Device.of($0)) }
        }
        (selfManagedInit, selfManagedSuspend, selfManagedRestart, selfManagedCleanup) =
            (untyped(initialize), untyped(suspend), untyped(restart), untyped(cleanup))
    }
    /// `EvtDeviceFileCreate`: the driver completes the create request (without
    /// one a create succeeds, or goes down on a filter).
    public func onFileCreate(_ f: @escaping @Sendable (Device, consuming Request) -> Void) { fileCreate = { f(Device.of($0), $1) } }
    /// `EvtFileCleanup` (the framework has already cancelled the handle's waiting requests).
    public func onFileCleanup(_ f: @escaping @Sendable (Device, FileObject?) -> Void) { fileCleanup = { f(Device.of($0), $1) } }
    /// `EvtFileClose`.
    public func onFileClose(_ f: @escaping @Sendable (Device, FileObject?) -> Void) { fileClose = { f(Device.of($0), $1) } }
    /// `EvtDeviceSurpriseRemoval`: runs before the framework purges the queues, so
    /// the driver may complete what it holds with a status of its own.
    public func onSurpriseRemoval(_ f: @escaping @Sendable (Device) -> Void) { surpriseRemoval = { f(Device.of($0)) } }
    /// `EvtDeviceQueryRemove` / `EvtDeviceQueryStop`: an error status vetoes.
    public func onQueryRemove(_ f: @escaping @Sendable (Device) -> NTStatus) { queryRemove = { f(Device.of($0)) } }
    public func onQueryStop(_ f: @escaping @Sendable (Device) -> NTStatus) { queryStop = { f(Device.of($0)) } }
    /// `EvtDeviceWdmIrpPreprocess`: sees the IRPs of `majors` (PnP and power
    /// included) before the framework handles them.
    public func preprocess(_ majors: [MajorFunction], _ f: @escaping @Sendable (Device, IRP) -> Void) { preprocessors.append((majors.reduce(0) { $0 | 1 << $1.rawValue }, { f(Device.of($0), $1) })) }

    /// `WdfIoQueueCreate`: a queue presenting its requests to `handler`; it gets
    /// the requests of `majors` (`WdfDeviceConfigureRequestDispatching`), or, as
    /// the default queue, every read, write and device control no other queue
    /// gets. Power-managed by default on a function driver, not on a filter.
    @discardableResult
    public func queue(_ dispatch: Queue.Dispatch, for majors: [MajorFunction] = [], isDefault: Bool = false,
                      powerManaged: Bool? = nil, handler: @escaping @Sendable (Device, consuming Request) -> Void) -> Queue {
        makeQueue(dispatch, majors: majors, isDefault: isDefault, powerManaged: powerManaged) { [unowned(unsafe) self] request in
            handler(self, request)
        }
    }
}
