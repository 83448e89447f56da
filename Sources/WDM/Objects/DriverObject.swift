// DriverObject: a loaded driver, with its dispatch table (MajorFunction[]),
// its AddDevice and Unload routines, and the devices it created.

import Synchronization

/// `PDRIVER_DISPATCH`: handles one IRP sent to `device`.
/// It completes the IRP, passes it down, or marks it pending and returns `.pending`.
public typealias DispatchRoutine = @Sendable (_ device: DeviceObject, _ irp: IRP) -> NTStatus
/// `PDRIVER_ADD_DEVICE`: create a device for `pdo` and attach it to the stack.
public typealias AddDeviceRoutine = @Sendable (_ driver: DriverObject, _ pdo: DeviceObject) -> NTStatus
/// `PDRIVER_UNLOAD`
public typealias UnloadRoutine = @Sendable (_ driver: DriverObject) -> Void
/// `DRIVER_INITIALIZE`: the driver's entry point, `DriverEntry`.
public typealias DriverEntry = @Sendable (_ driver: DriverObject) -> NTStatus

/// `DRIVER_OBJECT`.
///
/// Filled in by the driver's `DriverEntry` before any device exists, and not
/// changed afterwards; that is why the dispatch table can be read without a lock.
public final class DriverObject: @unchecked Sendable {
    /// `DriverName`, such as `\Driver\RamDisk`.
    public let name: String
    /// Whether Driver Verifier's opt-in rules check this driver (`Verifier.scope`).
    public let verified = Atomic<Bool>(false)
    /// The I/O manager the driver was loaded into.
    // unowned(unsafe): the I/O manager outlives what it owns; read on every IRP.
    public unowned(unsafe) let ioManager: IOManager
    /// The same, for calls that must not retain it (IoCallDriver from `callLower`).
    @usableFromInline let manager: Unmanaged<IOManager>
    /// `MajorFunction[]`. Unset entries fail the IRP with STATUS_INVALID_DEVICE_REQUEST,
    /// as `IopInvalidDeviceRequest` does.
    public var majorFunction: DispatchTable {
        get { DispatchTable(routines: Array(UnsafeBufferPointer(start: slots, count: MajorFunction.tableSize))) }
        set {
            for (i, slot) in newValue.routines.enumerated() { slots[i] = slot }
        }
    }
    /// The table the I/O manager calls through: a plain buffer, read without
    /// reference counting on every IRP.
    @usableFromInline let slots: UnsafeMutablePointer<DispatchSlot> = {
        let p = UnsafeMutablePointer<DispatchSlot>.allocate(capacity: MajorFunction.tableSize)
        p.initialize(repeating: DispatchSlot(), count: MajorFunction.tableSize)
        return p
    }()
    /// `DriverExtension->AddDevice`.
    public var addDevice: AddDeviceRoutine?
    /// `DriverUnload`.
    public var unload: UnloadRoutine?
    /// wdmfs extension: how ready a device is to read and write without pending.
    /// Drivers that never pend leave it nil (always ready).
    public var readiness: ReadinessRoutine?
    /// wdmfs extension: the names of the IOCTL codes the driver serves
    /// (`IOCTL_DISK_GET_LENGTH_INFO`), for traces. Set in DriverEntry.
    public var ioctlNames: [UInt32: String] = [:]
    /// The driver's log level (`Logger.Level.ordered` index; see `logger`).
    let logLevelWord = Atomic<UInt8>(2)
    /// Driver-wide state (the WDM driver extension's client area).
    public var driverExtension: AnyObject?

    let devices = HandoffMutex(DeviceList())

    init(name: String, ioManager: IOManager) {
        self.name = name
        self.ioManager = ioManager
        self.manager = Unmanaged.passUnretained(ioManager)
    }

    deinit {
        slots.deinitialize(count: MajorFunction.tableSize)
        slots.deallocate()
    }

    /// At unload: forgets the devices and the driver's own state, so nothing the
    /// driver built stays referenced.
    func release() {
        devices.withLock { $0 = DeviceList() }
        driverExtension = nil
    }

    /// `DeviceObject` list: every device this driver created and has not deleted.
    public var deviceObjects: [DeviceObject] { devices.withLock { $0.all } }
}

/// A driver's dispatch table, indexed by major function (`MajorFunction[]`).
public struct DispatchTable: Sendable {
    var routines: [DispatchSlot] = Array(repeating: DispatchSlot(), count: MajorFunction.tableSize)

    public subscript(_ major: MajorFunction) -> DispatchRoutine? {
        get { routines[Int(major.rawValue)].routine }
        set { routines[Int(major.rawValue)].routine = newValue }
    }

    /// Sets one routine for several major functions (a filter's pass-through).
    public mutating func set(_ majors: [MajorFunction], to routine: @escaping DispatchRoutine) {
        for m in majors { self[m] = routine }
    }

    /// Sets `routine` for every major function, as a filter's DriverEntry loop does.
    public mutating func setAll(_ routine: @escaping DispatchRoutine) {
        for i in routines.indices { routines[i].routine = routine }
    }
}

/// One entry of a dispatch table. A struct with a field of the routine's own
/// type: stored in generic storage (an array, a pointer) a bare function value
/// would take the most general abstraction, and every call would allocate a
/// reabstraction thunk.
@usableFromInline struct DispatchSlot: @unchecked Sendable {
    @usableFromInline var routine: DispatchRoutine?
    init() {}
}

/// A driver's devices in creation order, removable in O(1) (a tree of thousands
/// of devices is torn down in linear time).
struct DeviceList {
    private var byID: [ObjectIdentifier: (order: Int, device: DeviceObject)] = [:]
    private var next = 0
    mutating func append(_ d: DeviceObject) {
        byID[ObjectIdentifier(d)] = (next, d)
        next += 1
    }
    mutating func remove(_ d: DeviceObject) { byID[ObjectIdentifier(d)] = nil }
    var all: [DeviceObject] { byID.values.sorted { $0.order < $1.order }.map(\.device) }
    var isEmpty: Bool { byID.isEmpty }
}
