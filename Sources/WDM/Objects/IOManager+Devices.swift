// IoCreateDevice, IoAttachDeviceToDeviceStack, IoDetachDevice, IoDeleteDevice.

import Synchronization

extension IOManager {
    // MARK: - Devices

    /// `IoCreateDevice`. The device starts with DO_DEVICE_INITIALIZING set.
    public func createDevice(
        driver: DriverObject, deviceType: UInt32, characteristics: UInt32 = 0,
        flags: DeviceFlags = [], name: String? = nil, extension ext: AnyObject? = nil
    ) -> DeviceObject {
        let d = DeviceObject(
            driver: driver, deviceType: deviceType, characteristics: characteristics,
            flags: flags.union(.deviceInitializing), name: name)
        d.deviceExtension = ext
        driver.devices.withLock { $0.append(d) }
        deviceCount.add(1, ordering: .relaxed)
        return d
    }

    /// `IoAttachDeviceToDeviceStack`: attaches `source` above the top of `target`'s
    /// stack and returns the device it attached to. The new device's stack size is
    /// one more than the one below; nothing else is copied (as on Windows: a filter
    /// copies the buffering flags, DeviceType and Characteristics itself).
    @discardableResult
    public func attachDeviceToDeviceStack(_ source: DeviceObject, to target: DeviceObject) -> DeviceObject {
        let lower = target.topOfStack
        source.lowerDevice = lower
        source.stackSize = lower.stackSize + 1
        source.deviceNode = lower.deviceNode
        // Last: a request that finds the new device above finds it whole.
        lower.attachedDevice = source
        return lower
    }

    /// `IoDetachDevice`: detaches whatever is attached above `target`.
    public func detachDevice(_ target: DeviceObject) {
        if target.attachedDevice == nil, verifier.verifies(target.driverObject) {
            verifier.report(.detachedWithNothingAttached, device: target, detail: "nothing is attached above this device")
        }
        if let up = target.attachedDevice, target.deviceNode?.inSurpriseRemoval.load(ordering: .acquiring) == true, verifier.verifies(up.driverObject) {
            verifier.report(.detachedDuringSurpriseRemoval, device: up, detail: "a device is detached at IRP_MN_REMOVE_DEVICE, not before")
        }
        if let up = target.attachedDevice { up.lowerDevice = nil }
        target.attachedDevice = nil
    }

    /// `IoDeleteDevice`.
    public func deleteDevice(_ device: DeviceObject) {
        guard !device.deletedFlag.load(ordering: .acquiring) else {
            // Ignored, whether verified or not: the device is gone already.
            if verifier.verifies(device.driverObject) { verifier.report(.deletedTwice, device: device) }
            return
        }
        if device.lowerDevice != nil, verifier.verifies(device.driverObject) {
            verifier.report(.deletedWhileAttached, device: device, detail: "IoDetachDevice was not called for the device below")
        }
        if let node = device.deviceNode, verifier.verifies(device.driverObject) {
            if node.inSurpriseRemoval.load(ordering: .acquiring) {
                verifier.report(.deletedDuringSurpriseRemoval, device: device, detail: "a device is deleted at IRP_MN_REMOVE_DEVICE, not before")
            } else if node.pdo === device, node.parent != nil, node.stackBuilt, !node.missing {
                verifier.report(.reportedPDODeleted, device: device, detail: "the bus still reports it and its stack is built")
            }
        }
        device.deletedFlag.store(true, ordering: .releasing)
        forgetInterfaces(of: device)
        // A device deleted while still attached (0x201) is detached here: the one
        // below must not keep pointing at it once it is freed.
        if let lower = device.lowerDevice, lower.attachedDevice === device { lower.attachedDevice = nil }
        if let up = device.attachedDevice, up.lowerDevice === device { up.lowerDevice = nil }
        device.attachedDevice = nil
        device.lowerDevice = nil
        graveyard.withLock { $0.append(device) }
        device.driverObject.devices.withLock { $0.remove(device) }
        deleteSymbolicLinks(of: device)
    }

    /// Frees the deleted devices once no IRP is in flight anywhere.
    func purgeGraveyard() {
        guard outstandingIrps.isEmpty else { return }
        let dead = graveyard.withLock { g in defer { g.removeAll() }; return g }
        _ = dead  // released here, outside the lock
    }
}
