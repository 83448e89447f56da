// The devcon verbs testers know, over the mount's `.devices` tree: they only
// read and write its files, so a shell script can do the same with cat and echo.

import ArgumentParser
import Foundation

/// The `.devices` tree of a mount, as files.
struct DeviceTreeFiles {
    let root: String
    init(_ mountpoint: String) {
        root = mountpoint + "/.devices"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir), isDir.boolValue else {
            fail("\(mountpoint) is not a mounted wdmfs tree (no .devices)")
        }
    }

    /// Every node directory, depth first, with its depth.
    func nodes(_ dir: String? = nil, depth: Int = 0) -> [(path: String, name: String, depth: Int)] {
        let dir = dir ?? root
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        var out: [(String, String, Int)] = []
        for name in entries.sorted() {
            var isDir: ObjCBool = false
            let path = dir + "/" + name
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { continue }
            out.append((path, name, depth))
            out += nodes(path, depth: depth + 1)
        }
        return out
    }

    /// Node directories named `names` (all when empty); exits 2 for an unknown one.
    func select(_ names: [String]) -> [(path: String, name: String, depth: Int)] {
        let all = nodes()
        if names.isEmpty { return all }
        return names.map { n in
            guard let hit = all.first(where: { $0.name == n }) else { fail("no device node named \(n)") }
            return hit
        }
    }

    func read(_ node: String, _ file: String) -> String {
        (try? String(contentsOfFile: node + "/" + file, encoding: .utf8)) ?? ""
    }

    func lines(_ node: String, _ file: String) -> [String] {
        read(node, file).split(separator: "\n").map(String.init)
    }
}

/// For verbs that show: every node when no name is given.
struct DeviceVerbOptions: ParsableArguments {
    @Argument(help: "Where the tree is mounted.") var mountpoint: String
    @Argument(help: "Device node instance names (all when none).") var devices: [String] = []
}

/// For verbs that change a node: at least one name, never all at once.
struct NamedDeviceOptions: ParsableArguments {
    @Argument(help: "Where the tree is mounted.") var mountpoint: String
    @Argument(help: "Device node instance names (one or more).") var devices: [String]
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The state of each device node: running, or its problem code (devcon status).",
        discussion: "Example:\n  wdmfs status /mnt/wdm toaster1\nExit status 1 when a device named has a problem.")
    @OptionGroup var options: DeviceVerbOptions

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        var failed = false
        for node in tree.select(options.devices) {
            let status = tree.read(node.path, "status").trimmingCharacters(in: .whitespacesAndNewlines)
            let problem = tree.read(node.path, "problem").trimmingCharacters(in: .whitespacesAndNewlines)
            if problem != "0" {
                failed = true
                print("\(node.name): \(status), problem \(problem)")
            } else {
                print("\(node.name): \(status == "started" ? "running" : status)")
            }
        }
        if failed && !options.devices.isEmpty { throw ExitCode(1) }
    }
}

struct HWIDs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hwids", abstract: "Hardware and compatible IDs of each device node (devcon hwids).",
        discussion: "Example:\n  wdmfs hwids /mnt/wdm")
    @OptionGroup var options: DeviceVerbOptions

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        for node in tree.select(options.devices) {
            let hw = tree.lines(node.path, "hardware_ids"), compat = tree.lines(node.path, "compatible_ids")
            print("\(node.name): hardware \(hw.joined(separator: " "))" + (compat.isEmpty ? "" : "; compatible \(compat.joined(separator: " "))"))
        }
    }
}

struct Stack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each device node's stack, top first (devcon stack).",
        discussion: "Example:\n  wdmfs stack /mnt/wdm ramdisk0")
    @OptionGroup var options: DeviceVerbOptions

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        for node in tree.select(options.devices) {
            print("\(node.name): " + tree.lines(node.path, "stack").map { $0.split(separator: " ").first.map(String.init) ?? $0 }.joined(separator: " > "))
        }
    }
}

/// Writes `verb` to each named node's control file; exit 1 (with the node's
/// `result`: who vetoed, which status) when the daemon refused one.
func controlVerb(_ verb: String, _ mountpoint: String, _ devices: [String], done: String) throws {
    let tree = DeviceTreeFiles(mountpoint)
    var failed = false
    for node in tree.select(devices) {
        if write(node.path + "/control", verb) {
            print("\(node.name): \(done)")
        } else {
            failed = true
            FileHandle.standardError.write(Data("wdmfs: \(node.name): \(tree.read(node.path, "result").trimmingCharacters(in: .whitespacesAndNewlines))\n".utf8))
        }
    }
    if failed { throw ExitCode(1) }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove device nodes and their children (QUERY_REMOVE, then REMOVE_DEVICE; a driver or an open handle may veto) (devcon remove).",
        discussion: "Example:\n  wdmfs remove /mnt/wdm echo\nExit status 1 when it was vetoed; the message names the device and the veto type.\n`wdmfs rescan MOUNTPOINT` brings a removed device back.")
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("remove", options.mountpoint, options.devices, done: "removed") }
}

struct Restart: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restart device nodes: remove them (vetoable, as remove), then AddDevice and START again (devcon restart).",
        discussion: "Example:\n  wdmfs restart /mnt/wdm ramdisk0")
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("restart", options.mountpoint, options.devices, done: "restarted") }
}

struct Rebalance: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop and start device nodes for a resource rebalance (QUERY_STOP, STOP, START; I/O that arrives meanwhile waits).",
        discussion: "Example:\n  wdmfs rebalance /mnt/wdm ramdisk0")
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("rebalance", options.mountpoint, options.devices, done: "rebalanced") }
}

struct Disable: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Disable device nodes: their stacks are removed, the nodes stay with CM_PROB_DISABLED (devcon disable).",
        discussion: "Example:\n  wdmfs disable /mnt/wdm echo")
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("disable", options.mountpoint, options.devices, done: "disabled") }
}

struct Enable: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Enable disabled device nodes: their stacks are built and started again (devcon enable).",
        discussion: "Example:\n  wdmfs enable /mnt/wdm echo")
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("enable", options.mountpoint, options.devices, done: "enabled") }
}

struct Rescan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask bus drivers for their children again; with no device, rescan from the root: removed root devices come back and every bus is asked (devcon rescan).",
        discussion: "Example:\n  wdmfs rescan /mnt/wdm toaster-bus\n  wdmfs rescan /mnt/wdm")
    @Argument(help: "Where the tree is mounted.") var mountpoint: String
    @Argument(help: "Bus device nodes (none: rescan from the root).") var devices: [String] = []

    func run() throws {
        let tree = DeviceTreeFiles(mountpoint)
        if devices.isEmpty {
            guard write(tree.root + "/.control", "rescan") else { fail("\(mountpoint): the rescan failed") }
            print("rescanned")
            return
        }
        try controlVerb("rescan", mountpoint, devices, done: "rescanned")
    }
}

/// Writes a verb to a control file; false when the daemon refused it.
func write(_ path: String, _ verb: String) -> Bool {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array((verb + "\n").utf8)
    return bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) } == bytes.count
}
