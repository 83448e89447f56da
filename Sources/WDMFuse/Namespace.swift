// Namespace: what the mount's names and inode numbers are. Device files get
// numbers from 5 as their names are first seen; `.stats` is 2, `.power` 3,
// `.verifier` 4;
// `.devices` and `.interfaces` paths number from `treeBase`, and a node's files
// derive theirs from their directory's (`fileBase`). `InodeKind` is the one place
// the ranges are read. Lookups, attributes and invalidation follow the snapshots
// the PnP manager publishes.

import CFuse
import Glibc
import WDM

/// What an inode number names, by its range.
enum InodeKind: Equatable {
    case root, stats, power, verifier
    /// A device's file (its name is in the inode table).
    case deviceFile
    /// A `.devices` or `.interfaces` path (in the inode table).
    case treeEntry
    /// A node's file (`status`, `control`...): its directory's number and the file's.
    case nodeFile

    init(_ ino: fuse_ino_t) {
        switch ino {
        case 1: self = .root
        case 2: self = .stats
        case 3: self = .power
        case 4: self = .verifier
        case FuseBridge.fileBase...: self = .nodeFile
        case FuseBridge.treeBase...: self = .treeEntry
        default: self = .deviceFile
        }
    }

    /// Under `.devices` or `.interfaces`.
    var isTree: Bool { self == .treeEntry || self == .nodeFile }
    /// A file of the bridge's own: its handle holds a text snapshot (or nothing,
    /// for a control file), never a file object.
    var isVirtual: Bool { self == .stats || self == .power || self == .verifier || isTree }
}

extension FuseBridge {
    /// The inode of a device file that exists now (assigned on first sight).
    func inode(of name: String, in tree: TreeSnapshot? = nil) -> fuse_ino_t? {
        if name == ".stats" { return 2 }
        if name == ".power" { return 3 }
        if name == ".verifier" { return 4 }
        if name == TraceDevice.link { return hasTraceDevice ? 5 : nil }
        guard (tree ?? io.pnp.snapshot).presentLinks.contains(name) else { return nil }
        return inodes.withLock { t in
            if let ino = t.byName[name] { return ino }
            let ino = t.next
            t.next += 1
            t.byName[name] = ino
            t.byInode[ino] = name
            return ino
        }
    }

    /// The PnP manager published a new tree (on its executor): forget the device
    /// files that went away, and tell the kernel to drop what it cached for them,
    /// the root's listing and the `.devices` entries that changed. Nothing here
    /// waits for the kernel: the notifications leave on the sink's own thread.
    func treeChanged(_ change: TreeChange) {
        let tree = io.pnp.snapshot
        for name in change.links {
            if !tree.presentLinks.contains(name) {
                let gone = inodes.withLock { t in
                    t.byName.removeValue(forKey: name).map { ino in
                        t.byInode[ino] = nil
                        return ino
                    }
                }
                // A handle still open keeps the inode: its link count is 0 now.
                if let gone, openInodes.withLock({ $0[gone] != nil }) { sink.invalidateInode(gone) }
            }
            sink.invalidateEntry(parent: 1, name: name)
            if let c = pollConnection {
                // The invalidation detaches a cover (the kernel's d_invalidate); a new
                // name of a device that can pend gets one once the invalidation left.
                if tree.presentLinks.contains(name), canPend(name) {
                    sink.afterNotifications { c.cover(name) }
                } else {
                    c.forget(name)
                }
            }
        }
        if change.treeChanged || !change.links.isEmpty {
            invalidateTree(tree)
            invalidateGrownDirectories(tree)
        }
    }

    func listedNames(_ tree: TreeSnapshot) -> (nodes: Set<String>, interfaces: Set<String>) {
        let enabled = io.enabledInterfaces()
        return (Set(tree.byPath.keys), Set(io.knownInterfaceClasses).union(enabled.map { "\($0.classGUID)/\($0.instance)" }))
    }

    /// The kernel caches directory listings (it opens directories itself, and then
    /// keeps what readdir said): a directory that gained a name is invalidated,
    /// with the name (a negative entry for it may be cached too). Names that went
    /// are `invalidateTree`'s.
    func invalidateGrownDirectories(_ tree: TreeSnapshot) {
        let now = listedNames(tree)
        let before = listed.withLock { l in
            defer { l = now }
            return l
        }
        let added = now.nodes.subtracting(before.nodes).map { ".devices/" + $0 }
            + now.interfaces.subtracting(before.interfaces).map { ".interfaces/" + $0 }
        for path in added {
            guard let slash = path.lastIndex(of: "/") else { continue }
            let parent = String(path[..<slash]), name = String(path[path.index(after: slash)...])
            if let ino = inodes.withLock({ $0.byName[parent] }) { sink.invalidateEntry(parent: ino, name: name) }
        }
    }

    /// The `.devices` and `.interfaces` entries the kernel may have cached and
    /// that no longer exist are invalidated and forgotten (a node that comes back
    /// is a new directory); the directories that remain are invalidated so their
    /// listings are read again.
    func invalidateTree(_ tree: TreeSnapshot) {
        let known = inodes.withLock { t in t.byInode.filter { $0.key >= FuseBridge.treeBase } }
        var gone: [(parent: fuse_ino_t, name: String, ino: fuse_ino_t)] = []
        for (ino, path) in known where resolve(path, in: tree) == nil {
            let parentPath = path.split(separator: "/").dropLast().joined(separator: "/")
            let parent = parentPath.isEmpty ? 1 : (inodes.withLock { $0.byName[parentPath] } ?? 0)
            gone.append((parent, String(path.split(separator: "/").last ?? ""), ino))
        }
        inodes.withLock { t in
            for g in gone {
                if let path = t.byInode.removeValue(forKey: g.ino) { t.byName[path] = nil }
            }
        }
        for g in gone where g.parent != 0 { sink.invalidateEntry(parent: g.parent, name: g.name) }
    }

    /// The entries of the root directory now: `.stats`, then every device file.
    var rootEntries: [(name: String, ino: fuse_ino_t)] {
        let tree = io.pnp.snapshot
        var out: [(name: String, ino: fuse_ino_t)] = [(".stats", 2), (".power", 3), (".verifier", 4)]
        if let ino = treeInode(".devices", in: tree) { out.append((".devices", ino)) }
        if let ino = treeInode(".interfaces", in: tree) { out.append((".interfaces", ino)) }
        if hasTraceDevice { out.append((TraceDevice.link, 5)) }
        for name in tree.links { if let ino = inode(of: name, in: tree) { out.append((name, ino)) } }
        return out
    }

    func node(_ ino: fuse_ino_t) -> Node? {
        switch InodeKind(ino) {
        case .root: return .root
        case .stats: return .stats
        case .power: return .power
        case .verifier: return .verifier
        case .treeEntry, .nodeFile:
            guard let path = treePath(ino) else { return nil }
            switch resolve(path) {
            case .top?, .node?, .interfaceDir?: return .treeDir(path)
            case .file(_, let f)?: return .treeFile(path, f)
            case .rootControl?: return .treeFile(path, .control)
            case .setting?: return .settingFile(path)
            case .interfaceLink(let target)?: return .symlink(target)
            case nil: return nil
            }
        case .deviceFile:
            if ino == 5 { return hasTraceDevice ? .device(TraceDevice.link) : nil }
            guard let name = inodes.withLock({ $0.byInode[ino] }), io.pnp.snapshot.presentLinks.contains(name) else { return nil }
            return .device(name)
        }
    }

    func attributes(_ ino: fuse_ino_t) -> stat? {
        guard let node = node(ino) else { return nil }
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_uid = uid
        st.st_gid = gid
        st.st_atim = mountTime
        st.st_mtim = mountTime
        st.st_ctim = mountTime
        st.st_blksize = 4096
        switch node {
        case .root:
            st.st_mode = Glibc.S_IFDIR | 0o755
            st.st_nlink = 2
        case .stats:
            st.st_mode = Glibc.S_IFREG | 0o444
            st.st_nlink = 1
        case .power, .verifier:
            st.st_mode = Glibc.S_IFREG | 0o644
            st.st_nlink = 1
        case .treeDir:
            st.st_mode = Glibc.S_IFDIR | 0o555
            st.st_nlink = 2
        case .treeFile(_, let f):
            st.st_mode = Glibc.S_IFREG | (f == .control ? 0o200 : 0o444)
            st.st_nlink = 1
        case .settingFile:
            st.st_mode = Glibc.S_IFREG | 0o644
            st.st_nlink = 1
        case .symlink(let target):
            st.st_mode = Glibc.S_IFLNK | 0o777
            st.st_nlink = 1
            st.st_size = target.utf8.count
        case .device(let link):
            let p = permissions[link]
            st.st_mode = Glibc.S_IFREG | (p?.mode ?? 0o666)
            if let owner = p?.owner { st.st_uid = owner }
            if let group = p?.group { st.st_gid = group }
            st.st_nlink = 1
            st.st_size = Int(publishedSize(link))
            st.st_blocks = (st.st_size + 511) / 512
        }
        return st
    }

    /// The size the device's stack publishes (the first device from the top that
    /// publishes one); 0 if none does. No IRP is sent: nothing is open here.
    func publishedSize(_ link: String) -> Int64 {
        var d = io.device(forLink: link)?.topOfStack
        while let device = d {
            if let size = device.publishedSize { return size }
            d = device.lowerDevice
        }
        return 0
    }

    func lookup(_ req: FuseRequestHandle, _ parent: fuse_ino_t, _ name: String?) {
        let reply = FuseReply(req, sink)
        let ino: fuse_ino_t?
        if parent == 1 {
            ino = name == ".devices" || name == ".interfaces" ? treeInode(name!) : name.flatMap { inode(of: $0) }
        } else if let dir = treePath(parent), let name {
            ino = treeInode(dir + "/" + name)
        } else {
            ino = nil
        }
        guard let ino, let attr = attributes(ino) else {
            reply.error(ENOENT)
            return
        }
        var e = fuse_entry_param()
        e.ino = ino
        e.attr = attr
        e.attr_timeout = fuseEntryTimeout
        e.entry_timeout = fuseEntryTimeout
        reply.entry(&e)
    }

    func getattr(_ req: FuseRequestHandle, _ ino: fuse_ino_t) {
        let reply = FuseReply(req, sink)
        guard var st = attributes(ino) ?? openAttributes(ino) else {
            reply.error(ENOENT)
            return
        }
        reply.attr(&st, timeout: fuseEntryTimeout)
    }

    /// Truncation (O_TRUNC, dd without conv=notrunc) is ignored, as for /dev
    /// nodes; the mode, the owner and the times belong to the tree: EPERM.
    func setattr(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ toSet: Int32) {
        let reply = FuseReply(req, sink)
        guard var st = attributes(ino) else {
            reply.error(ENOENT)
            return
        }
        if toSet & ~Int32(FUSE_SET_ATTR_SIZE) != 0 {
            reply.error(EPERM)
            return
        }
        reply.attr(&st, timeout: fuseEntryTimeout)
    }

    /// readlink: where an interface's name leads.
    func readlink(_ req: FuseRequestHandle, _ ino: fuse_ino_t) {
        let reply = FuseReply(req, sink)
        guard case .symlink(let target)? = node(ino) else {
            reply.error(EINVAL)
            return
        }
        reply.link(target)
    }

    func noteOpened(_ ino: fuse_ino_t) {
        guard let st = attributes(ino) else { return }
        openInodes.withLock { open in
            if let e = open[ino] { open[ino] = (e.handles + 1, e.attr) } else { open[ino] = (1, st) }
        }
    }

    /// The attributes of an inode whose name is gone while a handle is still open.
    func openAttributes(_ ino: fuse_ino_t) -> stat? {
        guard var st = openInodes.withLock({ $0[ino]?.attr }) else { return nil }
        st.st_nlink = 0
        return st
    }
}
