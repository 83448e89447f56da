// Daemon: what `wdmfs mount` needs from the system to run in the background
// and what `wdmfs unmount` needs to stop it: process plumbing, no libfuse.

import CWDMSys
import Glibc

public enum Daemon {
    /// The running executable.
    public static var executablePath: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    /// An absolute path for `path`: resolved when it can be, else made absolute
    /// and normalized lexically (a dead FUSE mount cannot be resolved), with no
    /// trailing slash.
    public static func absolute(_ path: String) -> String {
        if let p = realpath(path, nil) {
            defer { free(p) }
            return String(cString: p)
        }
        var full = path
        if !full.hasPrefix("/") {
            var buf = [CChar](repeating: 0, count: 4096)
            if getcwd(&buf, buf.count) != nil { full = String(cString: buf) + "/" + full }
        }
        var parts: [Substring] = []
        for c in full.split(separator: "/") {
            if c == "." || c.isEmpty { continue }
            if c == ".." { _ = parts.popLast(); continue }
            parts.append(c)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// A mount point in /proc/self/mounts whose daemon is gone: the kernel still
    /// lists the FUSE mount, but any access fails with ENOTCONN.
    public static func isDeadMount(_ path: String) -> Bool {
        let target = absolute(path)
        guard mountEntry(target) != nil else { return false }
        var st = stat()
        return stat(target, &st) != 0 && errno == ENOTCONN
    }

    /// Detaches a dead mount (umount -l), so the directory can be used again.
    public static func clearDeadMount(_ path: String) -> String? {
        let target = absolute(path)
        if umount2(target, Int32(MNT_DETACH)) == 0 || runFusermount(target, lazy: true) { return nil }
        return "cannot detach the dead mount at \(target): \(String(cString: strerror(errno)))"
    }

    /// The file system type of the mount at `target` (an absolute path), if any.
    static func mountEntry(_ target: String) -> String? {
        guard let f = fopen("/proc/self/mounts", "r") else { return nil }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 4096)
        var found: String?
        while fgets(&line, Int32(line.count), f) != nil {
            let fields = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.split(separator: " ")
            // The mount point is escaped as octal (\040 for a space); compare escaped.
            if fields.count > 2, fields[1] == escapeMountPath(target) { found = String(fields[2]) }
        }
        return found
    }

    static func escapeMountPath(_ s: String) -> String {
        var out = ""
        for u in s.utf8 {
            switch u {
            case 0x20, 0x09, 0x0A, 0x5C: out += "\\" + String(u, radix: 8).leftPadded3
            default: out.unicodeScalars.append(Unicode.Scalar(u))
            }
        }
        return out
    }

    /// Whether a directory has entries (other than . and ..).
    public static func isNonEmptyDirectory(_ path: String) -> Bool {
        guard let dir = opendir(path) else { return false }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { return true }
        }
        return false
    }

    /// Holds an exclusive lock on the directory to be mounted for the daemon's
    /// life, so two daemons started at once for one directory cannot both mount
    /// (the second finds the lock taken, or the first's mount in place).
    /// Returns the locked descriptor, or why it could not.
    public static func lockMountpoint(_ path: String) -> Result<Int32, MountError> {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(MountError("cannot open \(path): \(String(cString: strerror(errno)))")) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            return .failure(MountError("\(path) is being mounted by another wdmfs"))
        }
        return .success(fd)
    }

    /// Checks that the daemon will be able to write its log: the file is created
    /// (or appended to) now, with the daemon's mode.
    public static func checkLogFile(_ path: String) -> String? {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return "cannot open the log file \(path): \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }

    /// Whether `pid` is running (a zombie, exited but not yet reaped, is not).
    static func isRunning(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let fd = open("/proc/\(pid)/stat", O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = Glibc.read(fd, &buf, buf.count)
        guard n > 0 else { return false }
        // "pid (comm) S ...": the state follows the last ')'.
        let text = buf[0..<n]
        guard let close = text.lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return true }
        let state = text[close + 2]
        return state != UInt8(ascii: "Z") && state != UInt8(ascii: "X")
    }

    /// Starts `arguments` of this executable in the background and waits until it
    /// writes a line `READY` on its stderr (it is mounted) or exits. Returns the
    /// pid, or throws with what it printed.
    public static func startInBackground(arguments: [String]) throws(MountError) -> pid_t {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw MountError("pipe: \(String(cString: strerror(errno)))") }
        let argv: [UnsafeMutablePointer<CChar>?] = ([executablePath] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let pid = argv.withUnsafeBufferPointer { cwdmsys_spawn_daemon(argv[0], $0.baseAddress, fds[1]) }
        close(fds[1])
        defer { close(fds[0]) }
        guard pid > 0 else { throw MountError("could not start the daemon: \(String(cString: strerror(errno)))") }
        var text = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = Glibc.read(fds[0], &chunk, chunk.count)
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            text += chunk[0..<n]
            if String(decoding: text, as: UTF8.self).contains("READY\n") { return pid }
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        throw MountError(failure(String(decoding: text, as: UTF8.self), status: status))
    }

    /// Marks the line a daemon that `wdmfs mount` waits for stops with (see `fatal`).
    static let failureMarker = "FAILED: "

    /// Why a daemon that never got READY failed, from what it wrote and how it
    /// exited: its fatal message first (without `wdmfs: `), then anything else it
    /// or libfuse said, less the drivers' `loaded` / `unloaded` lines (its log file
    /// has them).
    static func failure(_ text: String, status: Int32) -> String {
        var causes: [String] = [], others: [String] = []
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix(failureMarker) {
                var cause = String(line.dropFirst(failureMarker.count))
                if cause.hasPrefix("wdmfs: ") { cause.removeFirst("wdmfs: ".count) }
                causes.append(cause)
            } else if !line.hasPrefix("wdmfs: loaded ") && !line.hasPrefix("wdmfs: unloaded ") && !line.isEmpty {
                others.append(line)
            }
        }
        if causes.isEmpty {
            // No message: it crashed or was killed.
            let signal = status & 0x7f
            causes.append(signal != 0 && signal != 0x7f
                ? "the daemon was killed by signal \(signal) (\(String(cString: strsignal(signal))))"
                : "the daemon exited with status \((status >> 8) & 0xff) before the tree was mounted")
        }
        return (causes + others).joined(separator: "\n")
    }

    /// Set in a daemon that `wdmfs mount` waits for (`--notify-ready`): its fatal
    /// message is marked so the parent shows it first.
    public nonisolated(unsafe) static var parentWaits = false

    /// A fatal message: to stderr (marked for a waiting parent) and the early log.
    public static func fatal(_ line: String) {
        let s = (parentWaits ? failureMarker : "") + line + "\n"
        _ = s.withCString { Glibc.write(2, $0, strlen($0)) }
        if earlyLog >= 0 { _ = (line + "\n").withCString { Glibc.write(earlyLog, $0, strlen($0)) } }
    }

    /// In the daemon, once mounted: tell the parent, then send stdout and stderr to
    /// `logFile` (or /dev/null) so nothing holds the parent's pipe open.
    public static func announceReady(logFile: String?) {
        let line = "READY\n"
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
        parentWaits = false
        let fd = logFile.map { open($0, O_WRONLY | O_CREAT | O_APPEND, 0o644) } ?? open("/dev/null", O_WRONLY)
        if fd >= 0 {
            dup2(fd, 1)
            dup2(fd, 2)
            if fd > 2 { close(fd) }
        }
        if earlyLog >= 0 {
            close(earlyLog)
            earlyLog = -1
        }
    }

    /// The log file while the daemon's stderr still goes to `wdmfs mount` (before
    /// READY): what the daemon says while it builds the tree lands in both.
    nonisolated(unsafe) static var earlyLog: Int32 = -1

    /// In the background daemon, before the tree is built: copy the log to `path` from now on.
    public static func startEarlyLog(_ path: String?) {
        guard let path else { return }
        earlyLog = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    }

    /// Writes a line to stderr (the daemon's log once it is in the background).
    public static func log(_ line: String) {
        let s = line + "\n"
        _ = s.withCString { Glibc.write(2, $0, strlen($0)) }
        if earlyLog >= 0 { _ = s.withCString { Glibc.write(earlyLog, $0, strlen($0)) } }
    }

    /// Unmounts `mountpoint` and waits (up to `timeout` seconds) for the daemon
    /// serving it to exit. Returns nil on success or the reason it failed.
    /// With `lazy`, a mount still in use is detached now and the daemon ends when
    /// its last file is closed (umount -l).
    public static func unmount(_ mountpoint: String, lazy: Bool = false, timeout: Double = 10) -> String? {
        let path = absolute(mountpoint)
        let daemons = daemonPids(for: path)
        if umount2(path, lazy ? Int32(MNT_DETACH) : 0) != 0 {
            let e = errno
            if e == EBUSY {
                if !unmountCovered(path) {
                    return "cannot unmount \(path): a file on it is still open (close it, or use --lazy, or --force to end the daemon)"
                }
            } else if !runFusermount(path, lazy: lazy) {  // not root: fusermount3 handles user mounts
                return "cannot unmount \(path): \(String(cString: strerror(e)))"
            }
        }
        if lazy { return nil }
        if waitForExit(daemons, timeout: timeout) { return nil }
        return "unmounted \(path), but the daemon is still running"
    }

    /// The mounts a tree has over its own files (the files of devices that can pend
    /// are served by a FUSE connection of their own, mounted over them): wdmfs
    /// mounts directly under `path`.
    static func coverMounts(under path: String) -> [String] {
        let text = readText("/proc/self/mountinfo")
        let prefix = escapeMountPath(path == "/" ? "" : path) + "/"
        var out: [String] = []
        for line in text.split(separator: "\n") {
            // The optional fields end at " - ", then the file system type.
            let f = line.split(separator: " ")
            guard let dash = f.firstIndex(of: "-"), dash + 1 < f.count, f[dash + 1] == "fuse.wdmfs" else { continue }
            guard f.count > 4, f[4].hasPrefix(prefix), !f[4].dropFirst(prefix.count).contains("/") else { continue }
            out.append(path + "/" + unescapeMountPath(String(f[4].dropFirst(prefix.count))))
        }
        return out
    }

    static func unescapeMountPath(_ s: String) -> String {
        var bytes: [UInt8] = []
        var u = Array(s.utf8)[...]
        while let c = u.popFirst() {
            if c == 0x5C, u.count >= 3, let v = UInt8(String(decoding: u.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(v)
                u = u.dropFirst(3)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A busy unmount of a tree with covers: the covers go first (each is busy only
    /// while its own file is open), then the tree. If a file is open after all, the
    /// daemon puts the covers back (`cover` to `.devices/.control`) and this says no.
    static func unmountCovered(_ path: String) -> Bool {
        let covers = coverMounts(under: path)
        guard !covers.isEmpty else { return false }
        if covers.allSatisfy({ umount2($0, 0) == 0 }) && umount2(path, 0) == 0 { return true }
        let fd = open(path + "/.devices/.control", O_WRONLY)
        if fd >= 0 {
            _ = "cover\n".withCString { Glibc.write(fd, $0, 6) }
            close(fd)
        }
        return false
    }

    /// Ends the daemon serving `mountpoint` with SIGTERM, busy or not: it cancels
    /// what the drivers hold, answers every caller, unloads every driver and
    /// unmounts. Waits up to `timeout` seconds. Nil on success, else why not.
    public static func terminate(_ mountpoint: String, timeout: Double = 10) -> String? {
        let path = absolute(mountpoint)
        let daemons = daemonPids(for: path)
        guard !daemons.isEmpty else { return "no wdmfs daemon serves \(path)" }
        let exits = daemons.map(cwdmsys_pidfd_open)  // opened before the signal: no pid reuse
        defer { exits.forEach { if $0 >= 0 { close($0) } } }
        for pid in daemons { kill(pid, SIGTERM) }
        if waitForExit(daemons, pidfds: exits, timeout: timeout) { return nil }
        return "the daemon serving \(path) is still running \(Int(timeout)) s after SIGTERM"
    }

    /// Waits until every process of `pids` has exited (a zombie counts), woken by
    /// each exit (pidfds poll readable), for at most `timeout` seconds.
    static func waitForExit(_ pids: [pid_t], pidfds: [Int32]? = nil, timeout: Double) -> Bool {
        let fds = pidfds ?? pids.map(cwdmsys_pidfd_open)
        defer { if pidfds == nil { fds.forEach { if $0 >= 0 { close($0) } } } }
        var polled = zip(pids, fds).filter { $0.1 >= 0 && isRunning($0.0) }.map { pollfd(fd: $0.1, events: Int16(POLLIN), revents: 0) }
        // A pid whose pidfd could not be opened has gone already (or is not ours to watch).
        let deadline = monotonicSeconds() + timeout
        while !polled.isEmpty {
            let left = deadline - monotonicSeconds()
            guard left > 0 else { return false }
            let n = poll(&polled, nfds_t(polled.count), Int32(left * 1000) + 1)
            if n < 0 && errno != EINTR { return false }
            polled.removeAll { $0.revents != 0 }
        }
        return true
    }

    /// The FUSE mount options: the kernel checks each file's mode and owner
    /// (`default_permissions`), and other users reach the mount (`allow_other`),
    /// as they reach /dev. A user other than root may ask for allow_other only when
    /// /etc/fuse.conf says `user_allow_other`; without it the mount is the user's
    /// alone, and `log` says so.
    public static func mountOptions(log: (String) -> Void) -> [String] {
        if geteuid() == 0 || fuseConfAllowsOther() { return ["default_permissions", "allow_other"] }
        log("other users cannot reach this mount: /etc/fuse.conf does not say user_allow_other")
        return ["default_permissions"]
    }

    /// A file's text ("" when it cannot be read).
    static func readText(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether /etc/fuse.conf has a `user_allow_other` line.
    static func fuseConfAllowsOther(_ path: String = "/etc/fuse.conf") -> Bool {
        readText(path).split(separator: "\n").contains {
            $0.split(whereSeparator: { $0 == " " || $0 == "\t" }) == ["user_allow_other"]
        }
    }

    static func runFusermount(_ path: String, lazy: Bool) -> Bool {
        let strings: [String] = ["/bin/fusermount3", lazy ? "-uz" : "-u", path]
        let argv: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, argv[0]!, nil, nil, argv, Glibc.environ) == 0 else { return false }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return status == 0
    }

    /// Daemons whose command line is `... mount <path> ...`.
    static func daemonPids(for path: String) -> [pid_t] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var out: [pid_t] = []
        let me = getpid()
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard let pid = pid_t(name), pid != me else { continue }
            let fd = open("/proc/\(pid)/cmdline", O_RDONLY)
            guard fd >= 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 8192)
            let n = Glibc.read(fd, &buf, buf.count)
            close(fd)
            guard n > 0 else { continue }
            let args = buf[0..<n].split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if let i = args.firstIndex(of: "mount"), i + 1 < args.count, args[i + 1] == path,
               args.contains("--foreground"), args.first?.hasSuffix("wdmfs") == true {
                out.append(pid)
            }
        }
        return out
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Whether `path` is a mount point of a wdmfs daemon (live or dead).
    public static func isMounted(_ path: String) -> Bool {
        mountEntry(absolute(path))?.hasPrefix("fuse") == true
    }

    /// In the daemon: a reader that went away (a closed log pipe) must not kill it
    /// with SIGPIPE; writes then fail with EPIPE, which the daemon ignores.
    public static func ignoreBrokenPipes() { signal(SIGPIPE, SIG_IGN) }
}

/// Why a mount failed.
public struct MountError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

extension String {
    var leftPadded3: String { count >= 3 ? self : String(repeating: "0", count: 3 - count) + self }

    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
