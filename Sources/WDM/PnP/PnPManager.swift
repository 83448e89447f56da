// PnPManager: the one owner of the device tree. Every change to the tree
// (adding a root device, enumerating a bus, removal of every kind, enable,
// restart, rebalance, eject, rescan, system power, unmount) is an action run on
// one serial executor, as Windows queues every device action; after each
// action the executor publishes an immutable snapshot of the tree, which is
// what every other thread reads (the bridge's `.devices`, `.interfaces` and
// device files). See ARCHITECTURE.md.

import Dispatch
import Synchronization

/// `PNP_VETO_TYPE`: why a removal was refused.
public enum PnPVetoType: UInt32, Sendable, CustomStringConvertible {
    case unknown = 0, legacyDevice = 1, pendingClose = 2, windowsApp = 3, windowsService = 4, outstandingOpen = 5
    case device = 6, driver = 7, illegalDeviceRequest = 8, insufficientPower = 9, nonDisableable = 10
    case legacyDriver = 11, insufficientRights = 12, alreadyRemoved = 13

    /// `PNP_VetoOutstandingOpen`
    public var description: String {
        switch self {
        case .unknown: return "PNP_VetoTypeUnknown"
        case .legacyDevice: return "PNP_VetoLegacyDevice"
        case .pendingClose: return "PNP_VetoPendingClose"
        case .windowsApp: return "PNP_VetoWindowsApp"
        case .windowsService: return "PNP_VetoWindowsService"
        case .outstandingOpen: return "PNP_VetoOutstandingOpen"
        case .device: return "PNP_VetoDevice"
        case .driver: return "PNP_VetoDriver"
        case .illegalDeviceRequest: return "PNP_VetoIllegalDeviceRequest"
        case .insufficientPower: return "PNP_VetoInsufficientPower"
        case .nonDisableable: return "PNP_VetoNonDisableable"
        case .legacyDriver: return "PNP_VetoLegacyDriver"
        case .insufficientRights: return "PNP_VetoInsufficientRights"
        case .alreadyRemoved: return "PNP_VetoAlreadyRemoved"
        }
    }
}

/// What a device action came to: a status, and for a refused removal the veto
/// type and who vetoed it.
public struct PnPResult: Sendable, CustomStringConvertible {
    public let status: NTStatus
    public let vetoType: PnPVetoType?
    /// The device whose driver said no (PNP_VetoDevice), or the device open (PNP_VetoOutstandingOpen).
    public let vetoedBy: DeviceObject?
    /// The instance name of the node that vetoed.
    public let vetoingNode: String?
    /// Extra words for a person (how many handles are open).
    public let detail: String?

    public init(status: NTStatus, vetoType: PnPVetoType? = nil, vetoedBy: DeviceObject? = nil, vetoingNode: String? = nil, detail: String? = nil) {
        self.status = status
        self.vetoType = vetoType
        self.vetoedBy = vetoedBy
        self.vetoingNode = vetoingNode
        self.detail = detail
    }

    public static let success = PnPResult(status: .success)
    public var isSuccess: Bool { status.isSuccess }

    /// `vetoed by toaster1 (PNP_VetoOutstandingOpen: 1 handle open): STATUS_DEVICE_BUSY`.
    public var description: String {
        guard let vetoType else { return detail.map { "\($0): \(status)" } ?? "\(status)" }
        var who = vetoingNode ?? "a device"
        if vetoType == .device, let d = vetoedBy { who += " (\(d.driverObject.name))" }
        return "vetoed by \(who), \(vetoType)\(detail.map { ": " + $0 } ?? ""): \(status)"
    }
}

/// The PnP manager.
public final class PnPManager: @unchecked Sendable {
    unowned(unsafe) let io: IOManager
    private let queue = DispatchQueue(label: "wdmfs.pnp")
    private let executorKey = DispatchSpecificKey<Bool>()

    // Executor state.
    /// Root-enumerated nodes in the order they were added (removed ones stay, hidden,
    /// so a rescan of the root brings them back).
    var roots: [DeviceNode] = []
    /// Surprise-removed subtrees waiting for their last handle to close.
    var awaitingClose: [DeviceNode] = []
    /// Something changed since the last snapshot.
    var dirty = true
    /// The capabilities the last `identify` was answered.
    var lastCapabilities = DeviceCapabilities()

    private let current = HandoffMutex(TreeSnapshot.empty)
    /// Told after each publish what changed (set before the tree changes at run time).
    public nonisolated(unsafe) var observer: (@Sendable (TreeChange) -> Void)?

    init(io: IOManager) {
        self.io = io
        queue.setSpecific(key: executorKey, value: true)
    }

    /// True on the executor.
    public var isOnExecutor: Bool { DispatchQueue.getSpecific(key: executorKey) == true }

    /// Runs `action` on the executor and waits for it; the snapshot is published
    /// before this returns. On the executor (an action within an action) it runs
    /// in place. Never called from a driver's dispatch or completion routine: the
    /// executor may be waiting for that very IRP (drivers use `enqueue`).
    public func perform<T>(_ action: () -> T) -> T {
        if isOnExecutor { return action() }
        return queue.sync {
            let result = action()
            publish()
            return result
        }
    }

    /// Queues `action` on the executor (IoInvalidateDeviceRelations, IoRequestDeviceEject, a closed handle).
    public func enqueue(_ action: @escaping @Sendable () -> Void) {
        let keep = io  // the I/O manager lives until the action has run
        queued.add(1, ordering: .relaxed)
        queue.async { [self] in
            action()
            publish()
            queued.subtract(1, ordering: .releasing)
            _ = keep
        }
    }

    /// Actions queued with `enqueue` that have not finished.
    private let queued = Atomic<Int>(0)

    /// Waits until the executor has nothing left to do, including the actions the
    /// actions queue (an enumeration that starts children): what `udevadm settle`
    /// is to udev. Woken by the executor; it loops only while work keeps arriving.
    public func settle() {
        guard !isOnExecutor else { return }
        repeat { queue.sync {} } while queued.load(ordering: .acquiring) > 0
    }

    /// Waits until every action queued so far has run.
    public func waitUntilIdle() {
        guard !isOnExecutor else { return }
        queue.sync {}
    }

    /// The tree as the executor last published it.
    public var snapshot: TreeSnapshot { current.withLock { $0 } }

    /// The namespace (symbolic links) changed: on the executor the snapshot is
    /// published at the end of the action; elsewhere a publish is queued.
    func namespaceChanged() {
        if isOnExecutor { dirty = true } else { enqueue {} }
    }

    /// Publishes a new snapshot if anything changed, and tells the observer what did.
    func publish() {
        guard dirty else { return }
        dirty = false
        let old = current.withLock { $0 }
        let new = TreeSnapshot(roots: roots, io: io, version: old.version + 1)
        current.withLock { $0 = new }
        io.purgeGraveyard()
        let links = old.presentLinks.symmetricDifference(new.presentLinks)
        let treeChanged = old.signature != new.signature
        if !links.isEmpty || treeChanged {
            observer?(TreeChange(links: Array(links), treeChanged: treeChanged))
        }
    }
}

/// What changed between two snapshots.
public struct TreeChange: Sendable {
    /// Device files that appeared or went away.
    public let links: [String]
    /// Nodes appeared, went away or changed status.
    public let treeChanged: Bool
}

/// One node as the executor published it.
public final class NodeView: @unchecked Sendable {
    /// The node (its live values: handles, power state, log; and the verbs' target).
    public let node: DeviceNode
    /// `toaster-bus/toaster1`.
    public let path: String
    public let name: String
    public let state: DeviceNodeState
    public let problem: ProblemCode?
    public let problemStatus: NTStatus?
    public let children: [NodeView]
    /// The stack, top first: `\Driver\X \Device\Y` (or just the driver).
    public let stack: [String]
    /// The device file of its stack, if it has one.
    public let link: String?

    init(_ node: DeviceNode, path: String, children: [NodeView], stack: [String], link: String?) {
        self.node = node
        self.path = path
        self.name = node.instanceName
        self.state = node.state
        self.problem = node.problem
        self.problemStatus = node.problemStatus
        self.children = children
        self.stack = stack
        self.link = link
    }

    /// One word for the node's state: `started`, `disabled`, `problem`, ...
    public var status: String {
        switch state {
        case .started: problem == nil ? "started" : "problem"
        case .disabled: "disabled"
        case .surpriseRemoved: "surprise-removed"
        case .stopped: "stopped"
        default: problem == nil ? state.rawValue : "problem"
        }
    }
    public var hardwareIDs: [String] { node.hardwareIDs }
    public var compatibleIDs: [String] { node.compatibleIDs }
    /// What its bus said it is (QUERY_DEVICE_TEXT), if anything.
    public var description: String? { node.description }
    /// Handles open on its stack now.
    public var handles: Int { node.handles.load(ordering: .relaxed) }
    /// The power policy owner's device power state now.
    public var powerState: DevicePowerState { node.powerState }
}

/// The device tree at one moment: the visible nodes by path and the device files
/// that are present. Immutable; built on the executor.
public final class TreeSnapshot: @unchecked Sendable {
    public let version: Int
    public let roots: [NodeView]
    public let byPath: [String: NodeView]
    /// Device files there for users (their node started), in creation order.
    public let links: [String]
    public let presentLinks: Set<String>
    /// Changes when a node appears, goes or changes status.
    let signature: [String: String]

    static let empty = TreeSnapshot()

    private init() {
        version = 0
        roots = []
        byPath = [:]
        links = []
        presentLinks = []
        signature = [:]
    }

    init(roots nodes: [DeviceNode], io: IOManager, version: Int) {
        self.version = version
        var byPath: [String: NodeView] = [:]
        var signature: [String: String] = [:]
        func view(_ n: DeviceNode, _ prefix: String) -> NodeView {
            let path = prefix.isEmpty ? n.instanceName : prefix + "/" + n.instanceName
            var seen = Set<String>()
            let kids = n.children.filter { $0.isVisible && seen.insert($0.instanceName).inserted }.map { view($0, path) }
            var stack: [String] = []
            var link: String?
            var d = n.pdo?.topOfStack
            while let device = d {
                stack.append(device.name.map { "\(device.driverObject.name) \($0)" } ?? device.driverObject.name)
                if link == nil { link = io.links(of: device).first }
                d = device.lowerDevice
            }
            let v = NodeView(n, path: path, children: kids, stack: stack, link: link)
            byPath[path] = v
            signature[path] = v.status
            return v
        }
        var seen = Set<String>()
        self.roots = nodes.filter { $0.isVisible && seen.insert($0.instanceName).inserted }.map { view($0, "") }
        self.byPath = byPath
        self.signature = signature
        let (order, table) = io.links.withLock { ($0.order, $0.byName) }
        let present = order.filter { name in
            guard let d = table[name], !d.deleted else { return false }
            guard let node = d.deviceNode else { return true }
            return node.state == .started
        }
        self.links = present
        self.presentLinks = Set(present)
    }

    /// The node at `path` (`toaster-bus/toaster1`).
    public func node(atPath path: String) -> NodeView? { byPath[path] }
    /// The first node named `name`, depth first.
    public func node(named name: String) -> NodeView? { all.first { $0.name == name } }
    /// Every visible node, parents before children, depth first.
    public var all: [NodeView] {
        var out: [NodeView] = []
        func walk(_ v: NodeView) {
            out.append(v)
            v.children.forEach(walk)
        }
        roots.forEach(walk)
        return out
    }
}
