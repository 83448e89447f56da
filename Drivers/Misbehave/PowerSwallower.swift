// PowerSwallower: a deliberately defective filter of the power class. It
// completes every IRP_MN_SET_POWER itself, with success, and never passes it
// down (PoCallDriver): the devices below never hear of the power change
// (0xC9/0x231, a successful power IRP completed without forwarding). Only the
// `test` tree mounts it.

import WDM

public enum PowerSwallower {
    public static let name = "PowerSwallower"

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            _ = driver.createFilterDevice(for: pdo)
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = { device, irp in
            guard irp.minorFunction == PowerMinor.setPower.rawValue else { return Power.filterDispatch(device, irp) }
            irp.complete(.success)  // the bug: not passed down
            return .success
        }
        return .success
    }
}
