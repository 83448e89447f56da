// PassThroughFilter: a filter driver that sees every IRP on its way down and
// passes it on untouched. It counts what it saw, so tests can tell it sits in
// the stack. On the framework: a filter's device sends down everything it has
// no queue for; a preprocess callback sees each IRP first.

import Synchronization
import WDF

public enum PassThroughFilter {
    public static let name = "PassThroughFilter"

    /// The filter's context: the IRPs seen, indexed by major function (an array: no hashing per IRP).
    public final class Context: Sendable {
        let counts = HandoffMutex<[Int]>(Array(repeating: 0, count: MajorFunction.tableSize))

        /// IRPs seen, per major function.
        public var seen: [MajorFunction: Int] {
            counts.withLock { c in
                var out: [MajorFunction: Int] = [:]
                for m in MajorFunction.allCases where c[Int(m.rawValue)] > 0 { out[m] = c[Int(m.rawValue)] }
                return out
            }
        }
    }

    /// What the filter whose device is `device` saw.
    public static func seen(at device: DeviceObject) -> [MajorFunction: Int] {
        device.deviceExtension(as: Device<Context>.self).context.seen
    }

    /// `DriverEntry`
    public static let driverEntry = Framework.filterDriver { (device: Device<Context>) in
        device.preprocess(MajorFunction.allCases) { device, irp in
            let major = Int(irp.majorFunction.rawValue)
            device.context.counts.withLock { $0[major] += 1 }
        }
        return Context()
    }
}
