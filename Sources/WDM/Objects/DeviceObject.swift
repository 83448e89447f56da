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
    /// `DO_EXCLUSIVE`: one handle at a time (a second open gets STATUS_ACCESS_DENIED).
    public static let exclusive = DeviceFlags(rawValue: 0x0000_0008)
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
        set { attachedWord.store(newValue.map(Unmanaged.passUnretained), ordering: .releasing) }
    }
    /// The device this one is attached to (what IoAttachDeviceToDeviceStack returned).
    public internal(set) var lowerDevice: DeviceObject? {
        get { lowerLink?.takeUnretainedValue() }
        set { lowerWord.store(newValue.map(Unmanaged.passUnretained), ordering: .releasing) }
    }
    /// The links are atomic because a filter can be attached to and detached from
    /// a running stack (`PnPManager.attachFilter`) while requests walk it: a store
    /// publishes a device whose fields were set before it, and an acquiring load
    /// costs what a plain one does on the machines wdmfs runs on.
    @usableFromInline let attachedWord = Atomic<Unmanaged<DeviceObject>?>(nil)
    @usableFromInline let lowerWord = Atomic<Unmanaged<DeviceObject>?>(nil)
    @inlinable var attachedLink: Unmanaged<DeviceObject>? { attachedWord.load(ordering: .acquiring) }
    @inlinable var lowerLink: Unmanaged<DeviceObject>? { lowerWord.load(ordering: .acquiring) }
    /// The dispatch table of this device's driver (read on every IRP, without
    /// touching the driver object's reference count).
    @usableFromInline let dispatch: UnsafeMutablePointer<DispatchSlot>
    /// `DeviceExtension`: the driver's per-device state.
    @exclusivity(unchecked) public var deviceExtension: AnyObject?
    /// What the host keeps per device (the bridge: the buffers its reads are
    /// answered from, so memory one device's driver wrote after completing never
    /// reaches another device's caller). Set once, by the host only.
    public let hostData = AtomicLazyReference<AnyObject>()
    /// Memory this stack's buffers come from, when another process works on them in
    /// place (a driver host's arena: see `StackMemory`). Set on every device of the
    /// stack by the driver that needs it, before the device serves I/O.
    @exclusivity(unchecked) public var stackMemory: (any StackMemory)?
    /// The settings file the driver published (see `publish(_:)`).
    let publishedSettings = AtomicLazyReference<SettingsBox>()
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
    /// On the top of a stack: why new requests wait there (`HoldReason` bits: the
    /// power policy owner is not in D0; the function driver holds I/O between
    /// QUERY_STOP and START). Set through the power and PnP helpers.
    let held = Atomic<UInt8>(0)
    /// On the top of a stack: the requests waiting there.
    let powerQueue = CancelSafeQueue()
    /// The device interfaces registered for this PDO.
    let interfaceNames = HandoffMutex<[String]>([])
    /// Set by the PnP helper (`PnP.functionDispatch`) at SURPRISE_REMOVAL and
    /// REMOVE_DEVICE: new requests on handles of this device fail with
    /// STATUS_NO_SUCH_DEVICE before they reach it (what the sample's function
    /// driver does in each dispatch routine, done once at the top of the stack).
    public let failsNewIO = Atomic<Bool>(false)
    /// What IopCheckDeviceAndDriver looks at when a handle is opened (the device
    /// object extension's flags): set by the PnP manager on every device of a stack.
    let openState = Atomic<UInt8>(OpenState.notStarted.rawValue)
    enum OpenState: UInt8 {
        /// DOE_START_PENDING: AddDevice ran, START has not succeeded yet.
        case notStarted = 0
        case started = 1
        /// DOE_REMOVE_PENDING / DOE_DELETE_PENDING: removal began, or the device is gone.
        case removing = 2
    }
    /// Handles opened by this device's name (counted from before CREATE until after CLOSE; DO_EXCLUSIVE allows one).
    public let openHandles = Atomic<Int>(0)
    /// `IO_REMOVE_LOCK`: the device's I/O in flight, which REMOVE_DEVICE waits for.
    /// (In Windows it lives in the device extension; here every device has one.)
    public let removeLock = RemoveLock()
    /// True once IoDeleteDevice ran.
    public var deleted: Bool { deletedFlag.load(ordering: .acquiring) }
    let deletedFlag = Atomic<Bool>(false)

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

