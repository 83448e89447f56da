// What the four fault filters share: their settings (each a knob with a key in
// the settings file, a name in the tree file, a default and a check), the file
// that shows and changes them while the filter runs, the parsers of the values
// they take, and a seeded random generator so a failure can be reproduced.

import Synchronization
import WDM

/// One setting of a fault filter: its key in the settings file (`rate`), what it
/// takes, its default, one line of help, and how a value is read into the
/// filter's state (`apply` changes the state only when the value is good, and
/// otherwise says why not) and shown.
struct Knob<State>: Sendable {
    let key: String
    let values: String
    let defaultValue: String
    let help: String
    let apply: @Sendable (inout State, String) -> String?
    let show: @Sendable (State) -> String

    /// The tree file's name for it: the filter's prefix and the key (`ErrorRate`).
    func settingName(prefix: String) -> String { prefix + key.prefix(1).uppercased() + key.dropFirst() }
}

/// A fault filter's state behind one lock (its settings and its counters), and
/// the settings file that shows and changes it: `cat` shows `key value` lines,
/// the knobs first, then the counters; writing `key value` sets one knob.
final class FaultSettings<State: Sendable>: DeviceSettings, @unchecked Sendable {
    let fileName: String
    let knobs: [Knob<State>]
    let counters: @Sendable (State) -> String
    let state: HandoffMutex<State>

    /// The state made from `initial` and the tree file's settings in `parameters`
    /// (STATUS_INVALID_PARAMETER for a value a knob refuses: the tree file's check
    /// refuses it before, so only another host can get here with one).
    init(fileName: String, prefix: String, knobs: [Knob<State>], initial: State, parameters: [String: String],
         counters: @escaping @Sendable (State) -> String) throws(NTStatus) {
        var s = initial
        for knob in knobs {
            let text = parameters[knob.settingName(prefix: prefix)] ?? knob.defaultValue
            if knob.apply(&s, text) != nil { throw NTStatus.invalidParameter }
        }
        self.fileName = fileName
        self.knobs = knobs
        self.counters = counters
        self.state = HandoffMutex(s)
    }

    func text() -> String {
        state.withLock { s in knobs.map { k in [k.key, k.show(s)].filter { !$0.isEmpty }.joined(separator: " ") + "\n" }.joined() + counters(s) }
    }

    func apply(_ line: String) -> String? {
        let words = line.split(separator: " ", maxSplits: 1).map { $0.trimmingCharacters(in: " \t\r") }
        guard let key = words.first, !key.isEmpty else { return nil }
        guard let knob = knobs.first(where: { $0.key == key }) else {
            return "unknown key `\(key)`: the keys are " + knobs.map(\.key).joined(separator: ", ")
        }
        let value = words.count > 1 ? words[1] : ""
        return state.withLock { knob.apply(&$0, value) }.map { "\(key) \($0), not `\(value)`" }
    }

    /// The tree file's settings of a filter with these knobs.
    static func settings(prefix: String, knobs: [Knob<State>], initial: State) -> [DriverSetting] {
        knobs.map { knob in
            DriverSetting.checked(knob.settingName(prefix: prefix), values: knob.values, default: knob.defaultValue, help: knob.help) { text in
                var s = initial
                return knob.apply(&s, text)
            }
        }
    }
}

extension FaultSettings {
    /// A fault filter's DriverEntry: AddDevice reads the settings from the node's
    /// parameters, makes the filter device with the extension `makeExtension` builds
    /// from them, and publishes the settings file; `all` serves every major function
    /// (`read`, if given, reads), PnP and power go as a filter's.
    static func driverEntry(fileName: String, prefix: String, knobs: [Knob<State>], initial: State,
                            counters: @escaping @Sendable (State) -> String,
                            extension makeExtension: @escaping @Sendable (FaultSettings<State>) -> AnyObject = { $0 },
                            all: @escaping DispatchRoutine = passDown, read: DispatchRoutine? = nil) -> DriverEntry {
        { driver in
            driver.addDevice = { driver, pdo in
                do throws(NTStatus) {
                    let settings = try FaultSettings<State>(fileName: fileName, prefix: prefix, knobs: knobs, initial: initial,
                                                            parameters: pdo.deviceNode?.parameters ?? [:], counters: counters)
                    driver.createFilterDevice(for: pdo, extension: makeExtension(settings)).publish(settings)
                    return .success
                } catch {
                    return error
                }
            }
            driver.majorFunction.setAll(all)
            if let read { driver.majorFunction[.read] = read }
            driver.majorFunction[.pnp] = PnP.filterDispatch
            driver.majorFunction[.power] = Power.filterDispatch
            return .success
        }
    }
}

/// IoSkipCurrentIrpStackLocation and IoCallDriver: what a filter does with what it leaves alone.
let passDown: DispatchRoutine = { device, irp in
    irp.skipCurrentStackLocation()
    return device.callLower(irp)
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var s = self
        while let c = s.first, set.contains(c) { s.removeFirst() }
        while let c = s.last, set.contains(c) { s.removeLast() }
        return String(s)
    }
}

// MARK: - Values

/// The major functions a filter acts on, as a bit set (one test per request).
struct Majors: Sendable, Equatable {
    var bits: UInt64

    static let names: [(String, MajorFunction)] = [
        // Not CLEANUP and CLOSE: a handle closes whatever a driver says.
        ("create", .create), ("read", .read), ("write", .write),
        ("query_information", .queryInformation), ("set_information", .setInformation),
        ("flush", .flushBuffers), ("ioctl", .deviceControl), ("internal_ioctl", .internalDeviceControl),
    ]

    func contains(_ m: MajorFunction) -> Bool { bits & (1 << UInt64(m.rawValue)) != 0 }

    /// `read,write`; `all` for every one above; `none` for none.
    static func parse(_ text: String) -> Result<Majors, Refusal> {
        var bits: UInt64 = 0
        for word in text.split(separator: ",").map({ $0.trimmingCharacters(in: " ") }) where !word.isEmpty {
            if word == "all" {
                for (_, m) in names { bits |= 1 << UInt64(m.rawValue) }
            } else if word != "none" {
                guard let m = names.first(where: { $0.0 == word })?.1 else {
                    return .failure(Refusal("must be major functions from " + names.map(\.0).joined(separator: ", ") + " (comma-separated), all or none"))
                }
                bits |= 1 << UInt64(m.rawValue)
            }
        }
        return .success(Majors(bits: bits))
    }

    var text: String {
        let words = Self.names.filter { contains($0.1) }.map(\.0)
        return words.isEmpty ? "none" : words.joined(separator: ",")
    }
}

/// Byte ranges: `OFFSET+LENGTH`, comma-separated, with K, M or G (KiB, MiB, GiB).
struct ByteRanges: Sendable, Equatable {
    var ranges: [Range<Int64>]

    /// Whether [offset, offset + length) meets one of the ranges (always, with none).
    func meets(_ offset: Int64, _ length: Int) -> Bool {
        if ranges.isEmpty { return true }
        let r = offset..<(offset + Int64(max(length, 1)))
        return ranges.contains { $0.overlaps(r) }
    }

    /// `all` (or nothing) for every offset.
    static func parse(_ text: String) -> Result<ByteRanges, Refusal> {
        var out: [Range<Int64>] = []
        if text == "all" { return .success(ByteRanges(ranges: [])) }
        for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: " ") }) where !item.isEmpty {
            let parts = item.split(separator: "+", omittingEmptySubsequences: false)
            guard parts.count == 2, let start = byteCount(String(parts[0])), let length = byteCount(String(parts[1])), length > 0,
                  start <= Int64.max - length
            else { return .failure(Refusal("must be byte ranges OFFSET+LENGTH (bytes, or with K, M or G: 1M+4K), comma-separated, or all")) }
            out.append(start..<(start + length))
        }
        return .success(ByteRanges(ranges: out))
    }

    var text: String {
        ranges.isEmpty ? "all" : ranges.map { "\($0.lowerBound)+\($0.upperBound - $0.lowerBound)" }.joined(separator: ",")
    }
}

/// `4096`, `4K`, `1M`, `2G`: a byte count, or nil.
func byteCount(_ text: String) -> Int64? {
    var t = Substring(text)
    var shift: Int64 = 0
    switch t.last {
    case "K", "k": shift = 10
    case "M", "m": shift = 20
    case "G", "g": shift = 30
    default: break
    }
    if shift > 0 { t = t.dropLast() }
    guard !t.isEmpty, t.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let v = Int64(t), v <= Int64.max >> shift else { return nil }
    return v << shift
}

/// An error NTSTATUS by its name (`STATUS_CRC_ERROR`) or in hex (`0xC000003F`).
func errorStatus(_ text: String) -> Result<NTStatus, Refusal> {
    var status: NTStatus?
    if let named = NTStatus.knownNames.first(where: { $0.1 == text }) { status = named.0 }
    if text.hasPrefix("0x") || text.hasPrefix("0X"), let v = UInt32(text.dropFirst(2), radix: 16) { status = NTStatus(v) }
    guard let status else { return .failure(Refusal("must be an error NTSTATUS, by name (STATUS_DEVICE_DATA_ERROR) or in hex (0xC000009C)")) }
    guard status.isError else { return .failure(Refusal("must be an error status (\(status) is not one)")) }
    return .success(status)
}

/// A probability: a decimal from 0 to 1 (`0.01`).
func probability(_ text: String) -> Result<Double, Refusal> {
    guard let p = Double(text), p >= 0, p <= 1, text.allSatisfy({ $0.isNumber || $0 == "." }) else {
        return .failure(Refusal("must be a decimal from 0 to 1"))
    }
    return .success(p)
}

/// An integer in `range`.
func integer(_ text: String, _ range: ClosedRange<Int>) -> Result<Int, Refusal> {
    guard let v = Int(text), range.contains(v) else { return .failure(Refusal("must be an integer from \(range.lowerBound) to \(range.upperBound)")) }
    return .success(v)
}

/// A seed: an unsigned decimal integer.
func seed(_ text: String) -> Result<UInt64, Refusal> {
    guard let v = UInt64(text) else { return .failure(Refusal("must be an unsigned integer")) }
    return .success(v)
}

/// Why a value was refused.
struct Refusal: Error {
    let why: String
    init(_ why: String) { self.why = why }
}

extension Result where Failure == Refusal {
    /// Stores the value with `set` and returns nil, or returns why not.
    func store(_ set: (Success) -> Void) -> String? {
        switch self {
        case .success(let v):
            set(v)
            return nil
        case .failure(let refusal):
            return refusal.why
        }
    }
}

extension IRP {
    /// The byte range of a read or write: (offset, length); nil for other majors.
    var byteRange: (offset: Int64, length: Int)? {
        switch majorFunction {
        case .read, .write:
            let p = parameters.read
            return (p.byteOffset, p.length)
        default:
            return nil
        }
    }
}
