// Device: the framework's WDFDEVICE, with a typed context. A driver on the
// framework fills in callbacks and makes queues in its device-add routine; the
// framework owns the dispatch table: it sends I/O to the queues, and does every
// PnP and power IRP in KMDF's order (see Framework.swift), with the remove
// lock, the surprise-removal and the not-in-D0 behaviour built in.

import Synchronization
import WDM

/// A framework device object and its driver's context, of the driver's own type.
public final class Device<Context: AnyObject & Sendable>: FrameworkObject, @unchecked Sendable {
    /// The WDM device object underneath (`WdfDeviceWdmGetDeviceObject`). Not owned:
    /// the device object owns this (its extension), and the two go together.
    public unowned let deviceObject: DeviceObject
    /// True for a filter's device (requests it has no queue for go down).
    public let isFilter: Bool
    var contextStorage: Context?

    init(_ deviceObject: DeviceObject, isFilter: Bool) {
        self.deviceObject = deviceObject
        self.isFilter = isFilter
        super.init(parent: nil)
    }

    /// The driver's context (what its device-add routine returned).
    public var context: Context {
        guard let c = contextStorage else { preconditionFailure("a device's context is there once its device-add routine returned") }
        return c
    }
    public var ioManager: IOManager { deviceObject.driverObject.ioManager }
    /// The device below (`WdfDeviceWdmGetAttachedDevice`): where `forwardToLower` sends.
    public var lowerDevice: DeviceObject? { deviceObject.lowerDevice }
    /// The device node of the stack.
    public var node: DeviceNode? { deviceObject.deviceNode }
    public var powerState: DevicePowerState { deviceObject.powerState }
    /// The logger of the device's driver (swift-log, the driver's name on each line).
    public var logger: Logger { deviceObject.driverObject.logger }

    // MARK: - Callbacks (KMDF's EvtDevice*)

    typealias Step = @Sendable (Device) -> NTStatus
    typealias Action = @Sendable (Device) -> Void
    var prepareHardware: Step?, releaseHardware: Action?
    var d0Entry: (@Sendable (Device, DevicePowerState) -> NTStatus)?
    var d0Exit: (@Sendable (Device, DevicePowerState) -> Void)?
    var selfManagedInit: Action?, selfManagedSuspend: Action?, selfManagedRestart: Action?, selfManagedCleanup: Action?
    var fileCreate: (@Sendable (Device, consuming Request) -> Void)?
    var fileCleanup: (@Sendable (Device, FileObject?) -> Void)?, fileClose: (@Sendable (Device, FileObject?) -> Void)?
    var surpriseRemoval: Action?
    var queryRemove: Step?, queryStop: Step?
    var preprocessors: [(majors: [MajorFunction], run: @Sendable (Device, IRP) -> Void)] = []

    /// `EvtDevicePrepareHardware`: at START, after the lower drivers started, before D0 entry.
    public func onPrepareHardware(_ f: @escaping @Sendable (Device) -> NTStatus) { prepareHardware = f }
    /// `EvtDeviceReleaseHardware`: after D0 exit, at STOP and at removal.
    public func onReleaseHardware(_ f: @escaping @Sendable (Device) -> Void) { releaseHardware = f }
    /// `EvtDeviceD0Entry`, with the state the device comes from.
    public func onD0Entry(_ f: @escaping @Sendable (Device, DevicePowerState) -> NTStatus) { d0Entry = f }
    /// `EvtDeviceD0Exit`, with the state the device goes to.
    public func onD0Exit(_ f: @escaping @Sendable (Device, DevicePowerState) -> Void) { d0Exit = f }
    /// `EvtDeviceSelfManagedIoInit` (first start), `...Suspend` (before D0 exit),
    /// `...Restart` (after D0 entry, later starts), `...Cleanup` (at removal).
    public func onSelfManagedIO(initialize: (@Sendable (Device) -> Void)? = nil, suspend: (@Sendable (Device) -> Void)? = nil,
                                restart: (@Sendable (Device) -> Void)? = nil, cleanup: (@Sendable (Device) -> Void)? = nil) {
        (selfManagedInit, selfManagedSuspend, selfManagedRestart, selfManagedCleanup) = (initialize, suspend, restart, cleanup)
    }
    /// `EvtDeviceFileCreate`: the driver completes the create request (without
    /// one a create succeeds, or goes down on a filter).
    public func onFileCreate(_ f: @escaping @Sendable (Device, consuming Request) -> Void) { fileCreate = f }
    /// `EvtFileCleanup` (the framework has already cancelled the handle's waiting requests).
    public func onFileCleanup(_ f: @escaping @Sendable (Device, FileObject?) -> Void) { fileCleanup = f }
    /// `EvtFileClose`.
    public func onFileClose(_ f: @escaping @Sendable (Device, FileObject?) -> Void) { fileClose = f }
    /// `EvtDeviceSurpriseRemoval`: runs before the framework purges the queues, so
    /// the driver may complete what it holds with a status of its own.
    public func onSurpriseRemoval(_ f: @escaping @Sendable (Device) -> Void) { surpriseRemoval = f }
    /// `EvtDeviceQueryRemove` / `EvtDeviceQueryStop`: an error status vetoes.
    public func onQueryRemove(_ f: @escaping @Sendable (Device) -> NTStatus) { queryRemove = f }
    public func onQueryStop(_ f: @escaping @Sendable (Device) -> NTStatus) { queryStop = f }
    /// `EvtDeviceWdmIrpPreprocess`: sees the IRPs of `majors` (PnP and power
    /// included) before the framework handles them.
    public func preprocess(_ majors: [MajorFunction], _ f: @escaping @Sendable (Device, IRP) -> Void) { preprocessors.append((majors, f)) }

    // MARK: - Queues

    var queues: [Queue] = []
    var dispatching: [MajorFunction: Queue] = [:]
    var defaultQueue: Queue?
    /// The majors a default queue gets.
    static var ioMajors: [MajorFunction] { [.read, .write, .deviceControl, .internalDeviceControl] }

    /// `WdfIoQueueCreate`: a queue presenting its requests to `handler`; it gets
    /// the requests of `majors` (`WdfDeviceConfigureRequestDispatching`), or, as
    /// the default queue, every read, write and device control no other queue
    /// gets. Power-managed by default on a function driver, not on a filter.
    @discardableResult
    public func queue(_ dispatch: Queue.Dispatch, for majors: [MajorFunction] = [], isDefault: Bool = false,
                      powerManaged: Bool? = nil, handler: @escaping @Sendable (Device, consuming Request) -> Void) -> Queue {
        makeQueue(dispatch, majors: majors, isDefault: isDefault, powerManaged: powerManaged) { [unowned self] request in
            handler(self, request)
        }
    }

    /// A manual queue: requests wait until the driver takes them (`next()`).
    public func manualQueue(powerManaged: Bool? = nil) -> Queue {
        makeQueue(.manual, majors: [], isDefault: false, powerManaged: powerManaged, handler: nil)
    }

    private func makeQueue(_ dispatch: Queue.Dispatch, majors: [MajorFunction], isDefault: Bool, powerManaged: Bool?,
                           handler: (@Sendable (consuming Request) -> Void)?) -> Queue {
        let managed = powerManaged ?? !isFilter
        let q = Queue(parent: self, dispatch: dispatch, powerManaged: managed,
                      startsStopped: managed && !state.withLock { $0.inD0 }, handler: handler)
        queues.append(q)
        for m in majors { dispatching[m] = q }
        if isDefault { defaultQueue = q }
        return q
    }

    // MARK: - Interfaces

    var interfaces: [String] = []
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
    let state = Mutex(State())
}
