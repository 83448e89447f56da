import Synchronization

// DeviceObject: one device in a stack (PDO, filter or FDO), with its flags,
// stack size, the device attached above it and the one it is attached to.

/// `DEVICE_OBJECT->Flags`.
public struct DeviceFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `DO_BUFFERED_IO`: reads and writes through `IRP.systemBuffer`.
    public static let bufferedIO = DeviceFlags(rawValue: 0x0000_0004)
    /// `DO_DIRECT_IO`: reads and writes through `IRP.mdlAddress`.
    public static let directIO = DeviceFlags(rawValue: 0x0000_0010)
    /// `DO_DEVICE_INITIALIZING`: set by IoCreateDevice; AddDevice must clear it.
    public static let deviceInitializing = DeviceFlags(rawValue: 0x0000_0080)
    /// `DO_POWER_PAGABLE`
    public static let powerPagable = DeviceFlags(rawValue: 0x0000_2000)
}

/// `DEVICE_OBJECT`.
///
/// Stack links change only while the tree is built or torn down (AddDevice,
/// REMOVE_DEVICE); the I/O manager serializes those changes.
public final class DeviceObject: @unchecked Sendable {
    /// `DriverObject`: the driver that owns this device.
    // unowned(unsafe): the I/O manager keeps every driver alive while its devices exist,
    // and this is read on every IRP, where a checked unowned reference costs a retain.
    public unowned(unsafe) let driverObject: DriverObject
    /// `DeviceType` (FILE_DEVICE_*).
    public var deviceType: UInt32
    /// `Characteristics`.
    public var characteristics: UInt32
    /// `Flags`.
    @exclusivity(unchecked) public var flags: DeviceFlags
    /// `StackSize`: the stack locations an IRP needs to reach the bottom from here.
    @exclusivity(unchecked) public internal(set) var stackSize: Int = 1
    /// `AttachedDevice`: the device attached above this one, if any.
    /// Devices are owned by their drivers (the driver object's device list, until
    /// IoDeleteDevice), so the links of a stack are not counted: walking and
    /// calling down a stack costs no reference counting. IoDetachDevice and
    /// IoDeleteDevice clear them. (A weak reference would put every retain of a
    /// device on the slow path.)
    public internal(set) var attachedDevice: DeviceObject? {
        get { attachedLink?.takeUnretainedValue() }
        set { attachedLink = newValue.map(Unmanaged.passUnretained) }
    }
    /// The device this one is attached to (what IoAttachDeviceToDeviceStack returned).
    public internal(set) var lowerDevice: DeviceObject? {
        get { lowerLink?.takeUnretainedValue() }
        set { lowerLink = newValue.map(Unmanaged.passUnretained) }
    }
    @exclusivity(unchecked) @usableFromInline var attachedLink: Unmanaged<DeviceObject>?
    @exclusivity(unchecked) @usableFromInline var lowerLink: Unmanaged<DeviceObject>?
    /// The dispatch table of this device's driver (read on every IRP, without
    /// touching the driver object's reference count).
    @usableFromInline let dispatch: UnsafeMutablePointer<DispatchSlot>
    /// `DeviceExtension`: the driver's per-device state.
    @exclusivity(unchecked) public var deviceExtension: AnyObject?
    /// The `\Device\Name`, if created with one.
    public let name: String?
    /// The device node of the stack's PDO (set on PDOs by the bus, shared by the stack).
    public internal(set) var deviceNode: DeviceNode?
    /// wdmfs extension: the size the device publishes for its node (what `ls -l`
    /// shows without opening it), or nil. On Windows a size is asked of an open
    /// handle; a host that has none reads this instead of sending an IRP.
    public var publishedSize: Int64? {
        get { sizeWord.load(ordering: .relaxed) < 0 ? nil : sizeWord.load(ordering: .relaxed) }
        set { sizeWord.store(newValue ?? -1, ordering: .relaxed) }
    }
    private let sizeWord = Atomic<Int64>(-1)
    /// Set by a driver whose I/O should fail (STATUS_DEVICE_NOT_READY, EAGAIN)
    /// while its device is not in D0, instead of waiting for D0.
    public var failsIOWhenNotInD0 = false
    /// `DEVICE_POWER_STATE` (see `powerState`).
    let powerStateWord = Atomic<UInt32>(DevicePowerState.d0.rawValue)
    /// On the top of a stack: its power policy owner is not in D0, so I/O waits.
    let asleep = Atomic<Bool>(false)
    /// On the top of a stack: the requests waiting for D0.
    let powerQueue = CancelSafeQueue()
    /// The device interfaces registered for this PDO.
    let interfaceNames = Mutex<[String]>([])
    /// Set on every device of a stack whose device is gone (surprise removal).
    public let gone = Atomic<Bool>(false)
    /// Open handles on the stack this device tops (counted at CREATE and CLOSE).
    public let openHandles = Atomic<Int>(0)
    /// `IO_REMOVE_LOCK`: the device's I/O in flight, which REMOVE_DEVICE waits for.
    /// (In Windows it lives in the device extension; here every device has one.)
    public let removeLock = RemoveLock()
    /// True once IoDeleteDevice ran.
    public internal(set) var deleted = false

    init(driver: DriverObject, deviceType: UInt32, characteristics: UInt32, flags: DeviceFlags, name: String?) {
        self.driverObject = driver
        self.dispatch = driver.slots
        self.deviceType = deviceType
        self.characteristics = characteristics
        self.flags = flags
        self.name = name
    }

    /// The device extension as the driver's own type.
    @inlinable public func deviceExtension<T: AnyObject>(as type: T.Type) -> T {
        unsafeDowncast(deviceExtension!, to: T.self)
    }

    /// `IoGetAttachedDevice`: the top of the stack this device belongs to.
    public var topOfStack: DeviceObject {
        // Walked without reference counting: the links are not counted either.
        var d = Unmanaged.passUnretained(self)
        while let up = d._withUnsafeGuaranteedRef({ $0.attachedLink }) { d = up }
        return d.takeUnretainedValue()
    }

    /// `IoCallDriver(lowerDevice, irp)`.
    @inlinable public func callLower(_ irp: IRP) -> NTStatus {
        guard let lower = lowerLink else {
            driverObject.ioManager.verifier.report(.callDownWithNoLowerDevice, irp: irp, device: self)
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        return driverObject.manager._withUnsafeGuaranteedRef { io in
            lower._withUnsafeGuaranteedRef { io.callDriver($0, irp) }
        }
    }
}

/// A PDO's device node: the identity the bus reported and the settings the
/// drivers of the stack read (the registry's "Device Parameters").
public final class DeviceNode: @unchecked Sendable {
    /// `DeviceInstanceId`-like name, unique in the tree (`ramdisk0`).
    public let instanceName: String
    /// `IRP_MN_QUERY_ID` BusQueryHardwareIDs.
    public let hardwareIDs: [String]
    /// `IRP_MN_QUERY_ID` BusQueryCompatibleIDs.
    public let compatibleIDs: [String]
    /// Per-device settings, as `HKR\Device Parameters`.
    public let parameters: [String: String]
    /// Where the node is in its life.
    public internal(set) var state = DeviceNodeState.initialized
    /// `CM_PROB_*`, when the node is not working.
    public internal(set) var problem: ProblemCode?
    /// The bus node that reported this one (nil for root-enumerated nodes).
    public internal(set) weak var parent: DeviceNode?
    /// The nodes this one's bus driver reported.
    public internal(set) var children: [DeviceNode] = []
    /// True once the bus stopped reporting the device.
    public internal(set) var missing = false
    /// The drivers of the stack (lower filters, function driver, upper filters), to build it again.
    public internal(set) var drivers: (lower: [DriverObject], function: DriverObject, upper: [DriverObject])?
    /// Lines drivers log about this node (a filter's log of the PnP and power IRPs it saw).
    let logLines = Mutex<[String]>([])
    /// Appends a line to the node's log (the last 1,000 are kept).
    public func appendLog(_ line: String) {
        logLines.withLock {
            if $0.count >= 1000 { $0.removeFirst() }
            $0.append(line)
        }
    }
    /// The node's log.
    public var log: [String] { logLines.withLock { $0 } }
    /// What QUERY_CAPABILITIES answered (DeviceState[] maps system to device power states).
    public internal(set) var capabilities = DeviceCapabilities()
    /// The node's PDO while it exists (the bus driver owns it).
    public private(set) weak var pdo: DeviceObject?

    init(instanceName: String, hardwareIDs: [String], compatibleIDs: [String] = [], parameters: [String: String], pdo: DeviceObject) {
        self.instanceName = instanceName
        self.hardwareIDs = hardwareIDs
        self.compatibleIDs = compatibleIDs
        self.parameters = parameters
        self.pdo = pdo
    }
}
