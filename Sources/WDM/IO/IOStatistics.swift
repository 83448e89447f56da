// IOStatistics: counters the I/O manager keeps, shown to users through the
// mount's .stats file. bytesCopied is the zero-copy proof: every byte the I/O
// manager moves between buffers goes through `IOManager.copyBytes`, which counts it.

import Synchronization

/// A snapshot of the I/O manager's counters.
public struct IOStatistics: Sendable, Equatable {
    public var irpsSubmitted = 0
    public var irpsCompleted = 0
    public var irpsPended = 0
    public var irpsCancelled = 0
    public var bytesCopied = 0
    public var verifierViolations = 0

    /// `name value` lines, the format of the .stats file.
    public var text: String {
        """
        irps_submitted \(irpsSubmitted)
        irps_completed \(irpsCompleted)
        irps_pended \(irpsPended)
        irps_cancelled \(irpsCancelled)
        bytes_copied \(bytesCopied)
        verifier_violations \(verifierViolations)

        """
    }
}

final class IOCounters: Sendable {
    let submitted = Atomic<Int>(0)
    let completed = Atomic<Int>(0)
    let pended = Atomic<Int>(0)
    let cancelled = Atomic<Int>(0)
    let bytesCopied = Atomic<Int>(0)
}
