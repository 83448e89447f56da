// NullDriver: the `null` device, like NUL on Windows and /dev/null on Linux.
// Reads complete with STATUS_END_OF_FILE (an empty read); writes consume everything.

import WDM

public enum NullDriver {
    public static let name = "Null"

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in driver.addFunctionDevice(for: pdo, deviceType: DeviceType.null) }
        driver.majorFunction.succeed([.create, .cleanup, .close, .flushBuffers])
        driver.majorFunction[.pnp] = PnP.functionDispatch()
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = { _, irp in
            irp.complete(.endOfFile)
            return .endOfFile
        }
        driver.majorFunction[.write] = { _, irp in
            irp.complete(.success, information: irp.parameters.write.length)
            return .success
        }
        driver.majorFunction[.queryInformation] = { _, irp in irp.completeQueryStandardInformation(size: 0) }
        return .success
    }
}
