// PassThroughFilter: a filter driver that sees every IRP on its way down and
// passes it on untouched (IoSkipCurrentIrpStackLocation + IoCallDriver). It
// counts what it saw, so tests can tell it sits in the stack.

import Synchronization
import WDM

public enum PassThroughFilter {
    public static let name = "PassThroughFilter"

    /// The filter's device extension.
    public final class Extension: Sendable {
        /// IRPs seen, per major function.
        public let seen = Mutex<[MajorFunction: Int]>([:])
        public init() {}
    }

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            driver.createFilterDevice(for: pdo, extension: Extension())
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            let major = irp.majorFunction
            ext.seen.withLock { $0[major, default: 0] += 1 }
            // We don't need to see the result, so the lower driver gets our location.
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        return .success
    }
}
