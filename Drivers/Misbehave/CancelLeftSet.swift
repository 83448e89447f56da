// CancelLeftSet: a deliberately defective filter of the cancel class. It sets a
// cancel routine on every read it passes down and never clears it: IoCallDriver
// with a cancel routine set (Verifier 0x203), and completion with one still set
// (0xC9/0x07, which the I/O manager reports and clears). Only the `test` tree
// mounts it.

import WDM

public enum CancelLeftSet {
    public static let name = "CancelLeftSet"

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            _ = driver.createFilterDevice(for: pdo)
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        driver.majorFunction[.read] = { device, irp in
            _ = irp.setCancelRoutine { _, irp in irp.complete(.cancelled) }
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = Power.filterDispatch
        return .success
    }
}
