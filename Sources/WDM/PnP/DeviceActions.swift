// The device actions hosts and verbs ask for, each run on the PnP manager's
// executor (and waited for): adding a root device, remove, disable, enable,
// restart (devcon's: remove, then AddDevice and START again), rebalance
// (QUERY_STOP, STOP, START), eject, rescan. Bringing a stack up lives here too:
// AddDevice in Windows' order, START, and the queries that follow it.

import Dispatch
import Synchronization

extension IOManager {
    /// Creates a root-enumerated device node and brings it up as the PnP manager
    /// does: IRP_MN_QUERY_ID (device, instance, hardware and compatible IDs) and
    /// IRP_MN_QUERY_CAPABILITIES to the PDO; AddDevice of the lower filters, the
    /// function driver and the upper filters; IRP_MN_START_DEVICE down the whole
    /// stack; then QUERY_CAPABILITIES, QUERY_PNP_DEVICE_STATE and
    /// QUERY_DEVICE_RELATIONS (BusRelations). A START that fails leaves the node
    /// with CM_PROB_FAILED_START and its stack removed. Returns the PDO.
    @discardableResult
    public func addRootDevice(
        instanceName: String, hardwareIDs: [String] = [], compatibleIDs: [String] = [], parameters: [String: String] = [:],
        functionDriver: DriverObject, lowerFilters: [DriverObject] = [], upperFilters: [DriverObject] = []
    ) throws(NTStatus) -> DeviceObject {
        let result: Result<DeviceObject, NTStatus> = pnp.perform {
            let n = deviceCount.add(1, ordering: .relaxed).newValue
            let pdo = createDevice(
                driver: rootBus, deviceType: DeviceType.unknown,
                name: "\\Device\\" + String(n, radix: 16, uppercase: true).leftPadded(to: 8))
            let node = DeviceNode(instanceName: instanceName, hardwareIDs: hardwareIDs, compatibleIDs: compatibleIDs, parameters: parameters, pdo: pdo)
            pdo.deviceNode = node
            pdo.flags.remove(.deviceInitializing)
            pnp.roots.append(node)
            pnp.dirty = true
            _ = pnp.identify(pdo)
            node.capabilities = pnp.lastCapabilities
            node.drivers = (lowerFilters, functionDriver, upperFilters)
            let status = pnp.bringUp(node)
            return node.problem == .failedAdd ? .failure(status) : .success(pdo)
        }
        return try result.get()
    }

    /// Runs `body` as one action of the PnP manager (a tree file's devices are
    /// added in one action, so the tree is published once).
    public func changeTree<T>(_ body: () -> T) -> T { pnp.perform(body) }

    /// The root-enumerated device nodes there are (removed ones excluded).
    public var deviceNodes: [DeviceNode] { pnp.perform { pnp.roots.filter { $0.state != .removed || $0.problem != nil } } }

    /// Every device node, parents before children, depth first.
    public var allDeviceNodes: [DeviceNode] { pnp.perform { pnp.allNodes } }

    /// Waits until the PnP manager has done what was asked of it so far.
    public func waitForPnP() { pnp.waitUntilIdle() }

    /// devcon remove: the orderly removal of the node and its subtree (vetoable:
    /// by a driver, or by a handle still open). The node is gone; its PDO stays
    /// with its bus, so a rescan of the bus (of the root, for a root-enumerated
    /// device) brings it back as a new node.
    @discardableResult
    public func remove(_ node: DeviceNode) -> PnPResult { pnp.perform { pnp.remove(node, .remove) } }

    /// devcon disable: the orderly removal, and the node stays with CM_PROB_DISABLED.
    @discardableResult
    public func disable(_ node: DeviceNode) -> PnPResult { pnp.perform { pnp.remove(node, .disable) } }

    /// devcon restart: the orderly removal, then AddDevice and START again.
    @discardableResult
    public func restart(_ node: DeviceNode) -> PnPResult { pnp.perform { pnp.remove(node, .restart) } }

    /// IoRequestDeviceEject from a verb: the orderly removal, then IRP_MN_EJECT to the PDO.
    @discardableResult
    public func eject(_ node: DeviceNode) -> PnPResult { pnp.perform { pnp.remove(node, .eject) } }

    /// devcon enable: a disabled node's stack is built and started again.
    @discardableResult
    public func enable(_ node: DeviceNode) -> PnPResult {
        pnp.perform {
            guard pnp.isInTree(node) else { return PnPResult(status: .noSuchDevice, detail: "no such device node") }
            guard node.state == .disabled else {
                return PnPResult(status: .invalidDeviceRequest, detail: node.state == .started ? "already enabled" : "not disabled (\(node.state.rawValue))")
            }
            let status = pnp.bringUp(node)
            return node.state == .started ? .success : PnPResult(status: status.isSuccess ? .unsuccessful : status)
        }
    }

    /// A rebalance: QUERY_STOP (a driver may veto: CANCEL_STOP), STOP, then START
    /// again; a START that fails after the stop ends in SURPRISE_REMOVAL and
    /// REMOVE_DEVICE, with CM_PROB_FAILED_START.
    @discardableResult
    public func rebalance(_ node: DeviceNode) -> PnPResult { pnp.perform { pnp.rebalance(node) } }

    /// devcon rescan: asks a bus for its children again (the root: every root
    /// device removed comes back, then every bus is asked).
    public func rescan(_ node: DeviceNode?) -> PnPResult {
        pnp.perform {
            if let node {
                guard pnp.isInTree(node) else { return PnPResult(status: .noSuchDevice, detail: "no such device node") }
                pnp.enumerate(node)
            } else {
                pnp.rescanRoot()
            }
            return .success
        }
    }

    /// `IoRequestDeviceEject(pdo)`: queued; the PnP manager queries the removal of
    /// the device's subtree (a veto, or a handle still open, ends it), removes it
    /// and sends IRP_MN_EJECT to the PDO.
    public func requestDeviceEject(_ pdo: DeviceObject) {
        pnp.enqueue { [self] in
            guard let node = pdo.deviceNode, pnp.isInTree(node) else { return }
            let r = pnp.remove(node, .eject)
            if !r.isSuccess { log?("\(node.instanceName): eject \(r)") }
        }
    }

    /// IoDetachDevice(lower) and IoDeleteDevice(device): what a driver does at
    /// the end of IRP_MN_REMOVE_DEVICE.
    public func detachAndDelete(_ device: DeviceObject) {
        if let lower = device.lowerDevice { detachDevice(lower) }
        deleteDevice(device)
    }
}

extension PnPManager {
    /// Every node in the tree (hidden ones included), parents before children.
    var allNodes: [DeviceNode] {
        var out: [DeviceNode] = []
        func walk(_ n: DeviceNode) {
            out.append(n)
            n.children.forEach(walk)
        }
        roots.forEach(walk)
        return out
    }

    /// Whether `node` is still the tree's (visible) node for its device.
    func isInTree(_ node: DeviceNode) -> Bool {
        guard node.isVisible else { return false }
        if let parent = node.parent { return isInTree(parent) && parent.children.contains { $0 === node } }
        return roots.contains { $0 === node }
    }

    /// AddDevice of the lower filters, the function driver and the upper filters,
    /// then START_DEVICE and the queries that follow it. A failed AddDevice leaves
    /// CM_PROB_FAILED_ADD, a failed START CM_PROB_FAILED_START with the stack
    /// removed. A stack started while the system sleeps follows the system state.
    @discardableResult
    func bringUp(_ node: DeviceNode) -> NTStatus {
        dirty = true
        guard let pdo = node.pdo, let (lowerFilters, functionDriver, upperFilters) = node.drivers else { return .noSuchDevice }
        let filters = Set((lowerFilters + upperFilters).map(ObjectIdentifier.init))
        pdo.openState.store(DeviceObject.OpenState.notStarted.rawValue, ordering: .sequentiallyConsistent)
        node.stackBuilt = true
        for driver in lowerFilters + [functionDriver] + upperFilters {
            let below = pdo.topOfStack
            let status = driver.addDevice.map { $0(driver, pdo) } ?? .invalidDeviceRequest
            guard status.isSuccess else {
                io.log?("\(node.instanceName): AddDevice of \(driver.name) failed with \(status)")
                if pdo.attachedDevice != nil { _ = io.sendPnP(.removeDevice, to: pdo.topOfStack) }
                node.stackBuilt = false
                node.state = .initialized
                node.problem = .failedAdd
                return status
            }
            let top = pdo.topOfStack
            if top.flags.contains(.deviceInitializing) {
                if io.verifier.verifies(top.driverObject) { io.verifier.report(.deviceInitializingLeftSet, device: top) }
                top.flags.remove(.deviceInitializing)
            }
            if top.flags.isSuperset(of: [.bufferedIO, .directIO]), io.verifier.verifies(top.driverObject) {
                io.verifier.report(.bufferedAndDirect, device: top, detail: "Flags DO_BUFFERED_IO | DO_DIRECT_IO")
            }
            if top !== below, driver !== functionDriver || filters.contains(ObjectIdentifier(driver)) {
                io.checkFilterCopied(top, from: below)
            }
        }
        node.state = .driversAdded
        node.problem = nil
        let (started, _) = io.sendPnP(.startDevice, to: pdo.topOfStack)
        guard started.isSuccess else {
            io.log?("\(node.instanceName): IRP_MN_START_DEVICE failed with \(started)")
            // Windows removes a device whose START failed; the node stays, with its problem.
            commitRemoval([node])
            node.problem = .failedStart
            node.problemStatus = started  // DEVPKEY_Device_ProblemStatus
            return started
        }
        node.state = .started
        forEachDevice(of: pdo) { $0.openState.store(DeviceObject.OpenState.started.rawValue, ordering: .sequentiallyConsistent) }
        // The capabilities as they came back up the stack: the policy owner's S -> D map.
        node.capabilities = io.sendPnP(.queryCapabilities, to: pdo.topOfStack).1.capabilities
        let (stateStatus, state) = io.sendPnP(.queryPnpDeviceState, to: pdo.topOfStack)
        if stateStatus.isSuccess { node.deviceState = state.deviceState }
        enumerate(node)
        let s = io.systemPowerState
        if s != .working {
            // Started while the system sleeps: the stack follows the system state.
            _ = io.sendPower(.setPower, .system(s), to: pdo.topOfStack)
        }
        return .success
    }

    /// Every device of the stack `pdo` is at the bottom of, bottom up.
    func forEachDevice(of pdo: DeviceObject, _ body: (DeviceObject) -> Void) {
        var d: DeviceObject? = pdo
        while let device = d {
            body(device)
            d = device.attachedDevice
        }
    }

    func rebalance(_ node: DeviceNode) -> PnPResult {
        guard isInTree(node), let pdo = node.pdo else { return PnPResult(status: .noSuchDevice, detail: "no such device node") }
        guard node.state == .started else { return PnPResult(status: .invalidDeviceRequest, detail: "not started (\(node.state.rawValue))") }
        let (q, request) = io.sendPnP(.queryStopDevice, to: pdo.topOfStack)
        if !q.isSuccess {
            _ = io.sendPnP(.cancelStopDevice, to: pdo.topOfStack)
            return PnPResult(status: q, vetoType: .device, vetoedBy: request.completedBy, vetoingNode: node.instanceName)
        }
        dirty = true
        _ = io.sendPnP(.stopDevice, to: pdo.topOfStack)
        node.state = .stopped
        let (started, _) = io.sendPnP(.startDevice, to: pdo.topOfStack)
        guard started.isSuccess else {
            node.problem = .failedStart
            markRemoving(node)
            _ = io.sendPnP(.surpriseRemoval, to: pdo.topOfStack)
            commitRemoval([node])
            node.problem = .failedStart
            node.problemStatus = started
            return PnPResult(status: started)
        }
        node.state = .started
        return .success
    }

    /// A rescan of the root: root devices that were removed come back (as new
    /// nodes on their PDOs), then every started bus is asked for its children.
    func rescanRoot() {
        for (i, root) in roots.enumerated() where root.state == .removed && root.problem == nil {
            guard let fresh = root.reborn(), let pdo = fresh.pdo else { continue }
            pdo.deviceNode = fresh
            roots[i] = fresh
            bringUp(fresh)
        }
        for node in allNodes where node.state == .started { enumerate(node) }
    }
}
