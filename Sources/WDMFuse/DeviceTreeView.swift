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
    case status, problem, stack, power, handles, control, result
    case filterLog = "filter.log"
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
        default: false
        }
    }

    case top
    case node(DeviceNode)
    case file(DeviceNode, NodeFile)
    /// `.interfaces` and `.interfaces/{GUID}`.
    case interfaceDir([String])
    /// `.interfaces/{GUID}/instance`: a symbolic link to the device file.
    case interfaceLink(String)
}

extension FuseBridge {
    /// Inodes of `.devices` entries start here (device files count up from 4).
    static let treeBase: fuse_ino_t = 1 << 40

    /// What `path` (`.devices`, `.devices/a/b`, `.devices/a/status`) names now, if anything.
    func resolve(_ path: String) -> TreeEntry? {
        if path == ".interfaces" || path.hasPrefix(".interfaces/") { return resolveInterface(path) }
        var parts = path.split(separator: "/").map(String.init)
        guard parts.first == ".devices" else { return nil }
        parts.removeFirst()
        var nodes = io.deviceNodes.filter { $0.state != .removed }
        var current: DeviceNode?
        for (i, part) in parts.enumerated() {
            if let node = current, i == parts.count - 1, let f = NodeFile(rawValue: part) { return .file(node, f) }
            guard let next = nodes.first(where: { $0.instanceName == part }) else { return nil }
            current = next
            nodes = next.children.filter { $0.state != .removed }
        }
        return current.map { .node($0) } ?? .top
    }

    /// `.interfaces/{GUID}/instance` -> `../../FILE` for every enabled interface.
    func resolveInterface(_ path: String) -> TreeEntry? {
        let parts = path.split(separator: "/").map(String.init)
        let enabled = io.enabledInterfaces()
        switch parts.count {
        case 1: return .interfaceDir(Array(Set(enabled.map(\.classGUID))).sorted())
        case 2:
            let mine = enabled.filter { $0.classGUID == parts[1] }
            return mine.isEmpty ? nil : .interfaceDir(mine.map(\.instance).sorted())
        case 3:
            guard enabled.contains(where: { $0.classGUID == parts[1] && $0.instance == parts[2] }),
                  let file = io.link(forInstance: parts[2]), io.isPresent(file)
            else { return nil }
            return .interfaceLink("../../" + file)
        default: return nil
        }
    }

    /// The inode of a `.devices` path that exists now.
    func treeInode(_ path: String) -> fuse_ino_t? {
        guard resolve(path) != nil else { return nil }
        return inodes.withLock { t in
            if let ino = t.byName[path] { return ino }
            let ino = FuseBridge.treeBase + t.nextTree
            t.nextTree += 1
            t.byName[path] = ino
            t.byInode[ino] = path
            return ino
        }
    }

    /// The `.devices` path of an inode.
    func treePath(_ ino: fuse_ino_t) -> String? {
        ino >= FuseBridge.treeBase ? inodes.withLock { $0.byInode[ino] } : nil
    }

    /// A directory's entries: child nodes, then the node's files.
    func treeEntries(_ path: String) -> [(name: String, ino: fuse_ino_t, dir: Bool)]? {
        switch resolve(path) {
        case .interfaceDir(let names)?:
            let leaf = path.split(separator: "/").count == 2
            return names.compactMap { n in treeInode(path + "/" + n).map { (n, $0, !leaf) } }
        case .top?:
            return io.deviceNodes.filter { $0.state != .removed }.compactMap { n in treeInode(path + "/" + n.instanceName).map { (n.instanceName, $0, true) } }
        case .node(let node)?:
            let children = node.children.filter { $0.state != .removed }.compactMap { n in treeInode(path + "/" + n.instanceName).map { (n.instanceName, $0, true) } }
            let files = NodeFile.allCases.compactMap { f in treeInode(path + "/" + f.rawValue).map { (f.rawValue, $0, false) } }
            return children + files
        default:
            return nil
        }
    }

    /// A node file's text.
    func text(_ node: DeviceNode, _ file: NodeFile) -> String {
        switch file {
        case .deviceID: return (node.hardwareIDs.first ?? "") + "\n"
        case .instanceID: return node.instanceName + "\n"
        case .hardwareIDs: return node.hardwareIDs.map { $0 + "\n" }.joined()
        case .compatibleIDs: return node.compatibleIDs.map { $0 + "\n" }.joined()
        case .status:
            switch node.state {
            case .started: return "started\n"
            case .surpriseRemoved: return "surprise-removed\n"
            case .disabled: return "disabled\n"
            case .removed: return "removed\n"
            default: return node.problem == nil ? "\(node.state.rawValue)\n" : "problem\n"
            }
        case .problem:
            guard let p = node.problem else { return "0\n" }
            return "\(p.rawValue) CM_PROB_\(String(describing: p).uppercasedWords)\n"
        case .stack:
            var lines: [String] = []
            var d = node.pdo?.topOfStack
            while let device = d {
                lines.append("\(device.driverObject.name) \(device.name ?? "")".trimmingTrailingSpace)
                d = device.lowerDevice
            }
            return lines.map { $0 + "\n" }.joined()
        case .power: return "\(node.pdo?.topOfStack.powerState.description ?? "D3")\n"
        case .handles: return "\(node.pdo?.topOfStack.openHandles.load(ordering: .relaxed) ?? 0)\n"
        case .control: return ""
        case .result: return lastResults.withLock { $0[node.instanceName] } ?? ""
        case .filterLog: return node.log.map { $0 + "\n" }.joined()
        }
    }

    /// A verb written to a node's `control` file: `remove` (orderly: a driver may
    /// veto it, EBUSY), `rescan` (ask a bus for its children again).
    func control(_ node: DeviceNode, _ verb: String) -> Int32 {
        func result(_ text: String) { lastResults.withLock { $0[node.instanceName] = text + "\n" } }
        switch verb {
        case "remove":
            let (status, vetoedBy) = io.remove(node)
            if !status.isSuccess {
                let why = "remove vetoed by \(vetoedBy?.driverObject.name ?? "a driver"): \(status)"
                io.log?("\(node.instanceName): \(why)")
                result(why)
                return EBUSY
            }
            result("removed")
            return 0
        case "disable", "restart":
            let (status, vetoedBy) = verb == "disable" ? io.disable(node) : io.restart(node)
            if !status.isSuccess {
                result("\(verb) " + (vetoedBy.map { "vetoed by \($0.driverObject.name)" } ?? "failed") + ": \(status)")
                return EBUSY
            }
            result(verb == "disable" ? "disabled" : "restarted")
            return 0
        case "enable":
            let status = io.enable(node)
            result(status.isSuccess ? "enabled" : "enable failed: \(status)")
            return status.isSuccess ? 0 : EIO
        case "rescan":
            if let pdo = node.pdo { io.invalidateDeviceRelations(pdo); io.waitForPnP() }
            result("rescanned")
            return 0
        default:
            return EINVAL
        }
    }
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
