// PendingFuseRequest: one FUSE request on its way through the I/O manager: the
// reply obligation, what kind of reply it needs, and the IRP while it pends.
// It is the IRP's requester. Pooled (no allocation per request); a request
// whose IRP a driver never completes keeps its object, which is never reused.
//
// Who answers: exactly one of the completing thread, the interrupt timeout
// (EINTR after a signal, when the driver ignored the cancel) or the shutdown
// drain (ENODEV) claims the reply; the others find it claimed.

import Dispatch
import Glibc
import Synchronization
import WDM

public final class PendingFuseRequest: IRPRequester, @unchecked Sendable {
    enum Kind: UInt8 { case read, write, ioctl, flush }

    unowned(unsafe) let bridge: FuseBridge
    @exclusivity(unchecked) var reply: FuseReply?
    let claimed = Atomic<Bool>(true)
    @exclusivity(unchecked) var req: FuseRequestHandle = nil
    @exclusivity(unchecked) var kind = Kind.read
    /// A read's length, a write's length, an ioctl's output length.
    @exclusivity(unchecked) var size = 0
    /// A read's reply buffer (from the bridge's pool).
    @exclusivity(unchecked) var buffer: UnsafeMutableRawPointer?
    /// For an ioctl: where the output starts in the data area.
    @exclusivity(unchecked) var outputOffset = 0
    /// For an ioctl: the envelope's data area in the FUSE request (what a request
    /// refused before any driver saw it is answered from).
    @exclusivity(unchecked) var envelopeData: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var nonBlocking = false
    @exclusivity(unchecked) var armed = false
    /// The IRP, while it pends (for cancels).
    let pendingIrp = HandoffMutex<IRP?>(nil)
    /// Bumped each time the object serves a new request: late interrupt work for
    /// an earlier request finds a different serial and does nothing.
    let serial = Atomic<UInt64>(0)
    /// In flight: handed to the I/O manager and not yet back.
    let busy = Atomic<Bool>(false)

    init(bridge: FuseBridge) { self.bridge = bridge }

    /// Starts serving `req`.
    @inline(__always)
    func begin(_ reply: consuming FuseReply, kind: Kind, size: Int, buffer: UnsafeMutableRawPointer? = nil, nonBlocking: Bool = false) {
        self.req = reply.req
        self.reply = consume reply
        self.kind = kind
        self.size = size
        self.buffer = buffer
        self.nonBlocking = nonBlocking
        self.armed = false
        self.outputOffset = 0
        self.envelopeData = nil
        busy.store(true, ordering: .relaxed)
        claimed.store(false, ordering: .releasing)
    }

    /// The reply, for whoever answers first; nil once answered.
    @inline(__always)
    func claim() -> FuseReply? {
        guard !claimed.exchange(true, ordering: .acquiringAndReleasing) else { return nil }
        if armed { bridge.sink.disarmInterrupt(req) }
        return reply.take()
    }

    /// True while the request is unanswered.
    var isUnanswered: Bool { !claimed.load(ordering: .acquiring) }

    // MARK: - IRPRequester

    /// The IRP did not complete during dispatch: from now on a signal to the
    /// caller cancels it, and the caller is answered within a bounded time even if
    /// the driver ignores the cancel.
    public func irpPending(_ irp: IRP) {
        pendingIrp.withLock { $0 = irp }
        armed = true
        bridge.sink.armInterrupt(req, self)
        if nonBlocking {
            // O_NONBLOCK: a request that would wait is called back at once; its
            // STATUS_CANCELLED becomes EAGAIN. (Data that won the race is still delivered.)
            irp.cancelIrp(reportingStale: false)
            scheduleTimeout(serial: serial.load(ordering: .relaxed))
        }
    }

    public func irpCompleted(_ irp: IRP) {
        if let reply = claim() {
            bridge.answer(reply, self, irp)
        }
        finish()
    }

    /// Back to the pool.
    private func finish() {
        if kind == .read, let buffer { bridge.buffers.put(buffer, size: size) }
        buffer = nil
        pendingIrp.withLock { $0 = nil }
        serial.add(1, ordering: .relaxed)
        busy.store(false, ordering: .releasing)
        bridge.requests.put(self)
    }

    // MARK: - Interrupts and timeouts

    /// FUSE_INTERRUPT (called with libfuse's request lock held): cancel elsewhere.
    func interrupted() {
        let s = serial.load(ordering: .acquiring)
        DispatchQueue.global().async { [self] in
            guard serial.load(ordering: .acquiring) == s, isUnanswered else { return }
            pendingIrp.withLock { $0 }?.cancelIrp(reportingStale: false)
            scheduleTimeout(serial: s)
        }
    }

    /// If the IRP is still not completed `cancelGrace` seconds from now, the caller
    /// is answered anyway (EINTR, or EAGAIN for O_NONBLOCK) and the verifier
    /// reports the IRP. The driver keeps the IRP; its late completion answers nothing.
    private func scheduleTimeout(serial s: UInt64) {
        DispatchQueue.global().asyncAfter(deadline: .now() + bridge.cancelGrace) { [self] in
            guard serial.load(ordering: .acquiring) == s, let reply = claim() else { return }
            if let irp = pendingIrp.withLock({ $0 }) {
                bridge.io.verifier.report(.neverCompleted, irp: irp, detail: "not completed \(bridge.cancelGrace) s after IoCancelIrp; the caller was answered")
            }
            reply.error(nonBlocking ? EAGAIN : EINTR)
        }
    }

    /// At shutdown: answer a request the drivers never completed.
    func answerAtShutdown() {
        guard busy.load(ordering: .acquiring), let reply = claim() else { return }
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

    var all: [PendingFuseRequest] { every.withLock { $0 } }

    /// Forgets every object (after the session ended).
    func clear() {
        free.withLock { $0.removeAll() }
        every.withLock { $0.removeAll() }
    }
}
