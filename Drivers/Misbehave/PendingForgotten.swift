// PendingForgotten: a deliberately defective filter of the I/O class. Its read
// completion routine never propagates the pending mark (the WDM samples'
// `if (Irp->PendingReturned) IoMarkIrpPending(Irp);`), yet it returns what the
// lower driver returned. Over a driver that completes at once nothing shows;
// under Verifier's forced pending (`--stress pending=1`) the lower driver pends,
// and the completion routine's return is 0xC9/0x228. Only the `test` tree mounts it.

import WDM

public enum PendingForgotten {
    public static let name = "PendingForgotten"

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
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { _, _, _ in .success }  // the bug: no IoMarkIrpPending
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = Power.filterDispatch
        return .success
    }
}
