// CancelSafeQueue: the IoCsq* pattern. A driver parks IRPs here and returns
// STATUS_PENDING; a cancel (IoCancelIrp, a FUSE interrupt, CLEANUP) removes and
// completes a parked IRP with STATUS_CANCELLED, and the queue hides the race
// between a cancel and the driver taking the IRP out.

import Synchronization

/// A cancel-safe IRP queue (`IO_CSQ`).
public final class CancelSafeQueue: @unchecked Sendable {
    private let items = HandoffMutex<[IRP]>([])
    /// How many are parked, written under the lock and read without it (`isEmpty`
    /// on a queue's fast path costs a load, not a lock).
    private let parked = Atomic<Int>(0)
    /// Runs after a cancel took an IRP out of the queue and completed it (a queue
    /// that waits to be empty hears of it here).
    let onCancelled: (@Sendable () -> Void)?

    public init(onCancelled: (@Sendable () -> Void)? = nil) {
        self.onCancelled = onCancelled
        items.withLock { $0.reserveCapacity(16) }
    }

    /// `IoCsqInsertIrp`: marks the IRP pending and parks it. If it was already
    /// cancelled it is completed with STATUS_CANCELLED instead. Either way the
    /// dispatch routine returns what this returns, STATUS_PENDING.
    public func insert(_ irp: IRP) -> NTStatus {
        irp.markPending()
        park(irp)
        return .pending
    }

    /// Parks an IRP without marking it pending (the I/O manager holds requests it
    /// has not dispatched yet, which have no current location to mark).
    func park(_ irp: IRP) {
        irp.driverContext = self
        let alreadyCancelled = items.withLock { list in
            guard irp.setCancelRoutineUnlessCancelled(CancelSafeQueue.cancelRoutine) else { return true }
            list.append(irp)
            parked.store(list.count, ordering: .sequentiallyConsistent)
            return false
        }
        if alreadyCancelled {
            irp.driverContext = nil
            irp.complete(.cancelled)
        }
    }

    /// `IoCsqRemoveNextIrp`: the oldest parked IRP that `matching` accepts and that
    /// is not being cancelled, now owned by the caller.
    public func removeNext(where matching: (IRP) -> Bool = { _ in true }) -> IRP? {
        if isEmpty { return nil }
        let irp: IRP? = items.withLock { list in
            var i = 0
            while i < list.count {
                let candidate = list[i]
                // A nil routine means IoCancelIrp took it: the cancel routine owns the IRP.
                if matching(candidate), candidate.setCancelRoutine(nil) != nil {
                    list.remove(at: i)
                    parked.store(list.count, ordering: .sequentiallyConsistent)
                    return candidate
                }
                i += 1
            }
            return nil
        }
        irp?.driverContext = nil
        return irp
    }

    /// Removes every parked IRP opened through `file` (for IRP_MJ_CLEANUP).
    public func removeAll(for file: FileObject) -> [IRP] {
        var out: [IRP] = []
        while let irp = removeNext(where: { $0.fileObject === file }) { out.append(irp) }
        return out
    }

    /// Completes every parked IRP of `file` with STATUS_CANCELLED; returns how many.
    @discardableResult
    public func cancelAll(for file: FileObject) -> Int {
        let irps = removeAll(for: file)
        for irp in irps { irp.complete(.cancelled) }
        return irps.count
    }

    /// Completes every parked IRP with `status` (a device going away); returns how many.
    @discardableResult
    public func completeAll(_ status: NTStatus) -> Int {
        var n = 0
        while let irp = removeNext() {
            irp.complete(status)
            n += 1
        }
        return n
    }

    /// How many IRPs are parked.
    public var count: Int { parked.load(ordering: .sequentiallyConsistent) }
    /// True when no IRP is parked.
    public var isEmpty: Bool { count == 0 }

    private static let cancelRoutine: CancelRoutine = { _, irp in
        let queue = unsafeDowncast(irp.driverContext!, to: CancelSafeQueue.self)
        let found = queue.items.withLock { list -> Bool in
            guard let i = list.firstIndex(where: { $0 == irp }) else { return false }
            list.remove(at: i)
            queue.parked.store(list.count, ordering: .sequentiallyConsistent)
            return true
        }
        if found {
            irp.driverContext = nil
            irp.complete(.cancelled)
            queue.onCancelled?()
        }
    }
}
