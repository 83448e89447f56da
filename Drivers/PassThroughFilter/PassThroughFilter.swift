// PassThroughFilter: a filter driver that sees every IRP on its way down and
// passes it on untouched (IoSkipCurrentIrpStackLocation + IoCallDriver). It
// counts what it saw, so tests can tell it sits in the stack.

import Synchronization
import WDM

public enum PassThroughFilter {
    public static let name = "PassThroughFilter"

    /// The filter's device extension.
    public final class Extension: Sendable {
        /// IRPs seen, indexed by major function (an array: no hashing per IRP).
        let counts = HandoffMutex<[Int]>(Array(repeating: 0, count: MajorFunction.tableSize))
        public init() {}

        /// IRPs seen, per major function.
        public var seen: [MajorFunction: Int] {
            counts.withLock { c in
                var out: [MajorFunction: Int] = [:]
                for m in MajorFunction.allCases where c[Int(m.rawValue)] > 0 { out[m] = c[Int(m.rawValue)] }
                return out
            }
        }
    }

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            driver.createFilterDevice(for: pdo, extension: Extension())
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            let major = Int(irp.majorFunction.rawValue)
            ext.counts.withLock { $0[major] += 1 }
            // We don't need to see the result, so the lower driver gets our location.
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = Power.filterDispatch
        return .success
    }
}
