// PendingFuseRequest: one FUSE request on its way through the I/O manager: the
// reply obligation, what kind of reply it needs, and the IRP while it pends.
// It is the IRP's requester. Pooled (no allocation per request); a request
// whose IRP a driver never completes keeps its object, which is never reused.
//
// Who answers: exactly one of the completing thread, the interrupt timeout
// (EINTR after a signal, when the driver ignored the cancel) or the shutdown
// drain (ENODEV) claims the reply; the others find it claimed. A claim names
// the request it is for (the object's serial), so late interrupt or timeout
// work for an earlier request can never claim, or cancel the IRP of, the
// request the object serves now. An object whose reply was claimed by anyone
// but the completing thread is retired instead of reused when its IRP comes
// back: the claimer may still be answering from it.

import Dispatch
import Glibc
import Synchronization
import WDM

public final class PendingFuseRequest: IRPRequester, @unchecked Sendable {
    enum Kind: UInt8 { case read, write, ioctl, flush }

    unowned(unsafe) let bridge: FuseBridge
    @exclusivity(unchecked) var reply: FuseReply?
    /// The request the object serves (its serial, bumped for each new one) and
    /// whether its reply is claimed: serial << 2 | `answered` | `answeredElsewhere`.
    let ticket = Atomic<UInt64>(PendingFuseRequest.answered)
    static let answered: UInt64 = 1
    /// Claimed by the timeout or the shutdown drain, not by the completing thread.
    static let answeredElsewhere: UInt64 = 2
    @exclusivity(unchecked) var req: FuseRequestHandle = nil
    @exclusivity(unchecked) var kind = Kind.read
    /// A read's length, a write's length, an ioctl's output length.
    @exclusivity(unchecked) var size = 0
    /// A read's reply buffer, and the handle's buffers it came from.
    @exclusivity(unchecked) var buffer: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var pool: HandleReplyBuffers?
    /// For an ioctl: where the output starts in the data area.
    @exclusivity(unchecked) var outputOffset = 0
    /// For an ioctl: the envelope's data area in the FUSE request (what a request
    /// refused before any driver saw it is answered from).
    @exclusivity(unchecked) var envelopeData: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var nonBlocking = false
    @exclusivity(unchecked) var armed = false
    /// The IRP while it pends (for cancels), with the serial of the request it serves.
    let pendingIrp = HandoffMutex<(serial: UInt64, irp: IRP)?>(nil)
    /// In flight: handed to the I/O manager and not yet back.
    let busy = Atomic<Bool>(false)

    init(bridge: FuseBridge) { self.bridge = bridge }

    /// The serial of the request the object serves now.
    var serial: UInt64 { ticket.load(ordering: .acquiring) >> 2 }

    /// Starts serving `req`.
    @inline(__always)
    func begin(_ reply: consuming FuseReply, kind: Kind, size: Int, buffer: UnsafeMutableRawPointer? = nil, from pool: HandleReplyBuffers? = nil, nonBlocking: Bool = false) {
        self.req = reply.req
        self.reply = consume reply
        self.kind = kind
        self.size = size
        self.buffer = buffer
        self.pool = pool
        self.nonBlocking = nonBlocking
        self.armed = false
        self.outputOffset = 0
        self.envelopeData = nil
        busy.store(true, ordering: .relaxed)
        // Unanswered, same serial (`finish` moved it on).
        ticket.store(serial << 2, ordering: .releasing)
    }

    /// The reply of request `s`, for whoever answers it first; nil once answered
    /// (or if the object serves another request now).
    @inline(__always)
    func claim(serial s: UInt64, elsewhere: Bool) -> FuseReply? {
        let claimed = s << 2 | Self.answered | (elsewhere ? Self.answeredElsewhere : 0)
        guard ticket.compareExchange(expected: s << 2, desired: claimed, ordering: .acquiringAndReleasing).exchanged else { return nil }
        if armed { bridge.sink.disarmInterrupt(req) }
        return reply.take()
    }

    /// True while request `s` is unanswered.
    func isUnanswered(serial s: UInt64) -> Bool { ticket.load(ordering: .acquiring) == s << 2 }

    // MARK: - IRPRequester

    /// The IRP did not complete during dispatch: from now on a signal to the
    /// caller cancels it, and the caller is answered within a bounded time even if
    /// the driver ignores the cancel.
    public func irpPending(_ irp: IRP) {
        let s = serial
        pendingIrp.withLock { $0 = (s, irp) }
        armed = true
        bridge.sink.armInterrupt(req, self)
        if nonBlocking {
            // O_NONBLOCK: a request that would wait is called back at once; its
            // STATUS_CANCELLED becomes EAGAIN. (Data that won the race is still delivered.)
            irp.cancelIrp(reportingStale: false)
            scheduleTimeout(serial: s, nonBlocking: true)
        }
    }

    public func irpCompleted(_ irp: IRP) {
        if let reply = claim(serial: serial, elsewhere: false) {
            bridge.answer(reply, self, irp)
        }
        finish()
    }

    /// Back to the pool, or retired if someone else answered (and may still be at it).
    private func finish() {
        if kind == .read, let buffer { pool?.put(buffer, size: size) }
        buffer = nil
        pool = nil
        pendingIrp.withLock { $0 = nil }
        let w = ticket.load(ordering: .acquiring)
        // The next serial, answered until `begin`: late work for this request finds
        // another serial and does nothing.
        ticket.store(((w >> 2) &+ 1) << 2 | Self.answered, ordering: .releasing)
        busy.store(false, ordering: .releasing)
        if w & Self.answeredElsewhere != 0 {
            bridge.requests.retire(self)
        } else {
            bridge.requests.put(self)
        }
    }

    // MARK: - Interrupts and timeouts

    /// FUSE_INTERRUPT (called with libfuse's request lock held): cancel elsewhere.
    func interrupted() {
        let s = serial
        let nonBlocking = self.nonBlocking
        let bridge = self.bridge  // kept alive until the work is done (see scheduleTimeout)
        DispatchQueue.global().async { [self, bridge] in
            defer { withExtendedLifetime(bridge) {} }
            guard isUnanswered(serial: s) else { return }
            pendingIrp.withLock { $0?.serial == s ? $0?.irp : nil }?.cancelIrp(reportingStale: false)
            scheduleTimeout(serial: s, nonBlocking: nonBlocking)
        }
    }

    /// If request `s`'s IRP is still not completed `cancelGrace` seconds from now,
    /// the caller is answered anyway (EINTR, or EAGAIN for O_NONBLOCK) and the
    /// verifier reports the IRP. The driver keeps the IRP; its late completion answers nothing.
    private func scheduleTimeout(serial s: UInt64, nonBlocking: Bool) {
        let grace = bridge.cancelGrace
        // The work holds the bridge: `self.bridge` is unowned, and a host may drop
        // the bridge (a test's rig does) while a request a driver never completes
        // still waits for its timeout (AddressSanitizer found the use after free).
        let bridge = self.bridge
        DispatchQueue.global().asyncAfter(deadline: .now() + grace) { [self, bridge] in
            defer { withExtendedLifetime(bridge) {} }
            guard let reply = claim(serial: s, elsewhere: true) else { return }
            if let irp = pendingIrp.withLock({ $0?.serial == s ? $0?.irp : nil }) {
                bridge.io.verifier.report(.neverCompleted, irp: irp, detail: "not completed \(grace) s after IoCancelIrp; the caller was answered")
            }
            reply.error(nonBlocking ? EAGAIN : EINTR)
        }
    }

    /// At shutdown: answer a request the drivers never completed.
    func answerAtShutdown() {
        guard busy.load(ordering: .acquiring), let reply = claim(serial: serial, elsewhere: true) else { return }
        reply.error(ENODEV)
    }
}

/// The pool of request objects, and the list of all of them (for shutdown).
final class RequestPool: @unchecked Sendable {
    private let free = HandoffMutex<[PendingFuseRequest]>([])
    private let every = HandoffMutex<[PendingFuseRequest]>([])

    @inline(__always)
    func take(_ bridge: FuseBridge) -> PendingFuseRequest {
        if let r = free.withLock({ $0.popLast() }) { return r }
        let r = PendingFuseRequest(bridge: bridge)
        every.withLock { $0.append(r) }
        return r
    }

    @inline(__always)
    func put(_ r: PendingFuseRequest) { free.withLock { $0.append(r) } }

    /// Forgets an object for good (its reply was answered by a timeout or the
    /// shutdown drain, which may still hold it): the pool makes a new one instead.
    func retire(_ r: PendingFuseRequest) { every.withLock { $0.removeAll { $0 === r } } }

    var all: [PendingFuseRequest] { every.withLock { $0 } }

    /// Forgets every object (after the session ended).
    func clear() {
        free.withLock { $0.removeAll() }
        every.withLock { $0.removeAll() }
    }
}
