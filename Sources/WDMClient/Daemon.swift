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

    /// An absolute path for `path`.
    public static func absolute(_ path: String) -> String {
        guard let p = realpath(path, nil) else { return path }
        defer { free(p) }
        return String(cString: p)
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
        throw MountError(String(decoding: text, as: UTF8.self).trimmingTrailingNewlines())
    }

    /// In the daemon, once mounted: tell the parent, then send stdout and stderr to
    /// `logFile` (or /dev/null) so nothing holds the parent's pipe open.
    public static func announceReady(logFile: String?) {
        let line = "READY\n"
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
        let fd = logFile.map { open($0, O_WRONLY | O_CREAT | O_APPEND, 0o644) } ?? open("/dev/null", O_WRONLY)
        if fd >= 0 {
            dup2(fd, 1)
            dup2(fd, 2)
            if fd > 2 { close(fd) }
        }
    }

    /// Writes a line to stderr (the daemon's log once it is in the background).
    public static func log(_ line: String) {
        let s = line + "\n"
        _ = s.withCString { Glibc.write(2, $0, strlen($0)) }
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
            // Not root: let fusermount3 try (it handles user mounts).
            if e == EBUSY {
                return "cannot unmount \(path): a file on it is still open (close it, or use --lazy)"
            }
            if !runFusermount(path, lazy: lazy) {
                return "cannot unmount \(path): \(String(cString: strerror(e)))"
            }
        }
        if lazy { return nil }
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            if daemons.allSatisfy({ kill($0, 0) != 0 }) { return nil }
            usleep(10_000)
        }
        return "unmounted \(path), but the daemon is still running"
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

    /// Whether `path` is a mount point of a wdmfs daemon.
    public static func isMounted(_ path: String) -> Bool {
        let target = absolute(path)
        guard let f = fopen("/proc/self/mounts", "r") else { return false }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), f) != nil {
            let fields = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.split(separator: " ")
            if fields.count > 2, fields[1] == target, fields[2].hasPrefix("fuse") { return true }
        }
        return false
    }
}

/// Why a mount failed.
public struct MountError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
