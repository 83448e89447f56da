// The devcon verbs testers know, over the mount's `.devices` tree: they only
// read and write its files, so a shell script can do the same with cat and echo.

import ArgumentParser
import Foundation

/// One node directory of `.devices`.
struct NodeDir {
    /// The directory.
    let path: String
    /// Its instance name.
    let name: String
    /// Its path under `.devices` (`toaster-bus/toaster1`).
    let treePath: String
    let depth: Int
}

/// The `.devices` tree of a mount, as files.
struct DeviceTreeFiles {
    let mountpoint: String
    let root: String
    init(_ mountpoint: String) {
        self.mountpoint = mountpoint
        root = mountpoint + "/.devices"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir), isDir.boolValue else {
            fail("\(mountpoint) is not a mounted wdmfs tree (no .devices)")
        }
    }

    /// The node directories directly under `dir` (the roots when nil), in natural order.
    func children(of dir: NodeDir? = nil) -> [NodeDir] {
        let path = dir?.path ?? root
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return entries.sorted(by: naturalOrder).compactMap { name in
            var isDir: ObjCBool = false
            let p = path + "/" + name
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue else { return nil }
            return NodeDir(path: p, name: name, treePath: dir.map { $0.treePath + "/" + name } ?? name, depth: (dir?.depth ?? -1) + 1)
        }
    }

    /// Every node directory, depth first, each parent before its children.
    func nodes(_ dir: NodeDir? = nil) -> [NodeDir] {
        children(of: dir).flatMap { [$0] + nodes($0) }
    }

    /// Each name with its node, nil for a name no node has; every node when `names` is empty.
    func lookup(_ names: [String]) -> [(name: String, node: NodeDir?)] {
        let all = nodes()
        if names.isEmpty { return all.map { ($0.name, $0) } }
        return names.map { n in (n, all.first { $0.name == n }) }
    }

    /// Node directories named `names` (all when empty); exits 2, before anything
    /// is done, naming every unknown one.
    func select(_ names: [String]) -> [NodeDir] {
        let found = lookup(names)
        let missing = found.filter { $0.node == nil }.map(\.name)
        if !missing.isEmpty { fail("no device node named \(missing.joined(separator: ", "))") }
        return found.compactMap(\.node)
    }

    func read(_ node: NodeDir, _ file: String) -> String {
        (try? String(contentsOfFile: node.path + "/" + file, encoding: .utf8)) ?? ""
    }

    func lines(_ node: NodeDir, _ file: String) -> [String] {
        read(node, file).split(separator: "\n").map(String.init)
    }

    func trimmed(_ node: NodeDir, _ file: String) -> String {
        read(node, file).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `show` for each named node (every node when none is named) in order;
    /// a name no node has is reported on stderr where it comes. True when a name
    /// was unknown (the caller exits 2 once it has shown the others).
    func forEachNamed(_ names: [String], _ show: (NodeDir) -> Void) -> Bool {
        var missing = false
        for (name, node) in lookup(names) {
            guard let node else {
                complain("no device node named \(name)")
                missing = true
                continue
            }
            show(node)
        }
        return missing
    }
}

/// A message on stderr, after whatever stdout holds so far.
func complain(_ message: String) {
    fflush(nil)  // stdout
    FileHandle.standardError.write(Data("wdmfs: \(message)\n".utf8))
}

/// Numeric-aware order: `toaster2` before `toaster10`; otherwise as `<` (so
/// names that differ only in leading zeros still have an order).
func naturalOrder(_ a: String, _ b: String) -> Bool {
    func runs(_ s: String) -> [(digits: Bool, text: Substring)] {
        var out: [(Bool, Substring)] = []
        var start = s.startIndex
        while start < s.endIndex {
            let digits = s[start].isASCII && s[start].isNumber
            let end = s[start...].firstIndex { ($0.isASCII && $0.isNumber) != digits } ?? s.endIndex
            out.append((digits, s[start..<end]))
            start = end
        }
        return out
    }
    let x = runs(a), y = runs(b)
    for (p, q) in zip(x, y) {
        if p.digits && q.digits {
            let m = p.text.drop { $0 == "0" }, n = q.text.drop { $0 == "0" }
            if m.count != n.count { return m.count < n.count }
            if m != n { return m < n }
        } else if p.text != q.text {
            return p.text < q.text
        }
    }
    if x.count != y.count { return x.count < y.count }
    return a < b
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

/// `--json`, for the verbs that show.
struct JSONFlag: ParsableArguments {
    @Flag(help: "Print one JSON array, one object per node (keys in the discussion), for scripts.")
    var json = false
}

/// Prints `records` as one JSON array, one object a line, keys sorted (`\Driver\X`
/// has its backslashes escaped, as JSON wants, and nothing else).
func printJSON(_ records: [[String: Any]]) {
    do {
        let lines = try records.map {
            String(decoding: try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
        }
        print(lines.isEmpty ? "[]" : "[\n" + lines.joined(separator: ",\n") + "\n]")
    } catch {
        fail("cannot write JSON: \(error)")
    }
}

extension DeviceTreeFiles {
    /// The system power state, as `.power` says (`S0`).
    var systemPower: String {
        ((try? String(contentsOfFile: mountpoint + "/.power", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A node's state for `status --json` and `tree --json`.
    func statusRecord(_ node: NodeDir, systemPower: String) -> [String: Any] {
        let status = trimmed(node, "status")
        let problem = trimmed(node, "problem").split(separator: " ")
        return [
            "name": node.name, "path": node.treePath,
            "state": String(status.prefix { $0 != "," }), "status": status,
            "problem": Int(problem.first ?? "0") ?? 0,
            "problem_name": problem.count > 1 ? String(problem[1]) : NSNull(),
            "problem_status": problem.count > 2 ? String(problem[2]) : NSNull(),
            "power": trimmed(node, "power"), "system_power": systemPower,
        ]
    }
}

/// The keys of a node's state in JSON (status and tree).
let statusKeysHelp = """
      name          its instance name (toaster1)
      path          its place under .devices (toaster-bus/toaster1)
      state         started, disabled, stopped, surprise-removed, problem, ...
      status        its status file (started, D3 (system S3))
      problem       the CM_PROB number, 0 for none
      problem_name  CM_PROB_DISABLED, or null
      problem_status  the problem's NTSTATUS (STATUS_DRIVER_PROCESS_TERMINATED), or null
      power         the device power state of its stack (D0 ... D3)
      system_power  the system power state (S0 ... S5)
    """

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The state of each device node, as its status file says (started, disabled, ...; with its power state when not D0 or the system is not in S0), and its problem code (devcon status).",
        discussion: """
            Example:
              wdmfs status /mnt/wdm toaster1
            Exit status 1 when a device named has a problem; 2 when a name is no device
            node (the others are shown first).
            With --json, an array of objects with these keys:
            \(statusKeysHelp)
            """)
    @OptionGroup var options: DeviceVerbOptions
    @OptionGroup var output: JSONFlag

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        let system = tree.systemPower
        var problem = false
        var records: [[String: Any]] = []
        let missing = tree.forEachNamed(options.devices) { node in
            let status = tree.trimmed(node, "status")
            let code = tree.trimmed(node, "problem")
            if code != "0" { problem = true }
            if output.json {
                records.append(tree.statusRecord(node, systemPower: system))
            } else {
                print("\(node.name): \(status)" + (code != "0" ? ", problem \(code)" : ""))
            }
        }
        if output.json { printJSON(records) }
        if missing { throw ExitCode(2) }
        if problem && !options.devices.isEmpty { throw ExitCode(1) }
    }
}

struct HWIDs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hwids", abstract: "Hardware and compatible IDs of each device node (devcon hwids).",
        discussion: """
            Example:
              wdmfs hwids /mnt/wdm
            Exit status 2 when a name is no device node (the others are shown first).
            With --json, an array of objects with these keys:
              name            its instance name (toaster1)
              path            its place under .devices (toaster-bus/toaster1)
              hardware_ids    its hardware IDs, most specific first
              compatible_ids  its compatible IDs (possibly none)
            """)
    @OptionGroup var options: DeviceVerbOptions
    @OptionGroup var output: JSONFlag

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        var records: [[String: Any]] = []
        let missing = tree.forEachNamed(options.devices) { node in
            let hw = tree.lines(node, "hardware_ids"), compat = tree.lines(node, "compatible_ids")
            if output.json {
                records.append(["name": node.name, "path": node.treePath, "hardware_ids": hw, "compatible_ids": compat])
            } else {
                print("\(node.name): hardware \(hw.joined(separator: " "))" + (compat.isEmpty ? "" : "; compatible \(compat.joined(separator: " "))"))
            }
        }
        if output.json { printJSON(records) }
        if missing { throw ExitCode(2) }
    }
}

struct Stack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each device node's stack, top first (devcon stack).",
        discussion: """
            Example:
              wdmfs stack /mnt/wdm ramdisk0
            Exit status 2 when a name is no device node (the others are shown first).
            With --json, an array of objects with these keys:
              name   its instance name (ramdisk0)
              path   its place under .devices
              stack  its device objects, top first: {"driver": "\\Driver\\RamDisk",
                     "device": "\\Device\\00000005" or null for an unnamed one}
            """)
    @OptionGroup var options: DeviceVerbOptions
    @OptionGroup var output: JSONFlag

    func run() throws {
        let tree = DeviceTreeFiles(options.mountpoint)
        var records: [[String: Any]] = []
        let missing = tree.forEachNamed(options.devices) { node in
            // Each line: `\Driver\X` or `\Driver\X \Device\Y`.
            let stack = tree.lines(node, "stack").map { line -> (driver: String, device: String?) in
                guard let space = line.firstIndex(of: " ") else { return (line, nil) }
                return (String(line[..<space]), String(line[line.index(after: space)...]))
            }
            if output.json {
                let objects: [[String: Any]] = stack.map { ["driver": $0.driver, "device": $0.device ?? NSNull()] }
                records.append(["name": node.name, "path": node.treePath, "stack": objects])
            } else {
                print("\(node.name): " + stack.map(\.driver).joined(separator: " > "))
            }
        }
        if output.json { printJSON(records) }
        if missing { throw ExitCode(2) }
    }
}

/// Writes `verb` to each named node's control file; exit 1 (with the node's
/// `result`: who vetoed, which status) when the daemon refused one, or with
/// `NAME: already DONE` when there was nothing to do (the bridge answers EALREADY).
func controlVerb(_ verb: String, _ mountpoint: String, _ devices: [String], done: String) throws {
    let tree = DeviceTreeFiles(mountpoint)
    var failed = false
    for node in tree.select(devices) {
        switch write(node.path + "/control", verb) {
        case 0:
            print("\(node.name): \(done)")
        case EALREADY:
            failed = true
            complain("\(node.name): already \(done)")
        default:
            failed = true
            complain("\(node.name): \(tree.trimmed(node, "result"))")
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
        discussion: """
            Example:
              wdmfs disable /mnt/wdm echo
            Exit status 1 when it was vetoed (the message names the device and the veto
            type) or the device was already disabled (NAME: already disabled).
            """)
    @OptionGroup var options: NamedDeviceOptions
    func run() throws { try controlVerb("disable", options.mountpoint, options.devices, done: "disabled") }
}

struct Enable: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Enable disabled device nodes: their stacks are built and started again (devcon enable).",
        discussion: """
            Example:
              wdmfs enable /mnt/wdm echo
            Exit status 1 when it failed or the device was already enabled (NAME: already enabled).
            """)
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
            guard write(tree.root + "/.control", "rescan") == 0 else { fail("\(mountpoint): the rescan failed") }
            print("rescanned")
            return
        }
        try controlVerb("rescan", mountpoint, devices, done: "rescanned")
    }
}

/// Writes a verb to a control file: 0, or the errno with which the daemon refused it.
func write(_ path: String, _ verb: String) -> Int32 {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { return errno }
    defer { close(fd) }
    let bytes = Array((verb + "\n").utf8)
    let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
    return n == bytes.count ? 0 : n < 0 ? errno : EIO
}
