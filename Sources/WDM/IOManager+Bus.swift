// Bus drivers and a tree that changes: IoInvalidateDeviceRelations asks the
// PnP manager to query a bus for its children (QUERY_DEVICE_RELATIONS,
// BusRelations) and diff the answer: new PDOs are enumerated and started as
// root devices are, missing ones get SURPRISE_REMOVAL (if started) and, once
// their last handle is closed, REMOVE_DEVICE, children first.

import Dispatch
import Synchronization

extension IOManager {
    /// `IoInvalidateDeviceRelations(pdo, BusRelations)`: the bus whose stack `pdo`
    /// is at the bottom of has children to report. The PnP manager asks and
    /// applies the difference on its own thread; `waitForPnP` waits for it.
    public func invalidateDeviceRelations(_ pdo: DeviceObject) {
        pnpQueue.async { [self] in reenumerate(pdo) }
    }

    /// Waits until the PnP manager has done what was asked of it so far.
    public func waitForPnP() { pnpQueue.sync {} }

    /// Matches a child PDO's IDs to a function driver (set by the host: the catalog
    /// of drivers it ships); nil means the child stays without a driver.
    /// Returns the function driver and the filters (lower, upper; bottom first) for a device.
    public typealias DriverMatcher = @Sendable (_ hardwareIDs: [String], _ compatibleIDs: [String])
        -> (lower: [DriverObject], function: DriverObject, upper: [DriverObject])?

    func reenumerate(_ pdo: DeviceObject) {
        guard let node = pdo.deviceNode, node.state == .started else { return }
        let (status, answer) = sendPnP(.queryDeviceRelations, to: pdo.topOfStack) { $0.relationType = .busRelations }
        guard status.isSuccess else { return }
        let reported = answer.relations ?? []
        let known = node.children
        for child in known where !reported.contains(where: { $0 === child.pdo }) {
            surpriseRemove(child)
        }
        for childPDO in reported where !known.contains(where: { $0.pdo === childPDO }) {
            enumerateChild(childPDO, parent: node)
        }
        purgeGraveyard()
    }

    /// A new PDO a bus reported: its IDs, a driver, AddDevice, START.
    func enumerateChild(_ pdo: DeviceObject, parent: DeviceNode) {
        var ids: [BusQueryIdType: [String]] = [:]
        for type in [BusQueryIdType.deviceID, .instanceID, .hardwareIDs, .compatibleIDs] {
            let (status, q) = sendPnP(.queryId, to: pdo) { $0.idType = type }
            ids[type] = status.isSuccess ? (q.ids ?? []) : []
        }
        let capabilities = sendPnP(.queryCapabilities, to: pdo).1.capabilities
        let instance = ids[.instanceID]?.first ?? "child"
        let node = DeviceNode(instanceName: instance, hardwareIDs: ids[.hardwareIDs] ?? [], compatibleIDs: ids[.compatibleIDs] ?? [],
                              parameters: [:], pdo: pdo)
        node.parent = parent
        node.capabilities = capabilities
        pdo.deviceNode = node
        parent.children.append(node)
        guard let drivers = driverMatcher?(node.hardwareIDs, node.compatibleIDs) else {
            node.problem = .failedAdd
            log?("\(instance): no driver serves \(node.hardwareIDs + node.compatibleIDs)")
            return
        }
        node.drivers = drivers
        do throws(NTStatus) { try bringUp(node) } catch { node.problem = .failedAdd }
    }

    /// The device is gone (a bus no longer reports it): SURPRISE_REMOVAL down its
    /// stack if it was started (children first), new I/O on its open handles fails
    /// (STATUS_DELETE_PENDING, ENODEV), and REMOVE_DEVICE follows when the last
    /// handle is closed.
    func surpriseRemove(_ node: DeviceNode) {
        guard node.state != .removed else { return }
        for child in node.children { surpriseRemove(child) }
        guard let pdo = node.pdo else { return }
        if node.state == .started {
            _ = sendPnP(.surpriseRemoval, to: pdo.topOfStack)
        }
        node.state = .surpriseRemoved
        node.missing = true
        announceLinks(of: pdo)
        var d: DeviceObject? = pdo
        while let device = d {
            device.gone.store(true, ordering: .relaxed)
            d = device.attachedDevice
        }
        if pdo.topOfStack.openHandles.load(ordering: .acquiring) == 0 { finishRemoval(node) }
    }

    /// REMOVE_DEVICE for a node that is gone, children first; the bus deletes the PDO.
    func finishRemoval(_ node: DeviceNode) {
        guard node.state != .removed, let pdo = node.pdo else { return }
        for child in node.children { finishRemoval(child) }
        node.state = .removed
        _ = sendPnP(.removeDevice, to: pdo.topOfStack)
        if let parent = node.parent { parent.children.removeAll { $0 === node } }
        purgeGraveyard()
    }

    /// Called when a handle on `device`'s stack closes: a stack that is gone is
    /// removed once nothing has it open.
    func handleClosed(_ top: DeviceObject) {
        guard top.openHandles.load(ordering: .acquiring) == 0, let node = top.deviceNode, node.missing, node.state == .surpriseRemoved else { return }
        pnpQueue.async { [self] in finishRemoval(node) }
    }
}
