// ForgetfulRemove: a deliberately defective function driver of the PnP class. It
// handles every PnP IRP as a function driver should, except IRP_MN_REMOVE_DEVICE,
// where it passes the IRP down and returns without IoDetachDevice and
// IoDeleteDevice: Verifier 0x21D and 0x21E. Only the `test` tree mounts it.

import WDM

public enum ForgetfulRemove {
    public static let name = "ForgetfulRemove"
    public static let hardwareID = "Root\\ForgetfulRemove"

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
        driver.majorFunction.succeed([.create, .cleanup, .close])
        let helper = PnP.functionDispatch()
        driver.majorFunction[.pnp] = { device, irp in
            guard irp.pnpMinor == .removeDevice else { return helper(device, irp) }
            irp.ioStatus.status = .success
            irp.skipCurrentStackLocation()
            return device.callLower(irp)  // and forgets to detach and delete its device
        }
        driver.majorFunction[.power] = Power.functionDispatch
        return .success
    }
}
