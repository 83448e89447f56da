// RemoveLockKept: a deliberately defective function driver of the remove-lock
// class. At IRP_MN_REMOVE_DEVICE it passes the IRP down, detaches and deletes
// its device, but never calls IoReleaseRemoveLockAndWait: I/O still in flight
// may reach a deleted device (DDI compliance rule RemoveLockMnRemove, bug check
// 0xC4 under Driver Verifier). Serves Root\RemoveLockKept; only the `test` tree
// mounts it.

import WDM

public enum RemoveLockKept {
    public static let name = "RemoveLockKept"
    public static let hardwareID = "Root\\RemoveLockKept"

    public static let driverEntry: DriverEntry = { driver in
        let pnp = PnP.functionDispatch()
        driver.addDevice = { driver, pdo in driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
        driver.majorFunction.succeed([.create, .cleanup, .close])
        driver.majorFunction[.read] = { _, irp in
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.pnp] = { device, irp in
            guard irp.pnpMinor == .removeDevice else { return pnp(device, irp) }
            device.failsNewIO.store(true, ordering: .releasing)
            irp.ioStatus.status = .success
            irp.skipCurrentStackLocation()
            let status = device.callLower(irp)
            // The bug: no device.removeLock.releaseAndWait() before the device goes.
            device.driverObject.ioManager.deleteSymbolicLinks(of: device)
            device.driverObject.ioManager.detachAndDelete(device)
            return status
        }
        return .success
    }
}
