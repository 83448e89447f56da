// Driver Verifier's stress options, each seeded so that a failure can be
// reproduced: forced pending (a verified driver's call down returns
// STATUS_PENDING, and the driver below runs later on another thread, as if it
// had pended: a completion routine that does not propagate the pending mark is
// caught, 0x228), low resources (IRP and pool allocations fail with
// STATUS_INSUFFICIENT_RESOURCES at a rate), IRP logging (the last N IRPs of each
// device, in its node's `irp_log`) and a deadline for user IRPs (one not
// completed within it is reported, and can still be cancelled).

import Dispatch
import Synchronization

extension Verifier {
    public struct Stress: Sendable, Equatable, CustomStringConvertible {
        /// The chance a verified driver's call down is forced to pend (0: never).
        public var pending = 0.0
        /// The chance an IRP or pool allocation fails.
        public var lowResources = 0.0
        /// How many IRPs each device's log keeps (0: no log).
        public var irpLog = 0
        /// Seconds a user IRP may take before it is reported (0: no deadline).
        public var deadline = 0.0
        /// Seeds the draws of `pending` and `lowResources`.
        public var seed: UInt64 = 0

        public init() {}

        public var isActive: Bool { pending > 0 || lowResources > 0 || irpLog > 0 || deadline > 0 }

        /// `pending=0.5 low-resources=0 irp-log=0 deadline=0 seed=7`, or `none`.
        public var description: String {
            guard isActive else { return "none" }
            return "pending=\(pending) low-resources=\(lowResources) irp-log=\(irpLog) deadline=\(deadline) seed=\(seed)"
        }

        /// `pending=0.5,irp-log=32,seed=7` (commas or spaces), or `none`: the options
        /// named change, the others keep their values in `base`.
        public static func parse(_ text: String, base: Stress = Stress()) -> Result<Stress, StressError> {
            if text == "none" { return .success(Stress()) }
            var s = base
            for item in text.split(whereSeparator: { $0 == "," || $0 == " " }) {
                let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { return .failure(StressError("`\(item)` is not OPTION=VALUE")) }
                let (key, value) = (parts[0], parts[1])
                func chance() -> Double? { Double(value).flatMap { (0...1).contains($0) ? $0 : nil } }
                switch key {
                case "pending":
                    guard let v = chance() else { return .failure(StressError("pending must be a decimal from 0 to 1, not `\(value)`")) }
                    s.pending = v
                case "low-resources":
                    guard let v = chance() else { return .failure(StressError("low-resources must be a decimal from 0 to 1, not `\(value)`")) }
                    s.lowResources = v
                case "irp-log":
                    guard let v = Int(value), (0...4096).contains(v) else { return .failure(StressError("irp-log must be an integer from 0 to 4096, not `\(value)`")) }
                    s.irpLog = v
                case "deadline":
                    guard let v = Double(value), (0...86400).contains(v) else { return .failure(StressError("deadline must be seconds from 0 to 86400, not `\(value)`")) }
                    s.deadline = v
                case "seed":
                    guard let v = UInt64(value) else { return .failure(StressError("seed must be an unsigned integer, not `\(value)`")) }
                    s.seed = v
                default:
                    return .failure(StressError("no stress option `\(key)`: pending, low-resources, irp-log, deadline, seed"))
                }
            }
            return .success(s)
        }
    }

    public struct StressError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The stress options now. Setting them restarts the draws from the seed.
    public var stress: Stress {
        get { stressState.withLock { $0.options } }
        set {
            stressState.withLock { s in
                s.options = newValue
                s.random = SeededRandom(seed: newValue.seed)
            }
            var bits: UInt8 = 0
            if newValue.pending > 0 { bits |= StressBits.pending }
            if newValue.lowResources > 0 { bits |= StressBits.lowResources }
            if newValue.irpLog > 0 { bits |= StressBits.irpLog }
            if newValue.deadline > 0 { bits |= StressBits.deadline }
            stressBits.store(bits, ordering: .releasing)
            onStressChange?(newValue)
        }
    }

    /// Draws against a chance, from the seeded stream.
    func draw(_ chance: KeyPath<Stress, Double>) -> Bool {
        stressState.withLock { s in s.random.unit() < s.options[keyPath: chance] }
    }
}

/// Which stress options are on: one load on the paths they touch.
enum StressBits {
    static let pending: UInt8 = 1, lowResources: UInt8 = 2, irpLog: UInt8 = 4, deadline: UInt8 = 8
}

/// SplitMix64: a small generator whose whole stream follows from its seed (the
/// stress options' draws, and the fault filters').
public struct SeededRandom: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A double in [0, 1).
    public mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

extension Verifier {
    /// Whether this allocation by `driver` is one the low-resources option fails.
    func simulatesLowResources(for driver: DriverObject) -> Bool {
        stressBits.load(ordering: .relaxed) & StressBits.lowResources != 0 && verifies(driver) && draw(\.lowResources)
    }
}

// MARK: - The IRP log

/// Keeps each device node's last N IRPs (IRP logging): installed while `irp-log` is on.
final class IRPLogger: IRPObserver, @unchecked Sendable {
    let start = DispatchTime.now().uptimeNanoseconds
    unowned let verifier: Verifier
    init(_ verifier: Verifier) { self.verifier = verifier }

    func completed(_ irp: IRP) {
        let p = irp.packet
        guard let node = p.targetDevice?.deviceNode else { return }
        let keep = verifier.stress.irpLog
        guard keep > 0 else { return }
        let top = p.locations[p.stackCount - 1]
        var line = IRPTracer.secondsText(DispatchTime.now().uptimeNanoseconds - start) + " " + IRPTracer.label(irp)
        switch top.majorFunction {
        case .read, .write: line += " offset=\(top.parameters.read.byteOffset) length=\(top.parameters.read.length)"
        case .deviceControl, .internalDeviceControl:
            line += " ioctl=0x" + String(top.parameters.deviceIoControl.ioControlCode.rawValue, radix: 16, uppercase: true).leftPadded(to: 8)
        default: break
        }
        line += " \(p.ioStatus.status) information=\(p.ioStatus.information)"
        node.irpLogLines.withLock { lines in
            lines.append(line)
            if lines.count > keep { lines.removeFirst(lines.count - keep) }
        }
    }
}
