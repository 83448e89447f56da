// RateFilter: limits the bytes per second of reads and writes, as nbdkit's rate
// filter does. Each request takes its length's share of the rate: it goes down
// when the bytes before it have had their time (a request that finds the line
// empty goes at once), and waits pending, cancellable, until then.

import Dispatch
import WDM

public enum RateFilter {
    public static let name = "RateFilter"

    struct State: Sendable {
        var limit: Int64 = 0
        /// When the line is free again (monotonic nanoseconds).
        var nextFree: UInt64 = 0
        var bytes: Int64 = 0
        var waited = 0
    }

    static let knobs: [Knob<State>] = [
        Knob(key: "limit", values: "bytes per second (K, M, G: KiB, MiB, GiB)", defaultValue: "1M",
             help: "the most bytes of reads and writes per second, together",
             apply: { s, t in
                 guard let v = byteCount(t), v > 0 else { return "must be a positive byte count per second (2M)" }
                 s.limit = v
                 return nil
             }, show: { "\($0.limit)" }),
    ]

    /// The tree file's settings (`RateLimit`).
    public static let settings = FaultSettings<State>.settings(prefix: "Rate", knobs: knobs, initial: State())

    final class Extension: Sendable {
        let settings: FaultSettings<State>
        let delayer = Delayer()
        init(_ s: FaultSettings<State>) { settings = s }
    }

    /// `DriverEntry`
    public static let driverEntry = FaultSettings<State>.driverEntry(
        fileName: "rate", prefix: "Rate", knobs: knobs, initial: State(), counters: { "bytes \($0.bytes)\nwaited \($0.waited)\n" },
        extension: { Extension($0) },
        all: { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            guard let (_, length) = irp.byteRange else { return passDown(device, irp) }
            let now = monotonicNanoseconds()
            let start: UInt64 = ext.settings.state.withLock { s in
                let start = max(now, s.nextFree)
                s.nextFree = start + UInt64(Double(length) / Double(s.limit) * 1e9)
                s.bytes += Int64(length)
                if start > now { s.waited += 1 }
                return start
            }
            guard start > now else { return passDown(device, irp) }
            return ext.delayer.pass(irp, below: device, at: DispatchTime(uptimeNanoseconds: start))
        })
}
