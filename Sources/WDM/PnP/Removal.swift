// Removal, written once. Remove, disable, restart, eject, a failed start,
// surprise removal and unmount are one machine with a different head and tail:
//
//   1. the subtree, children before their parent;
//   2. vetoable kinds: IRP_MN_QUERY_REMOVE_DEVICE to every started node; a veto
//      sends IRP_MN_CANCEL_REMOVE_DEVICE to every node that was asked (the vetoer
//      included); then handles still open veto (PNP_VetoOutstandingOpen);
//   3. no new opens or I/O, what waits for D0 is completed, REMOVE_DEVICE, children
//      first (surprise removal: SURPRISE_REMOVAL now, REMOVE_DEVICE when the last
//      handle of the subtree closes);
//   4. the kind's tail (see `RemovalKind`).
//
// All of it runs on the PnP manager's executor.

import Dispatch
import Synchronization

/// What a vetoable removal is for.
enum RemovalKind: String {
    /// devcon remove: the node goes; its PDO stays with its bus (a rescan brings it back).
    case remove
    /// devcon disable: the node stays, with CM_PROB_DISABLED.
    case disable
    /// devcon restart: AddDevice and START again.
    case restart
    /// IoRequestDeviceEject: IRP_MN_EJECT to the PDO, which then reports itself absent.
    case eject
}

extension PnPManager {
    /// The orderly removal of `node` and its subtree, then the tail of `kind`.
    func remove(_ node: DeviceNode, _ kind: RemovalKind) -> PnPResult {
        guard isInTree(node), node.pdo != nil else { return PnPResult(status: .noSuchDevice, detail: "no such device node") }
        switch (kind, node.state) {
        case (_, .started):
            break
        case (.disable, .disabled):
            return PnPResult(status: .invalidDeviceRequest, detail: "already disabled")
        case (.remove, .disabled), (.remove, .removed), (.remove, .initialized):
            // Nothing runs: the node just goes.
            dirty = true
            node.state = .removed
            node.problem = nil
            return .success
        case (.restart, .disabled):
            return PnPResult(status: .invalidDeviceRequest, detail: "disabled (enable it)")
        case (.restart, .initialized) where node.problem == .failedAdd || node.problem == .failedStart:
            // A device that failed to add or start is tried again (devcon restart does).
            dirty = true
            node.problem = nil
            let status = bringUp(node)
            if !status.isSuccess { return PnPResult(status: status, detail: "did not start again") }
            return node.state == .started ? .success : PnPResult(status: .unsuccessful, detail: "did not start again (\(node.state.rawValue))")
        default:
            return PnPResult(status: .invalidDeviceRequest, detail: "not started (\(node.state.rawValue))")
        }
        let nodes = node.subtree.filter { $0.stackBuilt }
        if let veto = queryRemove(nodes) { return veto }
        commitRemoval(nodes)
        dirty = true
        switch kind {
        case .remove:
            node.problem = nil
        case .disable:
            node.state = .disabled
            node.problem = .disabled
        case .restart:
            let status = bringUp(node)
            if !status.isSuccess { return PnPResult(status: status, detail: "removed, but did not start again") }
        case .eject:
            node.problem = nil
            if let pdo = node.pdo {
                let (status, _) = io.sendPnP(.eject, to: pdo)
                if !status.isSuccess { io.log?("\(node.instanceName): IRP_MN_EJECT failed with \(status)") }
            }
            // The PDO now reports itself absent: the bus's next answer leaves it out.
            if let parent = node.parent { enumerate(parent) }
        }
        return .success
    }

    /// IRP_MN_QUERY_REMOVE_DEVICE to every started node of `nodes` (children
    /// first), then the open-handle check. On a veto every node that was asked
    /// gets IRP_MN_CANCEL_REMOVE_DEVICE (parents first) and the veto comes back;
    /// nil when the removal may go on (the nodes then take no new handle).
    func queryRemove(_ nodes: [DeviceNode]) -> PnPResult? {
        var asked: [DeviceNode] = []
        func cancel() {
            for n in asked.reversed() {
                if let pdo = n.pdo { _ = io.sendPnP(.cancelRemoveDevice, to: pdo.topOfStack) }
            }
        }
        for n in nodes where n.state == .started {
            guard let pdo = n.pdo else { continue }
            asked.append(n)
            let (status, request) = io.sendPnP(.queryRemoveDevice, to: pdo.topOfStack)
            if !status.isSuccess {
                cancel()
                return PnPResult(status: status, vetoType: .device, vetoedBy: request.completedBy, vetoingNode: n.instanceName)
            }
        }
        // No new handle from here on; then a handle still open vetoes (opens count
        // themselves before they look at the state, so one side always sees the other).
        for n in nodes { markRemoving(n) }
        if let busy = nodes.first(where: { $0.handles.load(ordering: .sequentiallyConsistent) > 0 }) {
            for n in nodes where n.state == .started { unmarkRemoving(n) }
            cancel()
            let count = busy.handles.load(ordering: .relaxed)
            return PnPResult(status: .deviceBusy, vetoType: .outstandingOpen, vetoedBy: busy.pdo?.topOfStack,
                             vetoingNode: busy.instanceName, detail: "\(count) handle\(count == 1 ? "" : "s") open")
        }
        return nil
    }

    /// No new handle is opened on the node's stack (DOE_REMOVE_PENDING: the I/O
    /// manager's open-time check). I/O on handles already open is the drivers'
    /// business, as on Windows.
    func markRemoving(_ node: DeviceNode) {
        guard let pdo = node.pdo else { return }
        forEachDevice(of: pdo) { d in
            d.openState.store(DeviceObject.OpenState.removing.rawValue, ordering: .sequentiallyConsistent)
        }
        dirty = true
    }

    func unmarkRemoving(_ node: DeviceNode) {
        guard let pdo = node.pdo else { return }
        forEachDevice(of: pdo) { d in
            d.openState.store(DeviceObject.OpenState.started.rawValue, ordering: .sequentiallyConsistent)
        }
    }

    /// IRP_MN_REMOVE_DEVICE to every node of `nodes` in order (children first):
    /// each stack first takes no new I/O and completes what waited in it for D0.
    /// A node whose PDO goes with its parent's bus is dropped from the tree; the
    /// first node (the one the removal was for) stays, `.removed`, for the tail.
    func commitRemoval(_ nodes: [DeviceNode]) {
        dirty = true
        for n in nodes {
            guard let pdo = n.pdo, n.stackBuilt else {
                n.state = .removed
                continue
            }
            markRemoving(n)
            let top = pdo.topOfStack
            // Requests the I/O manager held while the stack was not in D0.
            top.powerQueue.completeAll(.noSuchDevice)
            let stack = io.devicesAbove(pdo)
            _ = io.sendPnP(.removeDevice, to: top)
            n.stackBuilt = false
            n.state = .removed
            io.checkRemoved(stack, from: pdo, node: n)
        }
        awaitingClose.removeAll { r in nodes.contains { $0 === r } }
        // The children of the node removed went with their bus.
        guard let last = nodes.last else { return }
        for n in nodes where n !== last { n.parent?.children.removeAll { $0 === n } }
        last.children.removeAll()
    }

    /// The device is gone (its bus no longer reports it): SURPRISE_REMOVAL down
    /// every stack of its subtree that was added (children first), no new handle or
    /// I/O, and REMOVE_DEVICE once the last handle of the subtree closes.
    func surpriseRemove(_ node: DeviceNode) {
        dirty = true
        node.missing = true
        for n in node.subtree where n.stackBuilt && n.state != .surpriseRemoved {
            guard let pdo = n.pdo else { continue }
            markRemoving(n)
            let top = pdo.topOfStack
            top.powerQueue.completeAll(.noSuchDevice)
            n.inSurpriseRemoval.store(true, ordering: .releasing)
            _ = io.sendPnP(.surpriseRemoval, to: top)
            n.inSurpriseRemoval.store(false, ordering: .releasing)
            n.state = .surpriseRemoved
            n.awaitingClose.store(true, ordering: .releasing)
        }
        awaitingClose.append(node)
        finishSurpriseRemovals()
    }

    /// REMOVE_DEVICE for every surprise-removed subtree whose handles are all closed
    /// (children first); a PDO whose stack was already removed gets its second
    /// REMOVE_DEVICE, and its bus deletes it.
    func finishSurpriseRemovals(force: Bool = false) {
        for root in awaitingClose {
            let nodes = root.subtree
            guard force || nodes.allSatisfy({ $0.handles.load(ordering: .acquiring) == 0 }) else { continue }
            awaitingClose.removeAll { $0 === root }
            dirty = true
            for n in nodes {
                guard let pdo = n.pdo else { continue }
                if n.stackBuilt {
                    let stack = io.devicesAbove(pdo)
                    _ = io.sendPnP(.removeDevice, to: pdo.topOfStack)
                    n.stackBuilt = false
                    io.checkRemoved(stack, from: pdo, node: n)
                } else {
                    _ = io.sendPnP(.removeDevice, to: pdo)
                }
                n.state = .removed
            }
            for n in nodes { n.parent?.children.removeAll { $0 === n } }
        }
    }

    /// Unmount: REMOVE_DEVICE down every stack (no query: the tree is going),
    /// children first, last added first; then the root PDOs are deleted.
    func removeEverything() {
        dirty = true
        finishSurpriseRemovals(force: true)
        for root in roots.reversed() {
            let nodes = root.subtree
            for n in nodes {
                guard let pdo = n.pdo, n.stackBuilt else { continue }
                markRemoving(n)
                let top = pdo.topOfStack
                top.powerQueue.completeAll(.noSuchDevice)
                let stack = io.devicesAbove(pdo)
                _ = io.sendPnP(.removeDevice, to: top)
                n.stackBuilt = false
                io.checkRemoved(stack, from: pdo, node: n)
            }
            for n in nodes { n.state = .removed }
            if let pdo = root.pdo { io.detachAndDelete(pdo) }
        }
        roots.removeAll()
    }
}

extension IOManager {
    /// After REMOVE_DEVICE returned: every device above the PDO must be gone
    /// (detached and deleted by its driver).
    /// The devices attached above `pdo` (its FDO and filters), bottom first.
    func devicesAbove(_ pdo: DeviceObject) -> [DeviceObject] {
        var out: [DeviceObject] = []
        var d = pdo.attachedDevice
        while let device = d {
            out.append(device)
            d = device.attachedDevice
        }
        return out
    }

    /// After IRP_MN_REMOVE_DEVICE returned: each function or filter device of the
    /// stack must have detached (0x21D) and deleted itself (0x21E). Verifier or
    /// not, the log says which driver left a device behind.
    /// The filters detached from the running stack go with it.
    func checkRemoved(_ stack: [DeviceObject], from pdo: DeviceObject, node: DeviceNode) {
        for filter in node.detachedFilters {
            filter.lowerDevice = nil
            deleteDevice(filter)
        }
        node.detachedFilters = []
        for device in stack where device.removeLock.isUsed && !device.removeLock.isRemoved && verifier.verifies(device.driverObject) {
            verifier.report(.removeLockNotReleasedAtRemove, device: device, detail: "the remove lock was not released and waited for at IRP_MN_REMOVE_DEVICE")
        }
        for device in stack {
            let deleted = device.deletedFlag.load(ordering: .acquiring)
            let attached = device.lowerDevice != nil
            guard !deleted || attached else { continue }
            if verifier.verifies(device.driverObject) {
                if attached { verifier.report(.notDetachedAtRemove, device: device, detail: "still attached at IRP_MN_REMOVE_DEVICE's return") }
                if !deleted { verifier.report(.notDeletedAtRemove, device: device, detail: "not deleted at IRP_MN_REMOVE_DEVICE's return") }
            } else {
                log?("\(node.instanceName): \(device.driverObject.name) did not detach and delete its device at IRP_MN_REMOVE_DEVICE")
            }
        }
    }
}
