// DelayFilter: adds latency to chosen requests, as nbdkit's delay filter does.
// The request pends in the filter for `ms` milliseconds, then goes down; a
// cancel while it waits completes it with STATUS_CANCELLED at once.

import Dispatch
import WDM

public enum DelayFilter {
    public static let name = "DelayFilter"

    struct State: Sendable {
        var majors = Majors(bits: 0)
        var ms = 0
        var delayed = 0
    }

    static let knobs: [Knob<State>] = [
        Knob(key: "majors", values: "major functions: read, write, ioctl, flush, ... (comma-separated), all or none", defaultValue: "read,write",
             help: "the requests it delays", apply: { s, t in Majors.parse(t).store { s.majors = $0 } }, show: { $0.majors.text }),
        Knob(key: "ms", values: "milliseconds from 0 to 600000", defaultValue: "100", help: "how long each request waits before it goes down",
             apply: { s, t in integer(t, 0...600_000).store { s.ms = $0 } }, show: { "\($0.ms)" }),
    ]

    /// The tree file's settings (`DelayMajors`, `DelayMs`).
    public static let settings = FaultSettings<State>.settings(prefix: "Delay", knobs: knobs, initial: State())

    final class Extension: Sendable {
        let settings: FaultSettings<State>
        let delayer = Delayer()
        init(_ s: FaultSettings<State>) { settings = s }
    }

    /// `DriverEntry`
    public static let driverEntry = FaultSettings<State>.driverEntry(
        fileName: "delay", prefix: "Delay", knobs: knobs, initial: State(), counters: { "delayed \($0.delayed)\n" },
        extension: { Extension($0) },
        all: { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            let major = irp.majorFunction
            let ms: Int? = ext.settings.state.withLock { s in
                guard s.majors.contains(major), s.ms > 0 else { return nil }
                s.delayed += 1
                return s.ms
            }
            guard let ms else { return passDown(device, irp) }
            return ext.delayer.pass(irp, below: device, at: .now() + .milliseconds(ms))
        })
}
