// `wdmfs mount`: builds the device tree and serves it through FUSE.

import ArgumentParser
import Crypto
import DefaultTree
import Foundation
import WDMHost
import Glibc
import WDM
import WDMClient
import WDMFuse
import Synchronization

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount the default device tree at MOUNTPOINT.",
        discussion: """
            Returns once the tree is mounted and usable; the daemon stays in the
            background. SIGINT, SIGTERM or `wdmfs unmount MOUNTPOINT` unloads every
            driver and ends it.

            Example:
              mkdir -p /mnt/wdm && wdmfs mount /mnt/wdm && ls -l /mnt/wdm
            """)

    @Argument(help: "An existing empty directory.")
    var mountpoint: String

    @Flag(help: "Stay in the foreground and log to stderr (Ctrl-C unmounts).")
    var foreground = false

    @Option(help: "Where the background daemon logs (default: nowhere).")
    var logFile: String?

    @Flag(help: "Give METHOD_BUFFERED and DO_BUFFERED_IO a separate SystemBuffer, copied in and out as Windows does (counted in .stats bytes_copied).")
    var bounceBuffers = false

    @Option(help: "The tree: a tree file (see `wdmfs tree --print-default`), or default, bench (adds zero-stacked: zero under two filters) or test (adds misbehave, a driver that breaks the rules on purpose, and lazy-null).")
    var tree: String = "default"

    /// The tree to build: a built-in one by name, else a file, checked now.
    func treeDescription() -> TreeDescription {
        switch tree {
        case "default": return DefaultTree.description()
        case "bench": return DefaultTree.description(.init(bench: true))
        case "test": return DefaultTree.description(.init(test: true))
        default:
            do throws(TreeError) {
                return try TreeFile.load(path: tree)
            } catch {
                fail("bad tree file: \(error)")
            }
        }
    }

    @Flag(help: .hidden)
    var notifyReady = false

    @Flag(help: "Load driver packages that are not signed by a trusted key (Windows' test-signing mode).")
    var testSigning = false

    @Option(help: "A public key whose signatures make a driver package trusted (repeat for several; see wdmfs sign).")
    var trustedKey: [String] = []

    /// Every driver package of the tree signed by a trusted key, unless --test-signing;
    /// else the reason, naming the package. Also checked each time a host starts.
    func checkSignatures(_ description: TreeDescription) -> String? {
        guard !testSigning else {
            HostProxy.executableCheck = nil
            return nil
        }
        let keys: [Data]
        do { keys = try trustedKey.map { try PackageSignature.publicKey(file: Daemon.absolute($0)).rawRepresentation } } catch { return "\(error)" }
        let check: @Sendable (String) -> String? = { path in
            PackageSignature.problem(path, trusted: keys).map { $0 + "; refused (sign it with `wdmfs sign`, or mount with --test-signing)" }
        }
        HostProxy.executableCheck = check
        for d in description.devices {
            if let p = d.package, let problem = check(p.executable) { return problem }
        }
        return nil
    }

    @Option(help: "poll and select on device files: auto (devices whose drivers can pend get a FUSE connection of their own where poll tells the truth; the rest are always ready, with no FUSE round trip per poll, which io_uring needs), on (one connection; every poll asks the drivers), or off (one connection; every file always ready).")
    var poll: FuseBridge.PollMode = .auto

    @Option(help: "Driver Verifier's rules for these drivers: all, none, or names with commas (RamDisk,Echo). Changeable while mounted: wdmfs verify.")
    var verify = "none"

    @Option(help: "What a verifier violation does: log (report it), fail (also fail the IRP with STATUS_DRIVER_INTERNAL_ERROR), or bugcheck (report it and end the daemon, every request answered).")
    var verifierAction: Verifier.Action = .log

    @Option(help: "Drivers' log levels (trace, debug, info, notice, warning, error, critical): one for all, and/or NAME=LEVEL (info,RamDisk=debug). Lines go to --log-file, each naming its driver. Changeable while mounted: wdmfs log-level.")
    var logLevel = "info"

    @Option(help: "Driver Verifier's stress options, seeded: pending=P (a verified driver's calls down forced to pend), low-resources=P (its IRP and pool allocations fail), irp-log=N (the last N IRPs per device, in .devices/NODE/irp_log), deadline=S (report a user IRP not completed within S seconds), seed=N. Changeable while mounted: wdmfs verify --stress.")
    var stress = "none"

    @Flag(help: "Mount even if MOUNTPOINT is not empty (its files are hidden while mounted).")
    var nonempty = false

    @Flag(help: "Checked mode: poison every request's buffers when it ends, so a driver that keeps one is caught by the verifier (slower).")
    var checked = false

    /// Why `path` cannot be mounted on (one line), or nil for a directory.
    static func mountpointProblem(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let e = errno
            if e == ENOENT { return "\(path) does not exist; create it first (mkdir -p \(shellQuoted(path)))" }
            return "\(path): \(String(cString: strerror(e)))"
        }
        if st.st_mode & S_IFMT != S_IFDIR { return "\(path) is not a directory; mount on an empty directory" }
        return nil
    }

    func run() throws {
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
            fail("/dev/fuse is missing: this machine cannot mount FUSE file systems")
        }
        let path = Daemon.absolute(mountpoint)
        if Daemon.isDeadMount(path) {
            // A wdmfs whose daemon was killed leaves the kernel's mount behind.
            FileHandle.standardError.write(Data("wdmfs: \(path) is a dead wdmfs mount (its daemon is gone); detaching it\n".utf8))
            if let problem = Daemon.clearDeadMount(path) { fail(problem) }
        }
        if let problem = Self.mountpointProblem(mountpoint) { fail(problem) }
        if case .failure(let why) = Verifier.Stress.parse(stress) { fail("--stress: \(why)") }
        if case .failure(let why) = IOManager.parseLogLevels(logLevel) { fail("--log-level: \(why.message)") }
        if Daemon.isMounted(path) { fail("\(path) is already mounted") }
        if !nonempty, Daemon.isNonEmptyDirectory(path) {
            fail("\(path) is not empty; mount on an empty directory, or give --nonempty to hide its files while mounted")
        }
        let description = treeDescription()  // a bad tree file stops here, before anything is mounted
        if let problem = checkSignatures(description) { fail(problem) }
        let log = logFile.map { Daemon.absolute($0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0) }
        if let log, let problem = Daemon.checkLogFile(log) { fail(problem) }

        if !foreground {
            var args = ["mount", path, "--foreground", "--notify-ready"]
            if let log { args += ["--log-file", log] }
            if bounceBuffers { args.append("--bounce-buffers") }
            if nonempty { args.append("--nonempty") }
            if checked { args.append("--checked") }
            if poll != .auto { args += ["--poll", poll.rawValue] }
            if verify != "none" { args += ["--verify", verify] }
            if verifierAction != .log { args += ["--verifier-action", verifierAction.rawValue] }
            if stress != "none" { args += ["--stress", stress] }
            if logLevel != "info" { args += ["--log-level", logLevel] }
            if testSigning { args.append("--test-signing") }
            for k in trustedKey { args += ["--trusted-key", Daemon.absolute(k)] }
            if tree != "default" { args += ["--tree", ["bench", "test"].contains(tree) ? tree : Daemon.absolute(tree)] }
            do {
                let pid = try Daemon.startInBackground(arguments: args)
                print("""
                    wdmfs: \(["default", "bench", "test"].contains(tree) ? tree : "the") tree mounted at \(path) (daemon pid \(pid))
                    try:
                      ls -l \(path)
                      dd if=\(path)/zero of=/dev/null bs=1M count=1024
                      echo hello | dd of=\(path)/ramdisk0 conv=notrunc && head -c 6 \(path)/ramdisk0
                      wdmfs ioctl \(path)/ramdisk0 IOCTL_DISK_GET_LENGTH_INFO --out-size 8
                      cat \(path)/.stats
                    unmount:
                      wdmfs unmount \(path)
                    """)
            } catch {
                fail("mount failed: \(error)")
            }
            return
        }

        Daemon.ignoreBrokenPipes()
        Daemon.parentWaits = notifyReady
        // Held until the daemon exits: a second daemon for this directory stops here.
        let lock: Int32
        switch Daemon.lockMountpoint(path) {
        case .success(let fd): lock = fd
        case .failure(let error): fail(error.description)
        }
        defer { close(lock) }
        if Daemon.isMounted(path) { fail("\(path) is already mounted") }

        if notifyReady { Daemon.startEarlyLog(log) }
        // The drivers' pool may hold half of the machine's memory (a RAM disk too big
        // for it fails its device, STATUS_INSUFFICIENT_RESOURCES, instead of the daemon).
        PoolMemory.setLimit(Int(clamping: ProcessInfo.processInfo.physicalMemory / 2))
        let io = IOManager(bounceBuffers: bounceBuffers, checkedBuffers: checked)
        io.log = { Daemon.log("wdmfs: \($0)") }
        io.verifier.onViolation = { Daemon.log("wdmfs: \($0)") }
        io.verifier.action = verifierAction
        switch Verifier.Stress.parse(stress) {
        case .success(let s): io.verifier.stress = s
        case .failure(let why): fail("--stress: \(why)")
        }
        if let why = io.setLogLevels(logLevel) { fail("--log-level: \(why)") }
        // The bug check: the report is logged (above); a daemon that serves ends as
        // on SIGTERM, every request answered; one still building its tree fails the mount.
        let serving = Atomic<Bool>(false)
        io.verifier.onBugCheck = { v in
            guard serving.load(ordering: .acquiring) else { return }
            Daemon.log("wdmfs: bug check 0xC9 (DRIVER_VERIFIER_IOMANAGER_VIOLATION): \(v.rule.rawValue) by \(v.driver ?? "?"); unmounting")
            kill(getpid(), SIGTERM)
        }
        // What the tree's drivers are is known once it is built; Verifier is set
        // before, so that AddDevice's checks apply: names are checked after.
        io.verifier.scope = Verifier.Scope(verify) ?? .none
        do {
            try description.build(into: io)
        } catch {
            fail("could not build the device tree: \(error)")
        }
        do {
            try io.createTraceDevice()
        } catch {
            fail("could not make the trace device: \(error)")
        }
        let bridge = FuseBridge(io: io)
        bridge.filterLoader = { [unowned io] name, settings in Self.loadFilter(name, settings, into: io) }
        if case .failure(let why) = bridge.verifierScope(verify) {
            io.unloadAll()
            fail("--verify: \(why)")
        }
        if let v = io.verifier.bugCheck {
            io.unloadAll()
            fail("bug check 0xC9 (DRIVER_VERIFIER_IOMANAGER_VIOLATION) while the tree was built: \(v)")
        }
        serving.store(true, ordering: .releasing)
        for (name, p) in description.permissions { bridge.permissions[name] = (p.mode, p.owner, p.group) }
        bridge.pollMode = poll
        let result: Int32
        do {
            result = try bridge.serve(mountpoint: path, options: Daemon.mountOptions(log: { Daemon.log("wdmfs: \($0)") })) {
                if notifyReady {
                    Daemon.announceReady(logFile: log)
                } else {
                    Daemon.log("wdmfs: mounted at \(path); Ctrl-C to unmount")
                }
                Daemon.log("wdmfs: serving \(io.symbolicLinks.joined(separator: " "))")
            }
        } catch {
            io.unloadAll()
            fail("\(error)")
        }
        // An orderly shutdown: power to S5 through every stack, then removal, then Unload.
        io.setSystemPower(.shutdown)
        io.unloadAll()
        Daemon.log("wdmfs: unmounted \(path)")
        if io.verifier.bugCheck != nil { throw ExitCode(3) }
        if result < 0 { throw ExitCode(1) }
    }
}

/// Prints to stderr (in a daemon, marked as its cause for `wdmfs mount`, and
/// to its log) and exits with status 2 (usage or system error).
func fail(_ message: String) -> Never {
    Daemon.fatal("wdmfs: " + message)
    exit(2)
}

extension Mount {
    /// The filter `attach NAME KEY=VALUE...` names, loaded once (as one action of
    /// the PnP manager, so two attaches at once load it once), and its settings as
    /// device parameters: KEY is a setting's name (`ErrorRate`) or its key in the
    /// filter's settings file (`rate`). The drivers for tests only cannot be attached.
    static func loadFilter(_ name: String, _ settings: [String], into io: IOManager) -> Result<(DriverObject, [String: String]), FilterRefusal> {
        let filters = DriverCatalog.all.filter { $0.role == .filter && !$0.testOnly }
        guard let e = filters.first(where: { $0.name == name }) else {
            return .failure(FilterRefusal("no filter named \(name): " + filters.map(\.name).joined(separator: ", ")))
        }
        let prefix = e.name.hasSuffix("Filter") ? String(e.name.dropLast("Filter".count)) : e.name
        var parameters: [String: String] = [:]
        for item in settings {
            guard let eq = item.firstIndex(of: "=") else { return .failure(FilterRefusal("`\(item)` is not KEY=VALUE")) }
            let key = String(item[..<eq]), value = String(item[item.index(after: eq)...])
            guard let s = e.settings.first(where: { $0.name == key || $0.name.lowercased() == (prefix + key).lowercased() }) else {
                let keys = e.settings.map { $0.name.dropFirst(prefix.count).lowercased() }
                return .failure(FilterRefusal("\(name) has no setting `\(key)`" + (keys.isEmpty ? "" : ": " + keys.joined(separator: ", "))))
            }
            if let why = s.problem(with: value) { return .failure(FilterRefusal("\(key) \(why), not `\(value)`")) }
            parameters[s.name] = value
        }
        return io.changeTree {
            if let d = io.loadedDrivers.first(where: { $0.name == e.driverName }) { return .success((d, parameters)) }
            do {
                return .success((try io.loadDriver(name: e.name, entry: e.entry), parameters))
            } catch {
                return .failure(FilterRefusal("\(e.driverName)'s DriverEntry failed: \(error)"))
            }
        }
    }
}

extension FuseBridge.PollMode: ExpressibleByArgument {}
extension Verifier.Action: ExpressibleByArgument {}

/// `path` as a shell word: as it is when it is plain, else in single quotes.
func shellQuoted(_ path: String) -> String {
    let plain = path.allSatisfy { $0.isLetter || $0.isNumber || "/._-+,:@%".contains($0) }
    return plain && !path.isEmpty ? path : "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
