// DeviceNode: the PnP manager's record of one device (Windows' DEVICE_NODE):
// the identity its bus reported, the drivers of its stack, where it is in its
// life and its children. Only the PnP manager's executor changes a node; every
// other thread reads the tree through `TreeSnapshot`.

import Synchronization

/// Where a device node is in its life.
public enum DeviceNodeState: String, Sendable {
    /// Enumerated; AddDevice has not run (or failed: see the problem code).
    case initialized
    /// AddDevice ran; START has not succeeded yet.
    case driversAdded
    case started
    /// STOP_DEVICE (a rebalance): START comes next.
    case stopped
    /// The bus stopped reporting it: SURPRISE_REMOVAL was sent, REMOVE_DEVICE
    /// follows when the last handle of its subtree closes.
    case surpriseRemoved
    /// REMOVE_DEVICE was sent; the stack is gone (a failed start keeps its problem code).
    case removed
    /// Removed by `disable`; the node stays with CM_PROB_DISABLED.
    case disabled
}

/// `CM_PROB_*`: why a device node is not started.
public enum ProblemCode: UInt32, Sendable {
    case failedStart = 10, disabled = 22, deviceNotThere = 24, failedAdd = 31, failedDriverEntry = 37
    case failedPostStart = 43, halted = 44, heldForEject = 47
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
    /// (Changed only on the PnP manager's executor: a filter attached live adds its settings.)
    public internal(set) var parameters: [String: String]

    // Written only on the PnP manager's executor.

    /// Where the node is in its life.
    public internal(set) var state = DeviceNodeState.initialized
    /// `CM_PROB_*`, when the node is not working.
    public internal(set) var problem: ProblemCode? {
        didSet { problemStatus = nil }
    }
    /// The status that goes with the problem, if one does (a driver host that ended:
    /// STATUS_DRIVER_PROCESS_TERMINATED).
    public internal(set) var problemStatus: NTStatus?
    /// The bus node that reported this one (nil for root-enumerated nodes).
    public internal(set) weak var parent: DeviceNode?
    /// The nodes this one's bus driver reported (removed and surprise-removed ones
    /// included until their PDO is deleted).
    public internal(set) var children: [DeviceNode] = []
    /// True once the bus stopped reporting the device.
    public internal(set) var missing = false
    /// True from AddDevice until REMOVE_DEVICE: devices are attached above the PDO.
    public internal(set) var stackBuilt = false
    /// The drivers of the stack (lower filters, function driver, upper filters), to build it again.
    public internal(set) var drivers: (lower: [DriverObject], function: DriverObject, upper: [DriverObject])?
    /// Filter devices detached from the running stack (`IOManager.detachFilter`):
    /// out of the stack but not deleted until the stack is removed, so a request
    /// that was already on its way to one finishes through it.
    var detachedFilters: [DeviceObject] = []
    /// What QUERY_CAPABILITIES answered after START, as it came back up the stack
    /// (DeviceState[] maps system to device power states).
    public internal(set) var capabilities = DeviceCapabilities()
    /// What QUERY_DEVICE_TEXT answered (DeviceTextDescription), if anything.
    public internal(set) var description: String?
    /// What QUERY_BUS_INFORMATION answered, if anything.
    public internal(set) var busInformation: BusInformation?
    /// The last PNP_DEVICE_STATE the stack reported (DONT_DISPLAY_IN_UI 0x2, ...).
    public internal(set) var deviceState: UInt32 = 0
    /// The node's PDO while it exists (the bus driver owns it).
    public internal(set) weak var pdo: DeviceObject?

    // Read and written from any thread.

    /// Set by the executor when the node is surprise-removed: its last handle's
    /// close queues the end of the removal.
    let awaitingClose = Atomic<Bool>(false)
    /// Handles open on the stack (counted from before IRP_MJ_CREATE until after IRP_MJ_CLOSE).
    public let handles = Atomic<Int>(0)
    /// The device power state of the stack's power policy owner.
    let powerWord = Atomic<UInt32>(DevicePowerState.d0.rawValue)
    /// The device power state of the stack's power policy owner (D0 until it says otherwise).
    public var powerState: DevicePowerState { DevicePowerState(rawValue: powerWord.load(ordering: .acquiring)) ?? .d0 }
    /// Lines drivers log about this node (a filter's log of the PnP and power IRPs it saw).
    let logLines = HandoffMutex<[String]>([])
    /// True while IRP_MN_SURPRISE_REMOVAL is in the node's stack (0x241, 0x242).
    let inSurpriseRemoval = Atomic<Bool>(false)
    /// The last IRPs of the node's stack, while Verifier's `irp-log` stress option is on.
    let irpLogLines = HandoffMutex<[String]>([])
    /// The last IRPs of the node's stack (Verifier's IRP logging), oldest first.
    public var irpLog: [String] { irpLogLines.withLock { $0 } }
    /// Appends a line to the node's log (the last 1,000 are kept).
    public func appendLog(_ line: String) {
        logLines.withLock {
            if $0.count >= 1000 { $0.removeFirst() }
            $0.append(line)
        }
    }
    /// The node's log.
    public var log: [String] { logLines.withLock { $0 } }

    init(instanceName: String, hardwareIDs: [String], compatibleIDs: [String] = [], parameters: [String: String], pdo: DeviceObject) {
        self.instanceName = instanceName
        self.hardwareIDs = hardwareIDs
        self.compatibleIDs = compatibleIDs
        self.parameters = parameters
        self.pdo = pdo
    }

    /// A new node for the same PDO and identity (a device that comes back after it
    /// was removed is a new device node, as on Windows).
    func reborn() -> DeviceNode? {
        guard let pdo else { return nil }
        let n = DeviceNode(instanceName: instanceName, hardwareIDs: hardwareIDs, compatibleIDs: compatibleIDs, parameters: parameters, pdo: pdo)
        n.parent = parent
        n.drivers = drivers
        n.capabilities = capabilities
        return n
    }

    /// Whether `.devices` shows the node: not once it is surprise-removed (the device
    /// is gone) or removed without a problem (it no longer exists for users).
    var isVisible: Bool {
        switch state {
        case .surpriseRemoved: false
        case .removed: problem != nil
        default: true
        }
    }

    /// The node and every node below it, children before their parent.
    var subtree: [DeviceNode] {
        var out: [DeviceNode] = []
        func walk(_ n: DeviceNode) {
            for c in n.children { walk(c) }
            out.append(n)
        }
        walk(self)
        return out
    }
}
