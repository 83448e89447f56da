// FuseSession: the libfuse low-level session: the operations table (each entry
// hands the request to the FuseBridge found through fuse_req_userdata), mount,
// the multi-threaded loop, the shutdown drain, unmount.

import CFuse
import CWDMSys
import Foundation
import Glibc
import WDM
import Synchronization
import WDMClient

/// Which of a mount's FUSE connections a request came on: the main one, or the
/// one of the files of devices that can pend (`PollConnection`).
enum FuseConnectionRole { case main, poll }

/// Seconds the kernel may cache names and attributes.
let fuseEntryTimeout = 1.0

extension FuseBridge {
    static func of(_ req: fuse_req_t?) -> FuseBridge {
        Unmanaged<FuseBridge>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func operations(connection: FuseConnectionRole = .main) -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let userdata, let conn else { return }
            let bridge = Unmanaged<FuseBridge>.fromOpaque(userdata).takeUnretainedValue()
            // The kernel opens and releases directories itself once opendir says ENOSYS:
            // two requests fewer per directory listed.
            bridge.kernelOpensDirectories.store(conn.pointee.capable & UInt32(FUSE_CAP_NO_OPENDIR_SUPPORT) != 0, ordering: .releasing)
            // READDIRPLUS for every read of a directory, not only the first (see readdir).
            conn.pointee.want &= ~UInt32(FUSE_CAP_READDIRPLUS_AUTO)
        }
        ops.lookup = { req, parent, name in FuseBridge.of(req).lookup(req, parent, name.map { String(cString: $0) }) }
        ops.getattr = { req, ino, _ in FuseBridge.of(req).getattr(req, ino) }
        ops.setattr = { req, ino, _, toSet, _ in FuseBridge.of(req).setattr(req, ino, toSet) }
        ops.opendir = { req, ino, fi in FuseBridge.of(req).opendir(req, ino, fi) }
        ops.readdir = { req, ino, size, off, fi in FuseBridge.of(req).readdir(req, ino, size, off, fi) }
        ops.readdirplus = { req, ino, size, off, fi in FuseBridge.of(req).readdir(req, ino, size, off, fi, plus: true) }
        ops.releasedir = { req, ino, fi in FuseBridge.of(req).releasedir(req, ino, fi) }
        ops.open = { req, ino, fi in FuseBridge.of(req).open(req, ino, fi!) }
        ops.readlink = { req, ino in FuseBridge.of(req).readlink(req, ino) }
        ops.release = { req, ino, fi in FuseBridge.of(req).release(req, ino, fi) }
        ops.read = { req, ino, size, off, fi in FuseBridge.of(req).read(req, ino, size, off, fi) }
        ops.write = { req, ino, buf, size, off, fi in FuseBridge.of(req).write(req, ino, buf, size, off, fi) }
        ops.ioctl = { req, ino, cmd, _, fi, flags, inBuf, inSize, outSize in
            FuseBridge.of(req).ioctl(req, ino, UInt32(truncatingIfNeeded: cmd), fi, flags, inBuf, inSize, outSize)
        }
        ops.fsync = { req, ino, _, fi in FuseBridge.of(req).fsync(req, ino, fi) }
        switch connection {
        case .main: ops.poll = { req, ino, fi, ph in FuseBridge.of(req).poll(req, ino, fi, ph, connection: .main) }
        case .poll: ops.poll = { req, ino, fi, ph in FuseBridge.of(req).poll(req, ino, fi, ph, connection: .poll) }
        }
        // The tree is the drivers' to shape: names are not created, removed or moved from userland.
        ops.create = { req, _, _, _, _ in FuseBridge.of(req).refuse(req) }
        ops.mknod = { req, _, _, _, _ in FuseBridge.of(req).refuse(req) }
        ops.mkdir = { req, _, _, _ in FuseBridge.of(req).refuse(req) }
        ops.unlink = { req, _, _ in FuseBridge.of(req).refuse(req) }
        ops.rmdir = { req, _, _ in FuseBridge.of(req).refuse(req) }
        ops.rename = { req, _, _, _, _, _ in FuseBridge.of(req).refuse(req) }
        ops.symlink = { req, _, _, _ in FuseBridge.of(req).refuse(req) }
        ops.link = { req, _, _, _ in FuseBridge.of(req).refuse(req) }
        return ops
    }

    /// Creating, removing or moving a name: the tree is the drivers' to shape.
    func refuse(_ req: FuseRequestHandle) { FuseReply(req, sink).error(EPERM) }

    /// opendir: where the kernel supports it, ENOSYS (the kernel then opens and
    /// releases directories without asking, and readdir takes the listing from
    /// `listings`). Otherwise the handle keeps the directory's listing, taken when
    /// it is first read (and again at offset 0). Either way a listing of n entries
    /// costs O(n) in all however many readdir calls the kernel makes.
    func opendir(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let reply = FuseReply(req, sink)
        guard InodeKind(ino) == .root || treePath(ino) != nil else {
            reply.error(ENOTDIR)
            return
        }
        if kernelOpensDirectories.load(ordering: .acquiring) {
            reply.error(ENOSYS)
            return
        }
        fi?.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(DirListing()).toOpaque()))
        if let fi { reply.open(fi) } else { reply.error(0) }
    }

    func releasedir(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) { Unmanaged<DirListing>.fromOpaque(p).release() }
        FuseReply(req, sink).error(0)
    }

    /// A directory's entries now: `.` and `..`, then the root's or a tree directory's.
    func directoryEntries(_ ino: fuse_ino_t) -> [(String, fuse_ino_t, mode_t)]? {
        var entries: [(String, fuse_ino_t, mode_t)] = [(".", ino, Glibc.S_IFDIR), ("..", 1, Glibc.S_IFDIR)]
        if InodeKind(ino) == .root {
            for (name, i) in rootEntries { entries.append((name, i, name == ".devices" || name == ".interfaces" ? Glibc.S_IFDIR : Glibc.S_IFREG)) }
        } else if let path = treePath(ino), let list = treeEntries(path) {
            let leaf = path.hasPrefix(".interfaces/")
            for e in list {
                entries.append((e.name, e.ino, e.dir ? Glibc.S_IFDIR : (leaf ? Glibc.S_IFLNK : Glibc.S_IFREG)))
            }
        } else {
            return nil
        }
        return entries
    }

    /// readdir, and READDIRPLUS: there only subdirectories carry their attributes
    /// (the kernel then needs no LOOKUP to walk into them, as `ls -R` and `find`
    /// do); files do not (inode 0: not instantiated), since making a kernel inode
    /// for each of a node's 13 files costs more than the lookups it saves.
    func readdir(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool = false) {
        let reply = FuseReply(req, sink)
        let listing = fi.flatMap { UnsafeRawPointer(bitPattern: UInt($0.pointee.fh)) }.map { Unmanaged<DirListing>.fromOpaque($0).takeUnretainedValue() }
        let entries: [(String, fuse_ino_t, mode_t)]
        if let listing, off > 0, let cached = listing.entries {
            entries = cached
        } else if listing == nil, off > 0, let cached = listings.withLock({ $0[ino] }) {
            entries = cached  // the listing this one started from (no handle: see opendir)
        } else {
            guard let now = directoryEntries(ino) else {
                reply.error(ENOENT)  // the directory went away
                return
            }
            if let listing {
                listing.entries = now
            } else {
                listings.withLock { cache in
                    if cache.count >= 64 { cache.removeAll(keepingCapacity: true) }
                    cache[ino] = now
                }
            }
            entries = now
        }
        let out = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
        defer { out.deallocate() }
        var used = 0
        var i = max(0, off)
        while i < entries.count {
            let n: Int
            if plus {
                var e = fuse_entry_param()
                e.attr.st_ino = UInt(entries[i].1)
                e.attr.st_mode = entries[i].2
                if i >= 2, entries[i].2 == Glibc.S_IFDIR, let attr = attributes(entries[i].1) {
                    e.ino = entries[i].1
                    e.attr = attr
                    e.attr_timeout = fuseEntryTimeout
                    e.entry_timeout = fuseEntryTimeout
                }
                n = fuse_add_direntry_plus(req, out + used, size - used, entries[i].0, &e, off_t(i + 1))
            } else {
                var st = stat()
                st.st_ino = UInt(entries[i].1)
                st.st_mode = entries[i].2
                n = fuse_add_direntry(req, out + used, size - used, entries[i].0, &st, off_t(i + 1))
            }
            if used + n > size { break }
            used += n
            i += 1
        }
        reply.data(out, used)
    }

    /// Mounts at `mountpoint` and serves until unmounted or signalled (SIGINT,
    /// SIGTERM, SIGHUP). `onMounted` runs once the tree is usable. When the loop
    /// ends, requests the drivers still hold are cancelled and, after a grace
    /// period, answered (`drain`). Returns libfuse's loop result, or throws when
    /// the mount could not be made.
    public func serve(mountpoint: String, options: [String] = [], maxThreads: UInt32 = 64, onMounted: @escaping () -> Void) throws(MountError) -> Int32 {
        var ops = FuseBridge.operations()
        let argv = ["wdmfs", "-o", (["fsname=wdmfs", "subtype=wdmfs"] + options).joined(separator: ",")]
        var cargs = argv.map { strdup($0) }
        defer { cargs.forEach { free($0) } }
        let se: OpaquePointer? = cargs.withUnsafeMutableBufferPointer { p in
            var args = cfuse_args(Int32(p.count), p.baseAddress)
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, Unmanaged.passUnretained(self).toOpaque())
        }
        guard let se else { throw MountError("could not create a FUSE session (is libfuse3 installed?)") }
        defer { fuse_session_destroy(se) }
        guard fuse_set_signal_handlers(se) == 0 else { throw MountError("could not install signal handlers") }
        defer { fuse_remove_signal_handlers(se) }
        let watcher = ShutdownWatcher()
        defer { watcher.stop() }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            if access("/dev/fuse", R_OK | W_OK) != 0 {
                // libfuse opens /dev/fuse itself before it would ask fusermount3.
                throw MountError("could not mount at \(mountpoint): /dev/fuse: \(String(cString: strerror(Glibc.errno))) (a user other than root needs read and write access to it: mode 0666, as Debian's udev rule sets it)")
            }
            throw MountError("could not mount at \(mountpoint) (does it exist, and is /dev/fuse usable?)")
        }
        // The connection's number, read now (at shutdown nothing may touch the mount).
        let connection = FuseBridge.connectionNumber(of: mountpoint)
        io.readinessObserver = self
        defer { io.readinessObserver = nil }
        // A worker waiting for a driver (a synchronous CREATE, CLEANUP or CLOSE, or
        // any request in a driver that never completes) must not keep the loop alive
        // once the session is ending: the watcher hears the end as it happens (a
        // signal, the mount going away) and drains at once.
        watcher.start(device: fuse_session_fd(se), connection: connection) { [self] in drain() }
        session = se
        defer { session = nil }
        (sink as? LibfuseSink)?.session = se
        defer { (sink as? LibfuseSink)?.session = nil }
        if pollMode == .auto, someDriverCanPend, let c = startPollConnection(mountpoint: mountpoint, options: options) {
            // Covering a file resolves its name on this mount, which only the loop
            // below answers: the covers are made beside it, and the tree is
            // usable once they are.
            let announce = UncheckedBox(onMounted)
            let tree = io.pnp.snapshot
            let thread = Thread { [self] in
                for link in tree.links where tree.presentLinks.contains(link) && canPend(link) { c.cover(link) }
                announce.value()
            }
            thread.name = "wdmfs covers"
            thread.start()
        } else {
            onMounted()
        }
        // No worker ever waits for a driver (pending writes and ioctls no longer
        // hold the request's memory), so libfuse's default worker limits serve.
        let result = cfuse_session_loop_mt(se, maxThreads)
        (sink as? LibfuseSink)?.session = nil  // no new notification leaves
        drain()
        if let lib = sink as? LibfuseSink, !lib.notificationsDone(within: 0.5), let connection {
            // A notification is stuck in the kernel behind a client's lookup that nobody
            // will answer now: abort the connection (every request still in the kernel
            // fails, the notification returns) instead of waiting forever.
            FuseBridge.abortConnection(connection, log: { io.log?($0) })
        }
        fuse_session_unmount(se)
        // The covers went with the main mount (a root daemon's unmount is lazy).
        pollConnection?.stop(abort: watcher.heardSignal)
        pollConnection = nil
        requests.clear()
        return result
    }
}

extension FuseBridge {
    /// `.auto` with a driver that can pend: the files of its devices get their own
    /// connection (see PollConnection); without the privilege to mount it, one
    /// connection with poll on, and the log says what that costs.
    func startPollConnection(mountpoint: String, options: [String]) -> PollConnection? {
        let log: (String) -> Void = { [io] in io.log?($0) }
        guard geteuid() == 0 else {
            log("poll: the devices that can pend share the mount's FUSE connection (only root may mount a second one): io_uring on every file of this mount pays a FUSE round trip per attempt (--poll off stops that, and poll on every file)")
            return nil
        }
        switch PollConnection.start(bridge: self, mountpoint: mountpoint, options: options, log: log) {
        case .failure(let e):
            log("poll: no second FUSE connection (\(e)); poll goes to the drivers on one connection")
            return nil
        case .success(let c):
            pollConnection = c
            return c
        }
    }

    /// Puts back the covers `wdmfs unmount` took off when the mount turned out busy.
    func coverAll() {
        guard let c = pollConnection else { return }
        let tree = io.pnp.snapshot
        sink.afterNotifications { [self] in
            for link in tree.links where tree.presentLinks.contains(link) && canPend(link) { c.cover(link) }
        }
    }

    /// The FUSE connection of the mount at `path` (its device number's minor, the
    /// name of its directory under /sys/fs/fuse/connections), from /proc/self/mountinfo.
    static func connectionNumber(of path: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4, String(f[4]) == path else { continue }
            return f[2].split(separator: ":").last.map(String.init)
        }
        return nil
    }

    /// Aborts a FUSE connection (what `echo 1 > /sys/fs/fuse/connections/N/abort` does).
    /// The fuse control file system is mounted there first if it is not (root only).
    static func abortConnection(_ n: String, log: (String) -> Void) {
        let path = "/sys/fs/fuse/connections/\(n)/abort"
        if access(path, F_OK) != 0, geteuid() == 0 {
            _ = Glibc.mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, nil)
        }
        let fd = Glibc.open(path, O_WRONLY)
        guard fd >= 0 else { return log("wdmfs: could not abort the FUSE connection (\(path): \(String(cString: strerror(Glibc.errno))))") }
        _ = "1".withCString { Glibc.write(fd, $0, 1) }
        Glibc.close(fd)
        log("wdmfs: a kernel notification was stuck at shutdown; the FUSE connection was aborted")
    }
}

/// A value carried to another thread that the caller knows is safe there.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// An open directory's listing (one per opendir; readdir calls share it).
final class DirListing {
    var entries: [(String, fuse_ino_t, mode_t)]?
}

/// Hears a session's end as it happens, with no timer, and runs its action once,
/// on its own thread: a SIGINT, SIGTERM or SIGHUP (a handler chained after
/// libfuse's writes an eventfd), or the FUSE connection ending. The connection's
/// end is seen in two steps: the mount leaves the mount table (`umount`,
/// `fusermount -u`, `umount -l`: /proc/self/mountinfo polls POLLPRI on every
/// change), then /dev/fuse reports POLLERR (at once after an unmount; after a
/// lazy one, when the last file closes). /dev/fuse is not watched before the
/// mount goes: every request queued to it would wake the watcher.
final class ShutdownWatcher: @unchecked Sendable {
    private let wake = eventfd(0, Int32(EFD_CLOEXEC))
    private let mounts = Glibc.open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private var started = false
    private let signalled = Atomic<Bool>(false)
    /// Whether the end was a signal (SIGTERM from `wdmfs unmount --force`).
    var heardSignal: Bool { signalled.load(ordering: .acquiring) }

    init() {
        if wake >= 0 { _ = cwdmsys_chain_signals_to_eventfd(wake) }
    }

    /// Watches the session whose /dev/fuse descriptor is `device`, mounted as FUSE
    /// connection `connection` (the device minor in mountinfo; nil: signals only).
    func start(device: Int32, connection: String?, action: @escaping @Sendable () -> Void) {
        guard wake >= 0 else { return }
        started = true
        let thread = Thread { [self] in
            defer { finished.signal() }
            // [0]: signals; [1]: the mount table, until the mount left it; then /dev/fuse.
            var fds = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: mounts, events: Int16(POLLPRI), revents: 0)]
            var detached = mounts < 0 || connection == nil
            if detached { fds[1] = pollfd(fd: connection == nil ? -1 : device, events: 0, revents: 0) }
            while true {
                fds[0].revents = 0; fds[1].revents = 0
                let n = poll(&fds, 2, -1)
                if n < 0 && Glibc.errno == EINTR { continue }
                if stopping.load(ordering: .acquiring) || n < 0 { return }
                if fds[0].revents & Int16(POLLIN) != 0 {  // a signal
                    signalled.store(true, ordering: .releasing)
                    break
                }
                guard fds[1].revents != 0 else { continue }
                if detached { break }  // POLLERR: the connection ended
                if let connection, !Self.listed(connection) {
                    detached = true
                    fds[1] = pollfd(fd: device, events: 0, revents: 0)
                }
            }
            action()
        }
        thread.name = "wdmfs shutdown"
        thread.start()
    }

    /// Whether a FUSE mount with device 0:`connection` is still in the mount table.
    static func listed(_ connection: String) -> Bool {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return true }
        return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(2).first == Substring("0:" + connection) }
    }

    /// Ends the watch (after the loop ended) and waits for the thread; puts the
    /// previous signal handlers back.
    func stop() {
        stopping.store(true, ordering: .releasing)
        if wake >= 0 {
            var one: UInt64 = 1
            _ = Glibc.write(wake, &one, 8)
            if started { finished.wait() }
            cwdmsys_unchain_signals()
            Glibc.close(wake)
        }
        if mounts >= 0 { Glibc.close(mounts) }
    }
}
