// CorruptFilter: flips bits in the data reads return, as nbdkit's evil filter
// does, to test software that checksums what it reads. Whether the byte at an
// offset is hit, and which bit, follows from `seed` and the offset alone (each
// 4 KiB block draws from its own generator), so the same seed corrupts the same
// bytes whatever the sizes and order of the reads: a failure reproduces. The
// data is changed where the lower driver put it, in the caller's memory.

import Glibc
import WDM

public enum CorruptFilter {
    public static let name = "CorruptFilter"

    struct State: Sendable {
        var rate = 0.0
        var seed: UInt64 = 0
        var flipped = 0
    }

    static let knobs: [Knob<State>] = [
        Knob(key: "rate", values: "a decimal from 0 to 1", defaultValue: "0.001",
             help: "the chance that a byte read has one bit flipped", apply: { s, t in probability(t).store { s.rate = $0 } }, show: { "\($0.rate)" }),
        Knob(key: "seed", values: "an unsigned integer", defaultValue: "0", help: "which bytes and bits: the same seed flips the same ones",
             apply: { s, t in seed(t).store { s.seed = $0 } }, show: { "\($0.seed)" }),
    ]

    /// The tree file's settings (`CorruptRate`, `CorruptSeed`).
    public static let settings = FaultSettings<State>.settings(prefix: "Corrupt", knobs: knobs, initial: State())

    static let block: Int64 = 4096

    /// Flips the bits `seed` and `rate` choose in `buffer`, which holds the bytes
    /// of the disk from `offset`; returns how many it flipped.
    static func corrupt(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int64, rate: Double, seed: UInt64) -> Int {
        guard rate > 0, !buffer.isEmpty, offset >= 0 else { return 0 }
        let end = offset + Int64(buffer.count)
        var flips = 0
        var b = offset / block
        let logMiss = log(1 - min(rate, 0.999_999_999))
        while b * block < end {
            var random = SeededRandom(seed: seed ^ (UInt64(b) &* 0xD1B5_4A32_D192_ED03))
            var pos = b * block - 1
            let blockEnd = min((b + 1) * block, end)
            while true {
                // The distance to the next byte hit: geometric, one draw per hit.
                let gap = rate >= 1 ? 1.0 : (log(1 - random.unit()) / logMiss).rounded(.down) + 1
                guard gap < Double(block) else { break }
                pos += Int64(gap)
                guard pos < blockEnd else { break }
                let bit = random.next() & 7
                if pos >= offset {
                    buffer[Int(pos - offset)] ^= UInt8(1) << bit
                    flips += 1
                }
            }
            b += 1
        }
        return flips
    }

    static let corruptRead: CompletionRoutine = { _, irp, context in
        if irp.pendingReturned { irp.markPending() }
        let status = irp.ioStatus
        guard status.status.isSuccess, status.information > 0, let settings = context as? FaultSettings<State> else { return .success }
        let (rate, seed) = settings.state.withLock { ($0.rate, $0.seed) }
        let data = UnsafeMutableRawBufferPointer(rebasing: irp.transferBuffer.prefix(status.information))
        let n = corrupt(data, at: irp.parameters.read.byteOffset, rate: rate, seed: seed)
        if n > 0 { settings.state.withLock { $0.flipped += n } }
        return .success
    }

    /// `DriverEntry`
    public static let driverEntry = FaultSettings<State>.driverEntry(
        fileName: "corrupt", prefix: "Corrupt", knobs: knobs, initial: State(), counters: { "flipped \($0.flipped)\n" },
        read: { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine(corruptRead, context: device.deviceExtension, invokeOnError: false, invokeOnCancel: false)
            return device.callLower(irp)
        })
}
