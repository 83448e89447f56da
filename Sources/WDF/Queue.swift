// Queue: the framework's WDFQUEUE. Requests wait in it (cancel-safe: a request
// cancelled while it waits is completed by the framework with
// STATUS_CANCELLED) until the queue presents them to its handler: one at a time
// (sequential), several at once up to a limit (parallel), or never (manual: the
// driver takes them with `next()`). A power-managed queue presents only while
// its device is in D0; every queue stops between QUERY_STOP and START. At
// surprise removal the framework purges the device's queues, at REMOVE_DEVICE
// it drains them.

import Synchronization
import WDM

/// A queue of requests of one device.
public final class Queue: FrameworkObject, @unchecked Sendable {
    /// `WdfIoQueueDispatchSequential`, `...Parallel` (with `limit`: at most that
    /// many presented at once, KMDF's NumberOfPresentedRequests), `...Manual`.
    public enum Dispatch: Sendable, Equatable {
        case sequential
        case parallel(limit: Int? = nil)
        case manual
    }

    public let dispatch: Dispatch
    /// Presents only while the device is in D0 (KMDF's PowerManaged, the default).
    public let powerManaged: Bool
    let handler: (@Sendable (consuming Request) -> Void)?
    /// The presenter token of a request presented inline (in the dispatch routine
    /// that received it): that call presents what waits once its handler returned.
    static let inline = UInt64.max
    private let limit: Int

    private struct State {
        var inFlight = 0
        /// Why it does not present: `power` (not in D0), `pnp` (between QUERY_STOP and START).
        var stoppedFor: UInt8 = 0
        var accepting = true
        var refusal = NTStatus.invalidDeviceState
        /// The presenting calls still running (their requests complete without presenting more: the call will).
        var active: [UInt64] = []
        var nextToken: UInt64 = 1
        var waiters: [(idleOnly: Bool, event: Event)] = []
        /// Deleted with its device: it refuses every request from then on (its handler
        /// must not run: it reaches the device, which is gone).
        var deleted = false
    }
    private let state = HandoffMutex(State())  // (a Mutex whose handoffs ThreadSanitizer sees)
    /// Set once in init (it calls back into the queue, so after super.init), then only read.
    @exclusivity(unchecked) private var waiting: CancelSafeQueue!

    static let power: UInt8 = 1, pnp: UInt8 = 2

    init(parent: FrameworkObject, dispatch: Dispatch, powerManaged: Bool, startsStopped: Bool,
         handler: (@Sendable (consuming Request) -> Void)?) {
        self.dispatch = dispatch
        self.powerManaged = powerManaged
        self.handler = handler
        switch dispatch {
        case .sequential: limit = 1
        case .parallel(let l): limit = max(1, l ?? Int.max)
        case .manual: limit = Int.max
        }
        super.init(parent: parent)
        if startsStopped { state.withLock { $0.stoppedFor = powerManaged ? Queue.power : 0 } }
        waiting = CancelSafeQueue(onCancelled: { [unowned self] in changed() })
    }

    /// Requests waiting in the queue (not presented).
    public var count: Int { waiting.count }
    /// Requests presented (or taken from a manual queue) and not finished yet.
    public var inFlight: Int { state.withLock { $0.inFlight } }

    // MARK: - In

    /// A request the framework dispatches (or a driver forwards) to the queue.
    /// `inline` (the dispatch routine that received it calls): if the queue would
    /// present it at once (nothing waits, a slot is free, not stopped), it is
    /// presented here, and the status the handler completed it with is returned
    /// (STATUS_PENDING if the handler kept it). Otherwise it waits, pending, and
    /// the dispatch routine returns STATUS_PENDING.
    @discardableResult
    func enqueue(_ irp: IRP, inline: Bool = false) -> NTStatus {
        if inline, let handler {
            let now = state.withLock { s -> Bool in
                guard s.accepting, s.stoppedFor == 0, s.inFlight < limit, waiting.isEmpty else { return false }
                s.inFlight += 1
                return true
            }
            if now {
                var outcome = NTStatus.pending
                withUnsafeMutablePointer(to: &outcome) { slot in
                    handler(Request(inline: irp, queue: self, presenter: Queue.inline, outcome: slot))
                }
                // Requests that came while it ran wait for this call to present them.
                if !waiting.isEmpty { present() }
                return outcome
            }
        }
        let (accepting, refusal) = state.withLock { ($0.accepting, $0.refusal) }
        guard accepting else {
            irp.complete(refusal)
            return refusal
        }
        _ = waiting.insert(irp)
        // A purge that ran between the check and the insert did not see it.
        if !state.withLock({ $0.accepting }) { completeWaiting(state.withLock { $0.refusal }) }
        present()
        return .pending
    }

    /// `WdfIoQueueRetrieveNextRequest` (manual queues, or any queue the driver
    /// drains itself): the oldest waiting request, or nil (none, or the queue is
    /// stopped).
    @_lifetime(immortal)
    public func next() -> Request? {
        let reserved = state.withLock { s -> Bool in
            guard s.stoppedFor == 0 else { return false }
            s.inFlight += 1
            return true
        }
        guard reserved else { return nil }
        guard let irp = waiting.removeNext() else {
            requestDone(0)
            return nil
        }
        return Request(irp, queue: self)
    }

    // MARK: - Presenting

    private func present() {
        guard let handler else { return }
        while true {
            let token: UInt64? = state.withLock { s in
                guard s.stoppedFor == 0, s.inFlight < limit else { return nil }
                s.inFlight += 1
                let t = s.nextToken
                s.nextToken += 1
                s.active.append(t)
                return t
            }
            guard let token else { return }
            guard let irp = waiting.removeNext() else {
                state.withLock { s in
                    s.inFlight -= 1
                    s.active.removeAll { $0 == token }
                }
                changed()
                // A request that came in after the look and before the slot went back: present it.
                if waiting.isEmpty { return } else { continue }
            }
            handler(Request(irp, queue: self, presenter: token))
            state.withLock { s in s.active.removeAll { $0 == token } }
        }
    }

    /// A presented request finished (completed, sent down for good, or moved to another queue).
    /// One lock: the count, whether a presenting call will present what waits,
    /// and (rarely) the stop or drain waiters this wakes.
    func requestDone(_ presenter: UInt64) {
        var ready: [Event] = []
        let presenting = state.withLock { s -> Bool in
            s.inFlight -= 1
            if s.inFlight == 0, !s.waiters.isEmpty { ready = Queue.takeReady(&s.waiters, empty: waiting.isEmpty) }
            return presenter == Queue.inline || (presenter != 0 && s.active.contains(presenter))
        }
        for e in ready { e.signal() }
        // Read after the slot went back: a request inserted before it either is seen
        // here or saw the slot free in its own present().
        if !presenting, !waiting.isEmpty { present() }
    }

    // MARK: - Stop, start, purge, drain

    func stop(_ reason: UInt8) { state.withLock { $0.stoppedFor |= reason } }

    func start(_ reason: UInt8) {
        state.withLock { $0.stoppedFor &= ~reason }
        present()
    }

    /// `WdfIoQueueStopSynchronously`'s wait: returns once no presented request is in flight.
    func waitUntilIdle() { wait(idleOnly: true) }

    /// `WdfIoQueuePurge`: refuses new requests with `status` from now on and
    /// completes the waiting ones with it (requests in flight are the driver's
    /// to finish). The framework purges with STATUS_CANCELLED, as KMDF does.
    public func purge(_ status: NTStatus = .cancelled) {
        state.withLock { s in
            s.accepting = false
            s.refusal = status
        }
        completeWaiting(status)
    }

    /// `WdfIoQueueDrain`: refuses new requests, presents what waits, and returns
    /// once every request has finished. A manual queue has nobody to present to:
    /// what waits in it is purged.
    public func drain() {
        state.withLock { s in
            s.accepting = false
            s.stoppedFor = 0
        }
        if handler == nil { completeWaiting(.cancelled) } else { present() }
        wait(idleOnly: false)
    }

    /// The framework's purge at surprise removal: STATUS_CANCELLED, unless the
    /// driver's surprise-removal callback purged the queue with a status of its own,
    /// which then stays what late requests are refused with.
    func purgeAtSurpriseRemoval() {
        let status = state.withLock { s -> NTStatus in
            if s.accepting {
                s.accepting = false
                s.refusal = .cancelled
            }
            return s.refusal
        }
        completeWaiting(status)
    }

    /// Resumes taking requests after a purge (`WdfIoQueueStart`); a deleted queue stays shut.
    public func resume() {
        state.withLock { s in if !s.deleted { s.accepting = true } }
        present()
    }

    private func completeWaiting(_ status: NTStatus) {
        waiting.completeAll(status)
        changed()
    }

    /// Completes the waiting requests opened through `file` (its handle is being
    /// cleaned up) with STATUS_CANCELLED.
    func cancel(for file: FileObject) {
        if waiting.cancelAll(for: file) > 0 { changed() }
    }

    private func wait(idleOnly: Bool) {
        let e = Event()
        let done = state.withLock { s -> Bool in
            if s.inFlight == 0, idleOnly || waiting.isEmpty { return true }
            s.waiters.append((idleOnly, e))
            return false
        }
        if !done { e.wait() }
    }

    /// Wakes the waiters whose condition now holds.
    private func changed() {
        let empty = waiting.isEmpty
        let ready = state.withLock { s -> [Event] in
            guard s.inFlight == 0, !s.waiters.isEmpty else { return [] }
            return Queue.takeReady(&s.waiters, empty: empty)
        }
        for e in ready { e.signal() }
    }

    private static func takeReady(_ waiters: inout [(idleOnly: Bool, event: Event)], empty: Bool) -> [Event] {
        var out: [Event] = []
        waiters.removeAll { w in
            guard w.idleOnly || empty else { return false }
            out.append(w.event)
            return true
        }
        return out
    }

    override func willDelete() {
        state.withLock { s in
            s.deleted = true
            s.accepting = false
            s.refusal = .invalidDeviceState
        }
        completeWaiting(.cancelled)
    }
}
