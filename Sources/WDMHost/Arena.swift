// The memory a daemon and one driver host share (a memfd both map): a control
// page, two rings and a heap.
//
//   0        control: each ring's head and tail, and the doorbell flags, a cache line each
//   4 KiB    requests, daemon to host: 1024 entries of 64 bytes (RequestHeader)
//   68 KiB   answers, host to daemon: 1024 entries of 32 bytes (ReplyHeader)
//   1 MiB    the heap: the device's read buffers, the I/O manager's copies of
//            pended writes' and IOCTLs' buffers, scratch blocks; the daemon
//            gives them out (ArenaMemory) and names them to the host by offset
//
// Each ring has one producer process and one consumer process; threads of one
// process take turns under a lock of that process, so no lock lives in the
// shared memory (a host that dies holding it would stop the daemon). A side
// that finds its ring empty spins for a while, then says it sleeps (a flag) and
// waits on its eventfd and the socket; the other side rings the eventfd only
// when the flag says so, so a busy pair makes no system call per request. The
// daemon trusts nothing the host writes: an answer's id must name a request in
// flight, and indices that do not make sense end the host.

import CWDMSys
import Glibc
import Synchronization
import WDM

final class Arena: @unchecked Sendable {
    static let size = 1 << 30
    static let entries: UInt64 = 1024
    static let requestRing = 4096
    static let replyRing = requestRing + Int(entries) * RequestHeader.size
    static let replyEntry = 32
    static let heap = 1 << 20

    let fd: Int32
    let base: UnsafeMutableRawPointer

    /// Maps the memory `fd` holds (the daemon's new memfd, or the one the host was sent).
    init?(fd: Int32) {
        guard let p = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        self.fd = fd
        base = p
    }

    /// New shared memory, for the daemon's side.
    static func create() -> Arena? {
        let fd = cwdmsys_memfd("wdmfs-driver-host", UInt(size))
        guard fd >= 0 else { return nil }
        guard let a = Arena(fd: fd) else {
            close(fd)
            return nil
        }
        return a
    }

    deinit {
        munmap(base, Self.size)
        close(fd)
    }

    private func word<T: AtomicRepresentable>(_ offset: Int, _: T.Type) -> UnsafeMutablePointer<Atomic<T>> {
        (base + offset).assumingMemoryBound(to: Atomic<T>.self)
    }
    var requestHead: UnsafeMutablePointer<Atomic<UInt64>> { word(64, UInt64.self) }
    var requestTail: UnsafeMutablePointer<Atomic<UInt64>> { word(128, UInt64.self) }
    var hostSleeping: UnsafeMutablePointer<Atomic<UInt32>> { word(192, UInt32.self) }
    var replyHead: UnsafeMutablePointer<Atomic<UInt64>> { word(256, UInt64.self) }
    var replyTail: UnsafeMutablePointer<Atomic<UInt64>> { word(320, UInt64.self) }
    var daemonSleeping: UnsafeMutablePointer<Atomic<UInt32>> { word(384, UInt32.self) }
    /// Daemon threads spinning on the answers (a caller waiting for its own).
    var daemonWatching: UnsafeMutablePointer<Atomic<UInt32>> { word(448, UInt32.self) }

    /// Before a host starts: empty rings, nobody asleep.
    /// (`daemonWatching` stays: a caller of the old host may still be counted in it.)
    func reset() {
        for w in [requestHead, requestTail, replyHead, replyTail] { w.pointee.store(0, ordering: .sequentiallyConsistent) }
        for w in [hostSleeping, daemonSleeping] { w.pointee.store(0, ordering: .sequentiallyConsistent) }
    }

    /// Whether `offset ..< offset + count` is heap.
    func isHeap(_ offset: UInt64, _ count: Int) -> Bool {
        offset >= UInt64(Self.heap) && count >= 0 && offset <= UInt64(Self.size - count)
    }

    /// The offset of `p ..< p + count` if it lies in the heap.
    func offset(of p: UnsafeRawPointer?, count: Int) -> UInt64? {
        guard let p else { return nil }
        let d = p - UnsafeRawPointer(base)
        return d >= 0 && isHeap(UInt64(d), count) ? UInt64(d) : nil
    }

    // MARK: - The rings

    enum Pushed { case done, full, broken }

    /// Puts one request in its ring (the caller holds the daemon's producer lock).
    /// The host writes the head: one that is ahead of the tail, or more than a ring
    /// behind, is a broken host.
    func pushRequest(_ h: RequestHeader) -> Pushed {
        let tail = requestTail.pointee.load(ordering: .relaxed)
        let used = tail &- requestHead.pointee.load(ordering: .acquiring)
        guard used <= Self.entries else { return .broken }
        guard used < Self.entries else { return .full }
        h.encode(into: base + Self.requestRing + Int(tail % Self.entries) * RequestHeader.size)
        requestTail.pointee.store(tail &+ 1, ordering: .sequentiallyConsistent)
        return .done
    }

    /// Takes the next request (the host's one reader), nil when there is none.
    func popRequest() -> RequestHeader?? {
        let head = requestHead.pointee.load(ordering: .relaxed)
        guard head != requestTail.pointee.load(ordering: .acquiring) else { return .none }
        let h = RequestHeader.decode(base + Self.requestRing + Int(head % Self.entries) * RequestHeader.size)
        requestHead.pointee.store(head &+ 1, ordering: .sequentiallyConsistent)
        return .some(h)
    }

    var hasRequest: Bool {
        requestHead.pointee.load(ordering: .relaxed) != requestTail.pointee.load(ordering: .sequentiallyConsistent)
    }

    /// Puts one answer in its ring (the caller holds the host's producer lock).
    func pushReply(_ r: ReplyHeader) -> Bool {
        let tail = replyTail.pointee.load(ordering: .relaxed)
        guard tail &- replyHead.pointee.load(ordering: .acquiring) < Self.entries else { return false }
        r.encode(into: base + Self.replyRing + Int(tail % Self.entries) * Self.replyEntry)
        replyTail.pointee.store(tail &+ 1, ordering: .sequentiallyConsistent)
        return true
    }

    enum Next { case none, reply(ReplyHeader), broken }

    /// Takes the next answer (the caller holds the daemon's consumer lock). The
    /// host writes the tail: one more than a ring's worth ahead is a broken host.
    func popReply() -> Next {
        let head = replyHead.pointee.load(ordering: .relaxed)
        let tail = replyTail.pointee.load(ordering: .acquiring)
        guard head != tail else { return .none }
        guard tail &- head <= Self.entries else { return .broken }
        let r = ReplyHeader.decode(base + Self.replyRing + Int(head % Self.entries) * Self.replyEntry)
        replyHead.pointee.store(head &+ 1, ordering: .sequentiallyConsistent)
        return .reply(r)
    }

    var hasReply: Bool {
        replyHead.pointee.load(ordering: .relaxed) != replyTail.pointee.load(ordering: .sequentiallyConsistent)
    }
}

/// The heap of an arena, given out by the daemon (the stack's `StackMemory`):
/// blocks of 4 KiB << k, kept on free lists once given back.
final class ArenaMemory: StackMemory, @unchecked Sendable {
    let arena: Arena
    static let classes = 13  // up to 16 MiB
    private let state = Mutex<(free: [[Int]], next: Int)>((Array(repeating: [], count: classes), Arena.heap))

    init(arena: Arena) { self.arena = arena }

    func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer? {
        var k = 0
        while (4096 << k) < byteCount { k += 1 }
        guard k < Self.classes else { return nil }
        let size = 4096 << k
        let got = state.withLock { s -> (Int, Bool)? in
            if let o = s.free[k].popLast() { return (o, true) }
            guard s.next <= Arena.size - size else { return nil }
            defer { s.next += size }
            return (s.next, false)
        }
        guard let (offset, used) = got else { return nil }
        let p = arena.base + offset
        // New pages of a memfd are zero; a block given back holds what it held.
        if used, zeroed { p.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount) }
        return p
    }

    func deallocate(_ block: UnsafeMutableRawPointer, byteCount: Int) {
        var k = 0
        while (4096 << k) < byteCount { k += 1 }
        let offset = block - arena.base
        state.withLock { $0.free[k].append(offset) }
    }

    func owns(_ block: UnsafeRawPointer) -> Bool {
        let d = block - UnsafeRawPointer(arena.base)
        return d >= 0 && d < Arena.size
    }
}

/// An eventfd (nonblocking: a bell the other process filled up, or emptied first,
/// never blocks this one): one side rings it, the other waits on it, with the
/// socket, whose end of file says the other process is gone. A class: whoever
/// rings it holds it, so its descriptor is closed only when nobody can ring it.
final class Doorbell: @unchecked Sendable {
    let fd: Int32

    init(fd: Int32) { self.fd = fd }
    deinit { if fd >= 0 { close(fd) } }

    /// A new eventfd, or nil.
    static func make() -> Doorbell? {
        let fd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        return fd < 0 ? nil : Doorbell(fd: fd)
    }

    func ring() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)  // EAGAIN: it is rung already
    }

    /// Waits until the bell rang (and clears it) or `socket` reads end of file;
    /// false for the latter.
    func wait(orEndOf socket: Int32) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: socket, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, -1)
            if n < 0, errno == EINTR { continue }
            if n < 0 { return false }
            if fds[1].revents != 0 {
                // Nothing but end of file comes on the socket after START.
                var b: UInt8 = 0
                let r = read(socket, &b, 1)
                if r <= 0 { return false }
            }
            if fds[0].revents != 0 {
                var v: UInt64 = 0
                _ = read(fd, &v, 8)
            }
            return true
        }
    }
}

/// Monotonic time in nanoseconds (the spins' deadlines).
@inline(__always) func nanoseconds() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
}
