// Buses and a tree that changes: IoInvalidateDeviceRelations queues an action
// that asks a bus for its children (QUERY_DEVICE_RELATIONS, BusRelations) and
// applies the difference: new PDOs are enumerated and started as root devices
// are, missing ones are surprise-removed, and a PDO whose node was removed while
// it was still reported comes back as a new node.

import Dispatch
import Synchronization

extension IOManager {
    /// `IoInvalidateDeviceRelations(pdo, BusRelations)`: the bus whose stack `pdo`
    /// is at the bottom of has children to report. The PnP manager asks and
    /// applies the difference on its executor; `waitForPnP` waits for it.
    public func invalidateDeviceRelations(_ pdo: DeviceObject) {
        if pdo.lowerDevice != nil, verifier.verifies(pdo.driverObject) {
            verifier.report(.nonPDOGivenForPDO, device: pdo, detail: "IoInvalidateDeviceRelations with a device that is attached to another (not a PDO)")
        }
        pnp.enqueue { [self] in
            guard let node = pdo.deviceNode, pnp.isInTree(node) else { return }
            pnp.enumerate(node)
        }
    }

    /// Matches a child PDO's IDs to a function driver (set by the host: the catalog
    /// of drivers it ships and the tree allows); nil means the child stays without
    /// a driver (CM_PROB_FAILED_ADD). `bus` is the function driver of the bus that
    /// reported the child. Returns the function driver and the filters (lower,
    /// upper; bottom first) for a device.
    public typealias DriverMatcher = @Sendable (_ bus: DriverObject?, _ hardwareIDs: [String], _ compatibleIDs: [String])
        -> (lower: [DriverObject], function: DriverObject, upper: [DriverObject])?

    /// Called when a handle on `node`'s stack closes: a surprise-removed subtree is
    /// finished once nothing in it is open.
    func handleClosed(_ node: DeviceNode) {
        guard node.handles.load(ordering: .acquiring) == 0, node.awaitingClose.load(ordering: .acquiring) else { return }
        pnp.enqueue { [self] in pnp.finishSurpriseRemovals() }
    }
}

extension PnPManager {
    /// QUERY_DEVICE_RELATIONS(BusRelations) to a started node, and the difference applied.
    func enumerate(_ node: DeviceNode) {
        guard node.state == .started, node.stackBuilt, let pdo = node.pdo else { return }
        let (status, answer) = io.sendPnP(.queryDeviceRelations, to: pdo.topOfStack) { $0.relationType = .busRelations }
        guard status.isSuccess else { return }
        var reported = answer.relations ?? []
        // A PDO is at the bottom of its stack; anything attached to another is not one
        // (0x248). Those are left out, as Windows cannot enumerate them either.
        let notPDOs = reported.filter { $0.lowerDevice != nil }
        if !notPDOs.isEmpty {
            // Blamed on the bus's function device: the first attached above its PDO
            // (the PDO below completes the query; it only passes the list up).
            let bus = pdo.attachedDevice ?? pdo
            for d in notPDOs where io.verifier.verifies(bus.driverObject) {
                io.verifier.report(.nonPDOInBusRelations, device: bus, detail: "reported \(d.driverObject.name)'s device \(d.name ?? "(unnamed)"), which is attached to another device")
            }
            reported.removeAll { $0.lowerDevice != nil }
        }
        let known = node.children
        for child in known where !child.missing && !reported.contains(where: { $0 === child.pdo }) {
            surpriseRemove(child)
        }
        for childPDO in reported {
            if let existing = node.children.first(where: { $0.pdo === childPDO && !$0.missing }) {
                // Removed (devcon remove, eject vetoed nothing) while still reported:
                // it comes back as a new node.
                guard existing.state == .removed, existing.problem == nil, let fresh = existing.reborn() else { continue }
                node.children.removeAll { $0 === existing }
                childPDO.deviceNode = fresh
                node.children.append(fresh)
                dirty = true
                bringUp(fresh)
            } else {
                enumerateChild(childPDO, parent: node)
            }
        }
    }

    /// What the PnP manager asks a new PDO, in Windows' order: QUERY_ID DeviceID,
    /// QUERY_CAPABILITIES, QUERY_ID InstanceID, HardwareIDs and CompatibleIDs,
    /// QUERY_DEVICE_TEXT (the description) and QUERY_BUS_INFORMATION.
    func identify(_ pdo: DeviceObject) -> Identity {
        func ids(_ type: BusQueryIdType) -> [String] {
            let (status, q) = io.sendPnP(.queryId, to: pdo) { $0.idType = type }
            return status.isSuccess ? (q.ids ?? []) : []
        }
        var who = Identity()
        who.deviceID = ids(.deviceID).first
        lastCapabilities = io.sendPnP(.queryCapabilities, to: pdo).1.capabilities
        who.instanceID = ids(.instanceID).first
        who.hardwareIDs = ids(.hardwareIDs)
        who.compatibleIDs = ids(.compatibleIDs)
        let (textStatus, text) = io.sendPnP(.queryDeviceText, to: pdo) { $0.deviceTextType = 0 }
        who.description = textStatus.isSuccess ? text.text : nil
        let (busStatus, bus) = io.sendPnP(.queryBusInformation, to: pdo)
        who.busInformation = busStatus.isSuccess ? bus.busInformation : nil
        return who
    }

    struct Identity {
        var deviceID: String?
        var instanceID: String?
        var hardwareIDs: [String] = []
        var compatibleIDs: [String] = []
        var description: String?
        var busInformation: BusInformation?
    }

    /// A new PDO a bus reported: its IDs, a driver, AddDevice, START.
    func enumerateChild(_ pdo: DeviceObject, parent: DeviceNode) {
        dirty = true
        let who = identify(pdo)
        let instance = who.instanceID ?? "child"
        if io.verifier.verifies(pdo.driverObject) {
            for twin in parent.children where twin.pdo !== pdo && !twin.missing && twin.state != DeviceNodeState.removed
                && twin.instanceName == instance && twin.hardwareIDs == who.hardwareIDs {
                io.verifier.report(.duplicateChildIDs, device: pdo, detail: "instance ID \(instance) and hardware IDs \(who.hardwareIDs) are also another child's")
                break
            }
        }
        let node = DeviceNode(instanceName: instance, hardwareIDs: who.hardwareIDs, compatibleIDs: who.compatibleIDs,
                              parameters: [:], pdo: pdo)
        node.parent = parent
        node.capabilities = lastCapabilities
        node.description = who.description
        node.busInformation = who.busInformation
        pdo.deviceNode = node
        parent.children.append(node)
        guard let drivers = io.driverMatcher?(parent.drivers?.function, node.hardwareIDs, node.compatibleIDs) else {
            node.problem = .failedAdd
            io.log?("\(instance): no driver serves \(node.hardwareIDs + node.compatibleIDs)")
            return
        }
        node.drivers = drivers
        bringUp(node)
    }
}
