// ZeroDriver: the `zero` device. A read fills the caller's whole buffer with
// zeros, in place; writes are consumed.

import WDM

public enum ZeroDriver {
    public static let name = "Zero"

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: .directIO)
        }
        driver.majorFunction.succeed([.create, .cleanup, .close, .flushBuffers])
        driver.majorFunction[.pnp] = PnP.functionDispatch()
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = { _, irp in
            let buffer = irp.transferBuffer
            if let base = buffer.baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count) }
            irp.complete(.success, information: buffer.count)
            return .success
        }
        driver.majorFunction[.write] = { _, irp in
            irp.complete(.success, information: irp.parameters.write.length)
            return .success
        }
        driver.majorFunction[.queryInformation] = { _, irp in irp.completeQueryStandardInformation(size: 0) }
        return .success
    }
}
