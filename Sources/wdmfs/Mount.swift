// `wdmfs mount`: builds the device tree and serves it through FUSE.

import ArgumentParser
import DefaultTree
import Foundation
import WDM
import WDMClient
import WDMFuse

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

    @Option(help: "Which tree: default, or bench (adds zero-stacked: zero under two filters).")
    var tree: TreeName = .default

    enum TreeName: String, ExpressibleByArgument, CaseIterable {
        case `default`, bench
    }

    @Flag(help: .hidden)
    var notifyReady = false

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: mountpoint, isDirectory: &isDir), isDir.boolValue else {
            throw ValidationError("\(mountpoint) is not a directory; create it first (mkdir -p \(mountpoint))")
        }
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
            fail("/dev/fuse is missing: this machine cannot mount FUSE file systems")
        }
        let path = Daemon.absolute(mountpoint)
        if Daemon.isMounted(path) { fail("\(path) is already mounted") }

        if !foreground {
            var args = ["mount", path, "--foreground", "--notify-ready"]
            if let logFile { args += ["--log-file", Daemon.absolute(logFile.hasPrefix("/") ? logFile : FileManager.default.currentDirectoryPath + "/" + logFile)] }
            if bounceBuffers { args.append("--bounce-buffers") }
            if tree != .default { args += ["--tree", tree.rawValue] }
            do {
                let pid = try Daemon.startInBackground(arguments: args)
                print("""
                    wdmfs: default tree mounted at \(path) (daemon pid \(pid))
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

        let io = IOManager(bounceBuffers: bounceBuffers)
        io.log = { Daemon.log("wdmfs: \($0)") }
        io.verifier.onViolation = { Daemon.log("wdmfs: \($0)") }
        do {
            try DefaultTree.build(into: io, options: .init(bench: tree == .bench))
        } catch {
            fail("could not build the device tree: \(error)")
        }
        let bridge = FuseBridge(io: io)
        let result: Int32
        do {
            result = try bridge.serve(mountpoint: path) {
                if notifyReady {
                    Daemon.announceReady(logFile: logFile)
                } else {
                    Daemon.log("wdmfs: mounted at \(path); Ctrl-C to unmount")
                }
                Daemon.log("wdmfs: serving \(io.symbolicLinks.joined(separator: " "))")
            }
        } catch {
            io.unloadAll()
            fail("\(error)")
        }
        io.unloadAll()
        Daemon.log("wdmfs: unmounted \(path)")
        if result < 0 { throw ExitCode(1) }
    }
}

/// Prints to stderr and exits with status 2 (usage or system error).
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("wdmfs: " + message + "\n").utf8))
    exit(2)
}
