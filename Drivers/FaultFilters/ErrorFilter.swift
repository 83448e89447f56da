// ErrorFilter: fails chosen requests with a chosen NTSTATUS, as nbdkit's error
// filter and dm-flakey do. A request is a candidate when its major function is
// one of `majors`, its IOCTL code one of `ioctls` (when given), and its byte range
// meets one of `ranges` (bad sectors, when given); a candidate fails when the
// trigger file exists (when given), it is the Nth candidate of `every`, and the
// seeded draw falls under `rate`. Anything else passes down untouched.

import Glibc
import WDM

public enum ErrorFilter {
    public static let name = "ErrorFilter"

    struct State: Sendable {
        var majors = Majors(bits: 0)
        var ioctls: [UInt32] = []
        var ranges = ByteRanges(ranges: [])
        var status = NTStatus.deviceDataError
        var every = 1
        var rate = 1.0
        var seed: UInt64 = 0
        var trigger = ""
        var random = SeededRandom(seed: 0)
        // Counters.
        var candidates = 0
        var failed = 0
    }

    static let knobs: [Knob<State>] = [
        Knob(key: "majors", values: "major functions: read, write, ioctl, flush, ... (comma-separated), all or none", defaultValue: "read,write",
             help: "the requests it may fail", apply: { s, t in Majors.parse(t).store { s.majors = $0 } }, show: { $0.majors.text }),
        Knob(key: "ioctls", values: "IOCTL codes in hex (comma-separated), or all", defaultValue: "all",
             help: "the IOCTL codes it may fail (with ioctl among the majors)", apply: { s, t in parseCodes(t).store { s.ioctls = $0 } },
             show: { $0.ioctls.isEmpty ? "all" : $0.ioctls.map { "0x" + String($0, radix: 16, uppercase: true) }.joined(separator: ",") }),
        Knob(key: "ranges", values: "byte ranges OFFSET+LENGTH (comma-separated; K, M, G), or all", defaultValue: "all",
             help: "bad sectors: a read or write that touches one of them fails whole", apply: { s, t in ByteRanges.parse(t).store { s.ranges = $0 } },
             show: { $0.ranges.text }),
        Knob(key: "status", values: "an error NTSTATUS by name or in hex", defaultValue: "STATUS_DEVICE_DATA_ERROR",
             help: "what a failed request completes with (errno by wdmfs's table: EIO for this one)",
             apply: { s, t in errorStatus(t).store { s.status = $0 } }, show: { "\($0.status)" }),
        Knob(key: "every", values: "an integer from 1", defaultValue: "1", help: "fail only every Nth candidate",
             apply: { s, t in integer(t, 1...Int.max).store { s.every = $0 } }, show: { "\($0.every)" }),
        Knob(key: "rate", values: "a decimal from 0 to 1", defaultValue: "1", help: "the chance a candidate fails, drawn from `seed`",
             apply: { s, t in probability(t).store { s.rate = $0 } }, show: { "\($0.rate)" }),
        Knob(key: "seed", values: "an unsigned integer", defaultValue: "0", help: "seeds the draws of `rate`; setting it restarts them",
             apply: { s, t in seed(t).store { s.seed = $0; s.random = SeededRandom(seed: $0) } }, show: { "\($0.seed)" }),
        Knob(key: "trigger", values: "an absolute path, or none", defaultValue: "none",
             help: "fail only while this file exists (touch it to start failing, rm it to stop)",
             apply: { s, t in
                 guard t == "none" || t.isEmpty || t.hasPrefix("/") else { return "must be an absolute path, or none" }
                 s.trigger = t == "none" ? "" : t
                 return nil
             }, show: { $0.trigger.isEmpty ? "none" : $0.trigger }),
    ]

    static func parseCodes(_ text: String) -> Result<[UInt32], Refusal> {
        var out: [UInt32] = []
        if text == "all" { return .success([]) }
        for w in text.split(separator: ",").map({ $0.trimmingCharacters(in: " ") }) where !w.isEmpty {
            let digits = w.hasPrefix("0x") || w.hasPrefix("0X") ? String(w.dropFirst(2)) : w
            guard let v = UInt32(digits, radix: 16) else { return .failure(Refusal("must be IOCTL codes in hex (0x222003), comma-separated, or all")) }
            out.append(v)
        }
        return .success(out)
    }

    /// The tree file's settings (`ErrorMajors`, `ErrorRanges`, ...).
    public static let settings = FaultSettings<State>.settings(prefix: "Error", knobs: knobs, initial: State())

    /// The status to fail `irp` with, or nil to pass it down.
    static func decide(_ irp: IRP, _ settings: FaultSettings<State>) -> NTStatus? {
        let major = irp.majorFunction
        let range = irp.byteRange
        let code = major == .deviceControl || major == .internalDeviceControl ? irp.parameters.deviceIoControl.ioControlCode.rawValue : nil
        let (candidate, trigger): (NTStatus?, String) = settings.state.withLock { s in
            guard s.majors.contains(major) else { return (nil, "") }
            if !s.ioctls.isEmpty, let code, !s.ioctls.contains(code) { return (nil, "") }
            if let range, !s.ranges.meets(range.offset, range.length) { return (nil, "") }
            if !s.ranges.ranges.isEmpty, range == nil { return (nil, "") }
            s.candidates += 1
            guard s.candidates % s.every == 0 else { return (nil, "") }
            if s.rate < 1, s.random.unit() >= s.rate { return (nil, "") }
            return (s.status, s.trigger)
        }
        guard let status = candidate else { return nil }
        // The trigger file is looked at outside the lock (a system call).
        if !trigger.isEmpty, access(trigger, F_OK) != 0 { return nil }
        settings.state.withLock { $0.failed += 1 }
        return status
    }

    /// `DriverEntry`
    public static let driverEntry = FaultSettings<State>.driverEntry(
        fileName: "error", prefix: "Error", knobs: knobs, initial: State(), counters: { "candidates \($0.candidates)\nfailed \($0.failed)\n" },
        all: { device, irp in
            guard let status = decide(irp, device.deviceExtension(as: FaultSettings<State>.self)) else { return passDown(device, irp) }
            irp.complete(status)
            return status
        })
}
