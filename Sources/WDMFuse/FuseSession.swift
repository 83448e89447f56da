// FuseSession: the libfuse low-level session: the operations table (each entry
// hands the request to the FuseBridge found through fuse_req_userdata), mount,
// the multi-threaded loop, unmount.

import CFuse
import Glibc
import WDM

/// Seconds the kernel may cache names and attributes.
let fuseEntryTimeout = 1.0

extension FuseBridge {
    static func of(_ req: fuse_req_t?) -> FuseBridge {
        Unmanaged<FuseBridge>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.lookup = { req, parent, name in
            let b = FuseBridge.of(req)
            guard parent == 1, let name else {
                fuse_reply_err(req, ENOENT)
                return
            }
            let wanted = String(cString: name)
            guard let i = b.nodes.indices.dropFirst().first(where: { b.nodes[$0].name == wanted }),
                  let attr = b.attributes(fuse_ino_t(i + 1))
            else {
                fuse_reply_err(req, ENOENT)
                return
            }
            var e = fuse_entry_param()
            e.ino = fuse_ino_t(i + 1)
            e.attr = attr
            e.attr_timeout = fuseEntryTimeout
            e.entry_timeout = fuseEntryTimeout
            fuse_reply_entry(req, &e)
        }
        ops.getattr = { req, ino, _ in
            guard var st = FuseBridge.of(req).attributes(ino) else {
                fuse_reply_err(req, ENOENT)
                return
            }
            fuse_reply_attr(req, &st, fuseEntryTimeout)
        }
        ops.setattr = { req, ino, _, _, _ in
            // Device files keep their size: truncation (O_TRUNC, dd without
            // conv=notrunc) is ignored, as it is for /dev nodes.
            guard var st = FuseBridge.of(req).attributes(ino) else {
                fuse_reply_err(req, ENOENT)
                return
            }
            fuse_reply_attr(req, &st, fuseEntryTimeout)
        }
        ops.readdir = { req, ino, size, off, _ in
            let b = FuseBridge.of(req)
            guard ino == 1 else {
                fuse_reply_err(req, ENOTDIR)
                return
            }
            var entries: [(String, fuse_ino_t, mode_t)] = [(".", 1, Glibc.S_IFDIR), ("..", 1, Glibc.S_IFDIR)]
            for (i, n) in b.nodes.enumerated().dropFirst() { entries.append((n.name, fuse_ino_t(i + 1), Glibc.S_IFREG)) }
            var buf = [CChar](repeating: 0, count: size)
            var used = 0
            buf.withUnsafeMutableBufferPointer { out in
                var i = max(0, off)
                while i < entries.count {
                    var st = stat()
                    st.st_ino = UInt(entries[i].1)
                    st.st_mode = entries[i].2
                    let n = fuse_add_direntry(req, out.baseAddress! + used, size - used, entries[i].0, &st, off_t(i + 1))
                    if used + n > size { break }
                    used += n
                    i += 1
                }
                fuse_reply_buf(req, out.baseAddress, used)
            }
        }
        ops.open = { req, ino, fi in FuseBridge.of(req).open(req, ino, fi!) }
        ops.release = { req, _, fi in FuseBridge.of(req).release(req, fi) }
        ops.read = { req, _, size, off, fi in FuseBridge.of(req).read(req, size, off, fi) }
        ops.write = { req, _, buf, size, off, fi in FuseBridge.of(req).write(req, buf, size, off, fi) }
        ops.ioctl = { req, _, cmd, _, fi, flags, inBuf, inSize, outSize in
            FuseBridge.of(req).ioctl(req, Int32(bitPattern: UInt32(truncatingIfNeeded: cmd)), fi, flags, inBuf, inSize, outSize)
        }
        ops.fsync = { req, _, _, fi in FuseBridge.of(req).fsync(req, fi) }
        ops.poll = { req, _, fi, ph in FuseBridge.of(req).poll(req, fi, ph) }
        // The tree is the drivers' to shape: names are not created, removed or moved from userland.
        ops.create = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.mknod = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.mkdir = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.unlink = { req, _, _ in fuse_reply_err(req, EPERM) }
        ops.rmdir = { req, _, _ in fuse_reply_err(req, EPERM) }
        ops.rename = { req, _, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.symlink = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.link = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        return ops
    }

    /// Mounts at `mountpoint` and serves until unmounted or signalled (SIGINT,
    /// SIGTERM, SIGHUP). `onMounted` runs once the tree is usable. Returns
    /// libfuse's loop result, or throws when the mount could not be made.
    public func serve(mountpoint: String, options: [String] = [], maxThreads: UInt32 = 64, onMounted: () -> Void) throws(MountError) -> Int32 {
        var ops = FuseBridge.operations()
        let argv = ["wdmfs", "-o", (["fsname=wdmfs", "subtype=wdmfs"] + options).joined(separator: ",")]
        var cargs = argv.map { strdup($0) }
        defer { cargs.forEach { free($0) } }
        let se: OpaquePointer? = cargs.withUnsafeMutableBufferPointer { p in
            var args = cfuse_args(Int32(p.count), p.baseAddress)
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, Unmanaged.passUnretained(self).toOpaque())
        }
        guard let se else { throw MountError("could not create a FUSE session (is libfuse3 installed?)") }
        defer { fuse_session_destroy(se) }
        guard fuse_set_signal_handlers(se) == 0 else { throw MountError("could not install signal handlers") }
        defer { fuse_remove_signal_handlers(se) }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            throw MountError("could not mount at \(mountpoint) (does it exist, and is /dev/fuse usable?)")
        }
        io.readinessObserver = self
        defer { io.readinessObserver = nil }
        onMounted()
        session = se
        defer { session = nil }
        // Many workers may be needed at once (each pending write or ioctl holds one);
        // idle workers are kept as libfuse keeps them by default (trimming them to a
        // few made small requests about 9% slower: thread churn).
        let result = cfuse_session_loop_mt(se, maxThreads)
        fuse_session_unmount(se)
        return result
    }
}

/// Why a mount failed.
public struct MountError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
