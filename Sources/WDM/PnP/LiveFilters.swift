// Attaching a filter to a running stack and detaching one from it: a wdmfs
// extension (Windows adds or removes a filter only by restarting the stack).
// Each is one action of the PnP manager. Requests in flight finish on the stack
// they started on: an attach publishes the new top only once it is whole (the
// stack's links are atomic), and a detached filter's device stays, out of the
// stack, until the stack is removed, so a request already on its way to it still
// goes through it and down. Neither loses nor repeats a request.

extension IOManager {
    /// Attaches `driver` (a filter) on top of `node`'s running stack: its AddDevice
    /// runs for the PDO, as at a start, and the new device is the stack's top from
    /// then on. It stays through a restart, as an upper filter from the tree file does.
    /// `parameters` join the node's (the filter's settings, read by its AddDevice:
    /// it starts with them). The stack must be started, in D0 and holding no
    /// requests (STATUS_INVALID_DEVICE_STATE otherwise).
    public func attachFilter(_ driver: DriverObject, to node: DeviceNode, parameters: [String: String] = [:]) -> PnPResult {
        pnp.perform {
            guard pnp.isInTree(node), node.state == .started, let pdo = node.pdo, let drivers = node.drivers else {
                return PnPResult(status: .invalidDeviceState, detail: "the device is not started")
            }
            let top = pdo.topOfStack
            guard top.held.load(ordering: .acquiring) == 0, node.powerState == .d0 else {
                return PnPResult(status: .invalidDeviceState, detail: "the device is not in D0, or its requests are held")
            }
            guard let addDevice = driver.addDevice else {
                return PnPResult(status: .invalidDeviceRequest, detail: "\(driver.name) has no AddDevice")
            }
            let kept = node.parameters
            node.parameters.merge(parameters) { _, new in new }
            let status = addDevice(driver, pdo)
            if !status.isSuccess { node.parameters = kept }
            guard status.isSuccess else {
                return PnPResult(status: status, detail: "AddDevice of \(driver.name) failed")
            }
            let added = pdo.topOfStack
            guard added !== top, added.driverObject === driver else {
                return PnPResult(status: .invalidDeviceRequest, detail: "\(driver.name)'s AddDevice attached no device")
            }
            // Written only if the AddDevice left it set (createFilterDevice clears it before
            // the attach): the device is live, and a request may be reading its flags.
            if added.flags.contains(.deviceInitializing) { added.flags.remove(.deviceInitializing) }
            added.openState.store(top.openState.load(ordering: .acquiring), ordering: .releasing)
            node.drivers = (drivers.lower, drivers.function, drivers.upper + [driver])
            pnp.dirty = true
            log?("\(node.instanceName): attached \(driver.name) to the running stack")
            return .success
        }
    }

    /// Detaches the topmost device of `driverName` (`\Driver\ErrorFilter` or
    /// `ErrorFilter`) from `node`'s running stack. Only a filter can be detached:
    /// the function driver and the PDO stay (STATUS_INVALID_DEVICE_REQUEST).
    public func detachFilter(named driverName: String, from node: DeviceNode) -> PnPResult {
        let full = driverName.hasPrefix("\\") ? driverName : "\\Driver\\" + driverName
        return pnp.perform {
            guard pnp.isInTree(node), node.state == .started, let pdo = node.pdo, let drivers = node.drivers else {
                return PnPResult(status: .invalidDeviceState, detail: "the device is not started")
            }
            var d: DeviceObject? = pdo.topOfStack
            while let device = d, device.driverObject.name != full { d = device.lowerDevice }
            guard let filter = d else {
                return PnPResult(status: .noSuchDevice, detail: "no \(full) in the stack")
            }
            guard filter !== pdo, filter.driverObject !== drivers.function else {
                return PnPResult(status: .invalidDeviceRequest, detail: "\(full) is not a filter of the stack")
            }
            guard filter.attachedDevice != nil || filter.held.load(ordering: .acquiring) == 0 else {
                return PnPResult(status: .invalidDeviceState, detail: "the stack is holding requests (not in D0)")
            }
            let below = filter.lowerDevice!
            if let above = filter.attachedDevice {
                // The device above now calls the one below (it keeps its stack size:
                // an IRP made for it has one location more than it needs).
                above.lowerDevice = below
                below.attachedDevice = above
            } else {
                below.attachedDevice = nil
            }
            // The filter keeps its own link down: a request already on its way to it goes through.
            filter.attachedDevice = nil
            node.detachedFilters.append(filter)
            if let i = drivers.upper.lastIndex(where: { $0 === filter.driverObject }) {
                var upper = drivers.upper
                upper.remove(at: i)
                node.drivers = (drivers.lower, drivers.function, upper)
            } else if let i = drivers.lower.lastIndex(where: { $0 === filter.driverObject }) {
                var lower = drivers.lower
                lower.remove(at: i)
                node.drivers = (lower, drivers.function, drivers.upper)
            }
            pnp.dirty = true
            log?("\(node.instanceName): detached \(full) from the running stack")
            return .success
        }
    }
}
