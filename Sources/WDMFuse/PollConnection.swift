// PollConnection: a second FUSE connection for the files of devices that can
// pend (a driver in the stack has a readiness routine, as echo's does), so that
// poll and select on them tell the truth while the main connection answers its
// first FUSE_POLL with ENOSYS. The kernel keeps that choice per connection
// (fc->no_poll) and, without it, asks the daemon on every poll of every file:
// io_uring polls a FUSE file before each nonblocking attempt, hundreds of round
// trips per write on a RAM disk. Two connections make it a choice per file.
//
// The second connection is mounted detached (fsopen, fsmount: attached nowhere
// whole). Each such device's file is a clone of that mount at the device's name
// (open_tree) moved over the main mount's file of the same name (move_mount).
// One bridge serves both connections: the same inodes, attributes and handles.
// The main connection invalidating a covered name (the device went) makes the
// kernel detach the cover itself (d_invalidate).
//
// Mounting needs CAP_SYS_ADMIN: a daemon that is not root keeps one connection
// (poll as `--poll on`, the log says why). A mount with covers cannot be
// unmounted by a plain umount (its children keep it busy): `wdmfs unmount`
// takes the covers off first, and `umount -l` takes the whole tree.

import CFuse
import Dispatch
import Foundation
import Glibc
import Synchronization
import WDM
import WDMClient

final class PollConnection: @unchecked Sendable {
    let mountpoint: String
    private let device: Int32
    /// The detached mount (set once, before the connection is handed out).
    private var mount: Int32 = -1
    /// The connection's device number (st_dev of every file it serves).
    private(set) var deviceNumber: UInt = 0
    private let session: OpaquePointer
    private let ended = DispatchSemaphore(value: 0)
    private let log: (String) -> Void
    /// Names covered now, as far as this side knows (`coverAll` checks the mounts).
    let covered = Mutex<Set<String>>([])

    /// Opens /dev/fuse, mounts it detached and starts serving it with `bridge`.
    /// Nil (and why, in `reason`) when the kernel or the privileges do not allow it.
    static func start(bridge: FuseBridge, mountpoint: String, options: [String], log: @escaping (String) -> Void) -> Result<PollConnection, MountError> {
        let dev = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard dev >= 0 else { return .failure(MountError("/dev/fuse: \(String(cString: strerror(Glibc.errno)))")) }
        let fs = fsopen("fuse", UInt32(FSOPEN_CLOEXEC))
        guard fs >= 0 else {
            let e = Glibc.errno
            Glibc.close(dev)
            return .failure(MountError("fsopen: \(String(cString: strerror(e)))"))
        }
        var fsOpen = true
        defer { if fsOpen { Glibc.close(fs) } }
        let strings: [(String, String)] = [("source", "wdmfs"), ("subtype", "wdmfs"), ("fd", String(dev)),
                                           ("rootmode", String(Glibc.S_IFDIR, radix: 8)),
                                           ("user_id", String(geteuid())), ("group_id", String(getegid()))]
        var flags: [String] = []
        for o in options where o == "allow_other" || o == "default_permissions" { flags.append(o) }
        for (key, value) in strings where fsconfig(fs, FSCONFIG_SET_STRING.rawValue, key, value, 0) != 0 {
            let e = Glibc.errno
            Glibc.close(dev)
            return .failure(MountError("fsconfig \(key)=\(value): \(String(cString: strerror(e)))"))
        }
        for key in flags where fsconfig(fs, FSCONFIG_SET_FLAG.rawValue, key, nil, 0) != 0 {
            let e = Glibc.errno
            Glibc.close(dev)
            return .failure(MountError("fsconfig \(key): \(String(cString: strerror(e)))"))
        }
        guard fsconfig(fs, FSCONFIG_CMD_CREATE.rawValue, nil, nil, 0) == 0 else {
            let e = Glibc.errno
            Glibc.close(dev)
            return .failure(MountError("fsconfig create: \(String(cString: strerror(e)))"))
        }
        var ops = FuseBridge.operations(connection: .poll)
        let argv: [String] = ["wdmfs"]
        var cargs = argv.map { strdup($0) }
        defer { cargs.forEach { free($0) } }
        let se: OpaquePointer? = cargs.withUnsafeMutableBufferPointer { p in
            var args = cfuse_args(Int32(p.count), p.baseAddress)
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, Unmanaged.passUnretained(bridge).toOpaque())
        }
        // libfuse takes an open, mounted /dev/fuse as "/dev/fd/N" (and closes it in fuse_session_destroy).
        guard let se, fuse_session_mount(se, "/dev/fd/\(dev)") == 0 else {
            Glibc.close(dev)
            return .failure(MountError("could not start a FUSE session on the second connection"))
        }
        let c = PollConnection(mountpoint: mountpoint, device: dev, session: se, log: log)
        // The loop runs from here: the kernel's INIT is queued, and every call below
        // that touches the file system (fstat) waits for its answer.
        let thread = Thread { [c] in
            _ = cfuse_session_loop_mt(c.session, 16)
            c.ended.signal()
        }
        thread.name = "wdmfs poll connection"
        thread.start()
        let mnt = fsmount(fs, UInt32(FSMOUNT_CLOEXEC), UInt32(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV))
        guard mnt >= 0 else {
            let e = Glibc.errno
            fuse_session_exit(se)
            Glibc.close(fs)  // the superblock goes; the loop reads ENODEV and ends
            fsOpen = false
            c.ended.wait()
            fuse_session_destroy(se)
            return .failure(MountError("fsmount: \(String(cString: strerror(e)))"))
        }
        var st = stat()
        fstat(mnt, &st)
        c.mount = mnt
        c.deviceNumber = UInt(st.st_dev)
        return .success(c)
    }

    private init(mountpoint: String, device: Int32, session: OpaquePointer, log: @escaping (String) -> Void) {
        self.mountpoint = mountpoint
        self.device = device
        self.session = session
        self.log = log
    }

    /// The connection's number (its directory under /sys/fs/fuse/connections).
    var connection: String { String(deviceNumber & 0xff | (deviceNumber >> 12) & 0xfff00) }

    var coveredCount: Int { covered.withLock { $0.count } }

    /// Whether `link`'s file in the main mount is this connection's now.
    func isCovered(_ link: String) -> Bool {
        var st = stat()
        return lstat(mountpoint + "/" + link, &st) == 0 && UInt(st.st_dev) == deviceNumber
    }

    /// Moves a clone of this connection's `link` over the main mount's file of that name.
    @discardableResult
    func cover(_ link: String) -> Bool {
        if isCovered(link) {
            covered.withLock { _ = $0.insert(link) }
            return true
        }
        // This side may still know the name as an earlier device of that name (a
        // disabled and enabled echo comes back as a new file with a new inode).
        _ = link.withCString { fuse_lowlevel_notify_inval_entry(session, 1, $0, strlen($0)) }
        let tree = open_tree(mount, link, UInt32(OPEN_TREE_CLONE) | UInt32(O_CLOEXEC))
        guard tree >= 0 else {
            log("could not give \(link) its own FUSE connection (open_tree: \(String(cString: strerror(Glibc.errno)))); poll on it says always ready")
            return false
        }
        defer { Glibc.close(tree) }
        guard move_mount(tree, "", AT_FDCWD, mountpoint + "/" + link, UInt32(MOVE_MOUNT_F_EMPTY_PATH)) == 0 else {
            log("could not give \(link) its own FUSE connection (move_mount: \(String(cString: strerror(Glibc.errno)))); poll on it says always ready")
            return false
        }
        covered.withLock { _ = $0.insert(link) }
        return true
    }

    /// The device behind `link` went away: the kernel detached its cover when the
    /// name was invalidated; this side forgets it.
    func forget(_ link: String) {
        covered.withLock { _ = $0.remove(link) }
    }

    /// Ends the connection once the main one ended: drops the detached mount (the
    /// covers went with the main mount), then waits for the loop to end, which it
    /// does when the last file open on it closes; `abort` (the daemon was told to
    /// end) aborts the connection instead of waiting.
    func stop(abort: Bool) {
        Glibc.close(mount)
        fuse_session_exit(session)
        if abort {
            // Callers were answered (the drain); give them a moment to close their
            // files (a close asks the daemon), then end what is left.
            if ended.wait(timeout: .now() + 0.5) == .timedOut {
                FuseBridge.abortConnection(connection, log: log)
                ended.wait()
            }
        } else if ended.wait(timeout: .now() + 0.5) == .timedOut {
            log("a file of a device with its own FUSE connection is still open; waiting for it to close")
            ended.wait()
        }
        fuse_session_destroy(session)
    }
}
