// Delayer: holds a request in a filter until a time, then passes it down. The
// request is pending meanwhile, in a cancel-safe queue, so a cancel (a signal to
// the caller, a close) completes it with STATUS_CANCELLED at once; the timer
// then finds nothing to pass. The delay and rate filters use it.

import Dispatch
import WDM

final class Delayer: Sendable {
    let queue = CancelSafeQueue()

    /// Marks `irp` pending and passes it to the device below `device` at `deadline`
    /// (or completes it with STATUS_CANCELLED if it is cancelled first). Returns
    /// STATUS_PENDING, which the dispatch routine returns.
    func pass(_ irp: IRP, below device: DeviceObject, at deadline: DispatchTime) -> NTStatus {
        let status = queue.insert(irp)
        Self.timers.asyncAfter(deadline: deadline) { [queue] in
            // Nil: cancelled while it waited (the queue completed it).
            guard let irp = queue.removeNext(where: { $0 == irp }) else { return }
            irp.copyCurrentStackLocationToNext()
            _ = device.callLower(irp)
        }
        return status
    }

    /// Where the waits end: a queue of the filters' own (it gets a thread even while
    /// the global pool's are all blocked), concurrent, so one lower driver that takes
    /// its time does not hold up the others.
    static let timers = DispatchQueue(label: "wdmfs.fault-filters.delay", attributes: .concurrent)

    /// The requests waiting now.
    var waiting: Int { queue.count }
}

/// Nanoseconds on the monotonic clock.
func monotonicNanoseconds() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
