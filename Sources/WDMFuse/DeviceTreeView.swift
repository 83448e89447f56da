// DeviceTreeView: the PnP tree under `.devices/`, one directory per device
// node, nested by parent, each with small files a person can cat (its IDs,
// status and problem code, its stack from top to bottom, its power state, its
// open handles) and a `control` file a script writes devcon's verbs to.

import CFuse
import Glibc
import WDM

/// A node directory's files.
enum NodeFile: String, CaseIterable {
    case deviceID = "device_id", instanceID = "instance_id", hardwareIDs = "hardware_ids", compatibleIDs = "compatible_ids"
    case description, status, problem, stack, power, handles, control, result
    case filterLog = "filter.log"
    /// The last IRPs of the stack, while Verifier's `irp-log` stress option is on.
    case irpLog = "irp_log"

    private static let indices = Dictionary(uniqueKeysWithValues: allCases.enumerated().map { ($1, $0) })
    /// Its place in `allCases` (part of its inode number).
    var index: Int { Self.indices[self]! }
}

/// What a path under `.devices` or `.interfaces` names.
enum TreeEntry: Equatable {
    static func == (a: TreeEntry, b: TreeEntry) -> Bool {
        switch (a, b) {
        case (.top, .top): true
        case (.node(let x), .node(let y)): x === y
        case (.file(let x, let f), .file(let y, let g)): x === y && f == g
        case (.interfaceDir(let x), .interfaceDir(let y)): x == y
        case (.interfaceLink(let x), .interfaceLink(let y)): x == y
        case (.rootControl, .rootControl): true
        case (.setting(let x, let f), .setting(let y, let g)): x === y && f == g
        default: false
        }
    }

    case top
    case node(NodeView)
    case file(NodeView, NodeFile)
    /// `.interfaces` and `.interfaces/{GUID}`.
    case interfaceDir([String])
    /// `.interfaces/{GUID}/instance`: a symbolic link to the device file.
    case interfaceLink(String)
    /// `.devices/.control`: verbs for the whole tree (`rescan`: the root's).
    case rootControl
    /// A settings file a driver of the node's stack published (`error`).
    case setting(NodeView, String)
}

extension FuseBridge {
    /// Inodes of `.devices` entries start here (device files count up from 4).
    static let treeBase: fuse_ino_t = 1 << 40
    /// Node files' inodes start here (see `Inodes.inode(directory:_:)`).
    static let fileBase: fuse_ino_t = 1 << 41

    /// What `path` (`.devices`, `.devices/a/b`, `.devices/a/status`) names in the
    /// tree the PnP manager last published (one dictionary look-up).
    func resolve(_ path: String, in tree: TreeSnapshot? = nil) -> TreeEntry? {
        if path == ".interfaces" || path.hasPrefix(".interfaces/") { return resolveInterface(path, in: tree ?? io.pnp.snapshot) }
        if path == ".devices" { return .top }
        if path == ".devices/.control" { return .rootControl }
        guard path.hasPrefix(".devices/") else { return nil }
        let tree = tree ?? io.pnp.snapshot
        let rest = String(path.dropFirst(".devices/".count))
        if let node = tree.node(atPath: rest) { return .node(node) }
        guard let slash = rest.lastIndex(of: "/"), let node = tree.node(atPath: String(rest[..<slash])) else { return nil }
        let name = String(rest[rest.index(after: slash)...])
        if let f = NodeFile(rawValue: name) { return .file(node, f) }
        // Looked up in the live stack: a filter attached or detached since the snapshot counts.
        guard node.node.publishedSettings.contains(where: { $0.name == name }) else { return nil }
        return .setting(node, name)
    }

    /// `.interfaces/{GUID}/instance` -> `../../FILE` for every enabled interface.
    func resolveInterface(_ path: String, in tree: TreeSnapshot) -> TreeEntry? {
        let parts = path.split(separator: "/").map(String.init)
        let enabled = io.enabledInterfaces()
        switch parts.count {
        case 1: return .interfaceDir(io.knownInterfaceClasses.sorted())
        case 2:
            // A class with no enabled interface left is an empty directory while it
            // is known, not "not a directory".
            guard enabled.contains(where: { $0.classGUID == parts[1] }) || io.isRegisteredInterfaceClass(parts[1]) else { return nil }
            return .interfaceDir(enabled.filter { $0.classGUID == parts[1] }.map(\.instance).sorted())
        case 3:
            guard enabled.contains(where: { $0.classGUID == parts[1] && $0.instance == parts[2] }),
                  let file = tree.node(named: parts[2])?.link, tree.presentLinks.contains(file)
            else { return nil }
            return .interfaceLink("../../" + file)
        default: return nil
        }
    }

    /// The inode of a `.devices` path that exists now.
    func treeInode(_ path: String, in tree: TreeSnapshot? = nil) -> fuse_ino_t? {
        switch resolve(path, in: tree) {
        case nil: return nil
        case .file(_, let f)?:
            let dir = String(path[..<path.lastIndex(of: "/")!])
            return inodes.withLock { $0.inode(directory: dir, f) }
        default: return inodes.withLock { $0.inode(path) }
        }
    }

    /// The `.devices` path of an inode.
    func treePath(_ ino: fuse_ino_t) -> String? {
        InodeKind(ino).isTree ? inodes.withLock { $0.path(ino) } : nil
    }

    /// A directory's entries: child nodes, then the node's files. One snapshot for
    /// the whole listing, so it costs O(entries).
    func treeEntries(_ path: String) -> [(name: String, ino: fuse_ino_t, dir: Bool)]? {
        let tree = io.pnp.snapshot
        switch resolve(path, in: tree) {
        case .interfaceDir(let names)?:
            let leaf = path.split(separator: "/").count == 2
            return names.compactMap { n in treeInode(path + "/" + n, in: tree).map { (n, $0, !leaf) } }
        case .top?:
            // Every name below exists in `tree`: no need to resolve each again.
            let names = tree.roots.map { ($0.name, true) } + [(".control", false)]
            return inodes.withLock { t in names.map { (n, d) in (n, t.inode(path + "/" + n), d) } }
        case .node(let node)?:
            let children = node.children.map(\.name)
            let settings = node.node.publishedSettings.map(\.name)
            return inodes.withLock { t in
                children.map { ($0, t.inode(path + "/" + $0), true) }
                    + NodeFile.allCases.map { ($0.rawValue, t.inode(directory: path, $0), false) }
                    + settings.map { ($0, t.inode(path + "/" + $0), false) }
            }
        default:
            return nil
        }
    }

    /// A node file's text.
    func text(_ node: NodeView, _ file: NodeFile) -> String {
        switch file {
        case .deviceID: return (node.hardwareIDs.first ?? "") + "\n"
        case .instanceID: return node.name + "\n"
        case .hardwareIDs: return node.hardwareIDs.map { $0 + "\n" }.joined()
        case .compatibleIDs: return node.compatibleIDs.map { $0 + "\n" }.joined()
        case .description: return node.description.map { $0 + "\n" } ?? ""
        case .status: return statusText(node) + "\n"
        case .problem:
            guard let p = node.problem else { return "0\n" }
            return "\(p.rawValue) CM_PROB_\(String(describing: p).uppercasedWords)\(node.problemStatus.map { " " + $0.description } ?? "")\n"
        case .stack: return node.stack.map { $0 + "\n" }.joined()
        case .power: return "\(node.powerState)\n"
        case .handles: return "\(node.handles)\n"
        case .control: return ""
        case .result: return lastResults.withLock { $0[node.path] } ?? ""
        case .filterLog: return node.node.log.map { $0 + "\n" }.joined()
        case .irpLog: return node.node.irpLog.map { $0 + "\n" }.joined()
        }
    }

    /// A node's `status`: its state (`started`, `disabled`, ...; the word `wdmfs
    /// status` shows too), and for a started node that is not in D0 or while the
    /// system is not in S0, its device power state: `started, D3 (system S3)`.
    func statusText(_ node: NodeView) -> String {
        guard node.state == .started else { return node.status }
        let device = node.powerState, system = io.systemPowerState
        if system != .working { return "\(node.status), \(device) (system \(system))" }
        return device == .d0 ? node.status : "\(node.status), \(device)"
    }

    /// A verb written to a node's `control` file: remove, disable, enable,
    /// restart, rebalance, eject (a driver or an open handle may veto: EBUSY,
    /// with who and why in `result`), rescan (ask a bus for its children again),
    /// `attach FILTER [KEY=VALUE ...]` and `detach FILTER` (a filter on the running stack,
    /// starting with those settings). Each
    /// runs as one action of the PnP manager and is waited for.
    func control(_ view: NodeView, _ words: [String]) -> Int32 {
        func result(_ text: String) { lastResults.withLock { $0[view.path] = text + "\n" } }
        let node = view.node
        let verb = words.first ?? ""
        let r: PnPResult
        let done: String
        let settingsBefore = node.publishedSettings.map(\.name)
        switch (verb, words.count) {
        case ("remove", 1): (r, done) = (io.remove(node), "removed")
        case ("disable", 1): (r, done) = (io.disable(node), "disabled")
        case ("enable", 1): (r, done) = (io.enable(node), "enabled")
        case ("restart", 1): (r, done) = (io.restart(node), "restarted")
        case ("rebalance", 1): (r, done) = (io.rebalance(node), "rebalanced")
        case ("eject", 1): (r, done) = (io.eject(node), "ejected")
        case ("rescan", 1): (r, done) = (io.rescan(node), "rescanned")
        case ("attach", 2...):
            switch filterLoader?(words[1], Array(words.dropFirst(2))) ?? .failure(FilterRefusal("this mount cannot attach filters")) {
            case .success(let (driver, parameters)):
                r = io.attachFilter(driver, to: node, parameters: parameters)
                let added = node.publishedSettings.map(\.name).filter { !settingsBefore.contains($0) }
                done = "attached \(words[1])" + (added.first.map { "; its settings: " + $0 } ?? "")
            case .failure(let refusal):
                io.log?("\(view.path): attach \(words[1]) failed: \(refusal.message)")
                result("attach \(words[1]) failed: \(refusal.message)")
                return ENOENT
            }
        case ("detach", 2): (r, done) = (io.detachFilter(named: words[1], from: node), "detached \(words[1])")
        default:
            result("unknown verb \(words.joined(separator: " ").debugDescription): remove, disable, enable, restart, rebalance, eject, rescan, attach FILTER or detach FILTER")
            return EINVAL
        }
        guard r.isSuccess else {
            let why = "\(words.joined(separator: " ")) failed: \(r)"
            io.log?("\(view.path): \(why)")
            result(why)
            if r.vetoType != nil { return EBUSY }
            if r.status == .noSuchDevice { return ENODEV }
            if r.status == .invalidDeviceState { return EBUSY }
            return r.detail?.hasPrefix("already") == true ? EALREADY : EINVAL
        }
        if verb == "attach" || verb == "detach" { settingsChanged(view, settingsBefore) }
        result(done)
        return 0
    }

    /// A filter came or went: the node's directory lists other settings files.
    /// The kernel forgets its listing and the names (a name looked up before the
    /// filter came is remembered as absent), and has done so when this returns.
    func settingsChanged(_ view: NodeView, _ before: [String]) {
        guard let dir = inodes.withLock({ $0.byName[".devices/" + view.path] }) else { return }
        sink.invalidateInode(dir)
        for name in Set(before + view.node.publishedSettings.map(\.name)) {
            sink.invalidateEntry(parent: dir, name: name)
        }
        _ = (sink as? LibfuseSink)?.notificationsDone(within: 1)
    }

    /// Lines written to a settings file (`rate 0.01`), applied in order; the first
    /// refused one stops it: EINVAL, with why in the node's `result` and the log.
    func writeSettings(_ view: NodeView, _ name: String, _ text: String) -> Int32 {
        guard let settings = view.node.publishedSettings.first(where: { $0.name == name })?.settings else { return ENODEV }
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == ";" }) {
            if let why = settings.apply(String(line)) {
                io.log?("\(view.path)/\(name): \(why)")
                lastResults.withLock { $0[view.path] = "\(name): \(why)\n" }
                return EINVAL
            }
        }
        lastResults.withLock { $0[view.path] = "\(name): set\n" }
        return 0
    }
}

/// Why a filter cannot be attached (no such filter, not one that can be, a bad setting).
public struct FilterRefusal: Error {
    public let message: String
    public init(_ message: String) { self.message = message }
}

extension String {
    var uppercasedWords: String {
        var out = ""
        for c in self {
            if c.isUppercase { out += "_" }
            out += c.uppercased()
        }
        return out
    }
    var trimmingTrailingSpace: String {
        var s = self
        while s.hasSuffix(" ") { s.removeLast() }
        return s
    }
}
