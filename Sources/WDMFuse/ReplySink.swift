// ReplySink: the one narrow place FUSE replies leave the bridge. The real sink
// calls libfuse; tests put a fake one in its place, so the mapping from
// NTSTATUS and request kind to replies is tested without a mount.
//
// FuseReply is the obligation to answer one request: a noncopyable value whose
// answering methods consume it, so answering twice does not compile, and whose
// deinit answers EIO (and logs) if a code path drops it unanswered.

import CFuse
import Dispatch
import Glibc

/// A FUSE request (fuse_req_t), as the sink sees it.
public typealias FuseRequestHandle = OpaquePointer?

/// Where replies go. Each method answers (or, for the interrupt ones, arms or
/// disarms) exactly the request it is given.
public protocol ReplySink: AnyObject, Sendable {
    func replyError(_ req: FuseRequestHandle, _ errno: Int32)
    func replyData(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int)
    func replyWrite(_ req: FuseRequestHandle, _ count: Int)
    func replyIoctl(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int)
    func replyOpen(_ req: FuseRequestHandle, _ fi: UnsafeMutablePointer<fuse_file_info>)
    func replyPoll(_ req: FuseRequestHandle, _ events: UInt32)
    func replyAttr(_ req: FuseRequestHandle, _ attr: UnsafePointer<stat>, timeout: Double)
    func replyEntry(_ req: FuseRequestHandle, _ entry: UnsafePointer<fuse_entry_param>)
    func replyLink(_ req: FuseRequestHandle, _ target: String)
    /// From now on a FUSE interrupt of `req` calls `request.interrupted()`.
    func armInterrupt(_ req: FuseRequestHandle, _ request: PendingFuseRequest)
    /// Stops interrupt callbacks for `req` (waits for one that is running). Before the reply.
    func disarmInterrupt(_ req: FuseRequestHandle)
    /// Wakes a poller.
    func notifyPoll(_ handle: OpaquePointer)
    func destroyPollHandle(_ handle: OpaquePointer)
    /// A reply that was dropped unanswered (answered EIO) is reported here.
    func dropped(_ req: FuseRequestHandle, _ what: String)
    /// Tells the kernel that `name` in directory `parent` changed (appeared or went
    /// away), and that the directory's listing did. Not called from inside a request
    /// on that directory.
    func invalidateEntry(parent: UInt64, name: String)
    /// Tells the kernel that an inode's attributes changed (a name that went away
    /// leaves its open inode with link count 0).
    func invalidateInode(_ ino: UInt64)
    /// Runs `work` once the notifications asked for so far have left (a cover
    /// mount must not land before the invalidation of its name, which detaches it).
    func afterNotifications(_ work: @escaping @Sendable () -> Void)
}

extension ReplySink {
    public func afterNotifications(_ work: @escaping @Sendable () -> Void) { work() }
}

/// The obligation to answer one FUSE request exactly once.
public struct FuseReply: ~Copyable {
    let req: FuseRequestHandle
    unowned(unsafe) let sink: any ReplySink

    init(_ req: FuseRequestHandle, _ sink: any ReplySink) {
        self.req = req
        self.sink = sink
    }

    public consuming func error(_ errno: Int32) {
        sink.replyError(req, errno)
        discard self
    }
    public consuming func data(_ p: UnsafeRawPointer?, _ count: Int) {
        sink.replyData(req, p, count)
        discard self
    }
    public consuming func written(_ count: Int) {
        sink.replyWrite(req, count)
        discard self
    }
    public consuming func ioctl(_ p: UnsafeRawPointer?, _ count: Int) {
        sink.replyIoctl(req, p, count)
        discard self
    }
    public consuming func open(_ fi: UnsafeMutablePointer<fuse_file_info>) {
        sink.replyOpen(req, fi)
        discard self
    }
    public consuming func poll(_ events: UInt32) {
        sink.replyPoll(req, events)
        discard self
    }
    public consuming func attr(_ st: UnsafePointer<stat>, timeout: Double) {
        sink.replyAttr(req, st, timeout: timeout)
        discard self
    }
    public consuming func entry(_ e: UnsafePointer<fuse_entry_param>) {
        sink.replyEntry(req, e)
        discard self
    }
    public consuming func link(_ target: String) {
        sink.replyLink(req, target)
        discard self
    }

    deinit {
        sink.dropped(req, "a reply was dropped unanswered")
        sink.replyError(req, EIO)
    }
}

/// The real sink: libfuse's reply calls.
final class LibfuseSink: ReplySink, @unchecked Sendable {
    let log: @Sendable (String) -> Void
    /// The session while mounted (for notifications).
    nonisolated(unsafe) var session: OpaquePointer?
    /// Notifications leave on their own thread, and nothing waits for them: the
    /// kernel holds a directory's lock while it waits for a lookup in it, and a
    /// notification about that directory waits for the lock.
    let notifications = DispatchQueue(label: "wdmfs.notify")
    /// Notifications queued or on their way.
    let inFlight = DispatchGroup()
    init(log: @escaping @Sendable (String) -> Void) { self.log = log }

    func invalidateEntry(parent: UInt64, name: String) {
        inFlight.enter()
        notifications.async { [self] in
            defer { inFlight.leave() }
            guard let se = session else { return }
            _ = name.withCString { fuse_lowlevel_notify_inval_entry(se, parent, $0, strlen($0)) }
            _ = fuse_lowlevel_notify_inval_inode(se, parent, 0, 0)
        }
    }

    func invalidateInode(_ ino: UInt64) {
        inFlight.enter()
        notifications.async { [self] in
            defer { inFlight.leave() }
            guard let se = session else { return }
            _ = fuse_lowlevel_notify_inval_inode(se, ino, -1, 0)  // attributes only
        }
    }

    func afterNotifications(_ work: @escaping @Sendable () -> Void) {
        inFlight.enter()
        notifications.async { [self] in
            defer { inFlight.leave() }
            work()
        }
    }

    /// Whether every notification has left within `seconds` (false: one is stuck in
    /// the kernel, waiting for a lock a client holds while nobody answers it).
    func notificationsDone(within seconds: Double) -> Bool {
        inFlight.wait(timeout: .now() + seconds) == .success
    }

    func replyError(_ req: FuseRequestHandle, _ errno: Int32) { fuse_reply_err(req, errno) }
    func replyData(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int) {
        fuse_reply_buf(req, data?.assumingMemoryBound(to: CChar.self), count)
    }
    func replyWrite(_ req: FuseRequestHandle, _ count: Int) { fuse_reply_write(req, count) }
    func replyIoctl(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int) { fuse_reply_ioctl(req, 0, data, count) }
    func replyOpen(_ req: FuseRequestHandle, _ fi: UnsafeMutablePointer<fuse_file_info>) { fuse_reply_open(req, fi) }
    func replyPoll(_ req: FuseRequestHandle, _ events: UInt32) { fuse_reply_poll(req, events) }
    func replyAttr(_ req: FuseRequestHandle, _ attr: UnsafePointer<stat>, timeout: Double) { fuse_reply_attr(req, attr, timeout) }
    func replyEntry(_ req: FuseRequestHandle, _ entry: UnsafePointer<fuse_entry_param>) { fuse_reply_entry(req, entry) }
    func replyLink(_ req: FuseRequestHandle, _ target: String) { _ = target.withCString { fuse_reply_readlink(req, $0) } }
    func armInterrupt(_ req: FuseRequestHandle, _ request: PendingFuseRequest) {
        fuse_req_interrupt_func(req, fuseInterrupt, Unmanaged.passUnretained(request).toOpaque())
    }
    func disarmInterrupt(_ req: FuseRequestHandle) { fuse_req_interrupt_func(req, nil, nil) }
    func notifyPoll(_ handle: OpaquePointer) { fuse_lowlevel_notify_poll(handle) }
    func destroyPollHandle(_ handle: OpaquePointer) { fuse_pollhandle_destroy(handle) }
    func dropped(_ req: FuseRequestHandle, _ what: String) { log("wdmfs: bridge: \(what) (answered EIO)") }
}

/// FUSE_INTERRUPT: the caller got a signal. libfuse calls this with the
/// request's lock held, and the reply needs that lock, so the work runs on
/// another thread.
private let fuseInterrupt: fuse_interrupt_func_t = { _, data in
    guard let data else { return }
    let request = Unmanaged<PendingFuseRequest>.fromOpaque(data).takeUnretainedValue()
    request.interrupted()
}
