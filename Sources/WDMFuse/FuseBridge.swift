// FuseBridge: the one place where FUSE low-level operations become requests on
// the I/O manager's host seam (IOManager.open / send / close) and completed
// IRPs become FUSE replies (through the ReplySink).
//
//   open    -> IOManager.open: IRP_MJ_CREATE (access from O_ACCMODE)
//   read    -> IRP_MJ_READ at the offset, into a pooled reply buffer sent as is
//   write   -> IRP_MJ_WRITE over the request's own payload (borrowed)
//   ioctl   -> IRP_MJ_DEVICE_CONTROL over the request's own envelope (borrowed)
//   fsync   -> IRP_MJ_FLUSH_BUFFERS
//   release -> IOManager.close: IRP_MJ_CLEANUP, then IRP_MJ_CLOSE
//   getattr -> the size the stack publishes (no IRP: no handle is open)
//
// What the names and inode numbers are (lookup, getattr, readdir, invalidation)
// is Namespace.swift's; the bridge's own files (.stats, .power, node files) are
// VirtualFiles.swift's and DeviceTreeView.swift's.
//
// Every request is answered exactly once: synchronous operations consume their
// FuseReply on the spot; I/O requests hand it to a PendingFuseRequest, which
// the completing thread, the interrupt timeout or the shutdown drain claims.
// Borrowed memory (a write's payload, an ioctl's envelope) is moved by the I/O
// manager if the IRP pends, so no worker thread waits for a driver.

import CFuse
import Dispatch
import Glibc
import Synchronization
import WDM
import WDMClient

/// A mounted device tree.
public final class FuseBridge: ReadinessObserver, @unchecked Sendable {
    public let io: IOManager
    public let sink: any ReplySink
    let requests = RequestPool()
    /// Set at FUSE_INIT: the kernel opens directories itself (opendir answers ENOSYS).
    let kernelOpensDirectories = Atomic<Bool>(false)
    /// Without directory handles: each directory's listing as its last readdir at
    /// offset 0 took it, which the later readdir calls of that listing continue.
    let listings = HandoffMutex<[fuse_ino_t: [(String, fuse_ino_t, mode_t)]]>([:])
    let mountTime = timespec(tv_sec: time(nil), tv_nsec: 0)
    /// The daemon's user and group: the owner of what the tree does not say otherwise.
    let uid = geteuid(), gid = getegid()
    /// Seconds a cancelled IRP may take before its caller is answered anyway.
    public var cancelGrace: Double = 1.0

    /// Whether FUSE poll reaches the drivers. The kernel asks the daemon on every
    /// poll of a file (and io_uring polls a FUSE file before each nonblocking
    /// attempt at a write: hundreds of round trips per write), unless the first
    /// FUSE_POLL of a connection is answered ENOSYS: then every file of that
    /// connection is always ready, with no round trip.
    /// - `.auto`: when some driver can pend (it has a readiness routine), the files
    ///   of its devices get a FUSE connection of their own (`PollConnection`) where
    ///   poll tells the truth, and the main one stops poll. A daemon that may not
    ///   mount (not root) falls back to `.on`; with no such driver, `.off`.
    /// - `.on`: one connection, every poll asks the drivers.
    /// - `.off`: one connection, every file always ready.
    public enum PollMode: String, Sendable, CaseIterable { case auto, on, off }
    public var pollMode = PollMode.auto
    /// Some loaded driver says how ready its devices are.
    var someDriverCanPend: Bool { io.loadedDrivers.contains { $0.readiness != nil } }
    /// `pollMode` resolved against the loaded drivers, on a single connection.
    var pollEnabled: Bool {
        switch pollMode {
        case .on: true
        case .off: false
        case .auto: someDriverCanPend
        }
    }
    /// The connection of the devices that can pend, while `.auto` has one.
    nonisolated(unsafe) var pollConnection: PollConnection?

    /// Whether `link`'s stack has a driver that says how ready its devices are.
    func canPend(_ link: String) -> Bool {
        var d = io.device(forLink: link)?.topOfStack
        while let device = d {
            if device.driverObject.readiness != nil { return true }
            d = device.lowerDevice
        }
        return false
    }

    enum Node {
        case root
        case stats
        case power
        case verifier
        case treeDir(String)
        case treeFile(String, NodeFile)
        /// A settings file a driver published under its node (`error`).
        case settingFile(String)
        case symlink(String)
        case device(String)
    }
    /// The namespace changes while mounted (devices come and go): inode 1 is the
    /// root, 2 `.stats`, and each device file gets the next number the first time
    /// its name is looked up. A name that goes away loses its inode; if it comes
    /// back it is a new file with a new inode.
    struct Inodes {
        /// 5 is `.trace`, the trace device (when the host made one).
        var byName: [String: fuse_ino_t] = [TraceDevice.link: 5]
        var byInode: [fuse_ino_t: String] = [5: TraceDevice.link]
        var next: fuse_ino_t = 6
        var nextTree: fuse_ino_t = 0

        /// The inode of a `.devices`/`.interfaces` path, numbered at first sight
        /// (the caller knows the path exists).
        mutating func inode(_ path: String) -> fuse_ino_t {
            if let ino = byName[path] { return ino }
            let ino = FuseBridge.treeBase + nextTree
            nextTree += 1
            byName[path] = ino
            byInode[ino] = path
            return ino
        }

        /// A node file's inode, derived from its directory's (not kept in the table:
        /// a listing of n nodes adds n entries, not 14 n): fileBase + dir << 5 + file.
        mutating func inode(directory path: String, _ file: NodeFile) -> fuse_ino_t {
            FuseBridge.fileBase + (inode(path) - FuseBridge.treeBase) << 5 + fuse_ino_t(file.index)
        }

        /// The path of a tree inode (a node file's from its directory's).
        func path(_ ino: fuse_ino_t) -> String? {
            guard InodeKind(ino) == .nodeFile else { return byInode[ino] }
            let rel = ino - FuseBridge.fileBase, k = Int(rel & 31)
            guard k < NodeFile.allCases.count, let dir = byInode[FuseBridge.treeBase + rel >> 5] else { return nil }
            return dir + "/" + NodeFile.allCases[k].rawValue
        }
    }
    let inodes = HandoffMutex(Inodes())
    /// The outcome of the last verb written to each node's `control` file (its `result` file).
    let lastResults = HandoffMutex<[String: String]>([:])
    /// The libfuse session while `serve` runs.
    nonisolated(unsafe) var session: OpaquePointer?

    public init(io: IOManager, sink: (any ReplySink)? = nil) {
        self.io = io
        self.sink = sink ?? LibfuseSink(log: { line in io.log?(line) })
        hasTraceDevice = io.device(forLink: TraceDevice.link) != nil
        // The trace is the daemon user's to read: it shows every request's offsets and sizes.
        permissions[TraceDevice.link] = (0o600, nil, nil)
        for link in io.pnp.snapshot.links { _ = inode(of: link) }
        let names = listedNames(io.pnp.snapshot)
        listed.withLock { $0 = names }
        io.pnp.observer = { [weak self] change in self?.treeChanged(change) }
    }

    /// The names under `.devices` and `.interfaces` as of the last change.
    let listed = HandoffMutex<(nodes: Set<String>, interfaces: Set<String>)>(([], []))

    /// Poll handles the kernel gave us, per open file: woken when the device's
    /// readiness changes (`ReadinessObserver`), replaced by the next poll, destroyed at release.
    let pollHandles = HandoffMutex<[ObjectIdentifier: PollHandle]>([:])

    /// A kernel poll handle (struct fuse_pollhandle *) and the device it waits on.
    struct PollHandle: @unchecked Sendable {
        let device: DeviceObject
        let handle: OpaquePointer
    }

    /// Mode, owner and group per device file (from the tree); 0666 and the daemon's
    /// user otherwise. The mount uses `default_permissions`, so the kernel enforces them.
    public var permissions: [String: (mode: UInt32, owner: UInt32?, group: UInt32?)] = [:]

    /// Whether the host made the trace device (`.trace`, inode 5) before the bridge.
    let hasTraceDevice: Bool

    /// The filter driver named by `attach FILTER KEY=VALUE...` in a node's `control`
    /// file, loaded if it is not yet, and its settings as device parameters (checked;
    /// the daemon sets it from the drivers it ships); nil: none can be attached.
    public var filterLoader: (@Sendable (String, [String]) -> Result<(DriverObject, [String: String]), FilterRefusal>)?

    /// The text of the `.stats` file.
    public var statsText: String {
        let covered: Int = pollConnection?.coveredCount ?? 0
        let polled: Int = polls.load(ordering: .relaxed)
        let trace = io.traceReaders
        return io.statistics.text + "fuse_polls \(polled)\npoll_connection_files \(covered)\n"
            + "trace_readers \(trace.count)\ntrace_events_lost \(trace.lost)\n"
    }
    /// FUSE_POLL requests received (the cost `pollMode` is about).
    let polls = Atomic<Int>(0)

    // MARK: - Handles

    /// Whether an inode is a virtual file of the bridge's (`.stats`, `.power`,
    /// anything under `.devices` or `.interfaces`): its handle holds a text
    /// snapshot (or nothing, for a control file), never a file object.
    static func isVirtual(_ ino: fuse_ino_t) -> Bool { InodeKind(ino).isVirtual }

    /// The file object of a device file's handle; nil for a virtual file's.
    static func file(_ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) -> FileObject? {
        guard !isVirtual(ino), let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        return Unmanaged<FileObject>.fromOpaque(p).takeUnretainedValue()
    }

    func open(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let reply = FuseReply(req, sink)
        switch node(ino) {
        case nil:
            reply.error(ENOENT)
        case .root:
            reply.error(EISDIR)
        case .stats:
            if fi.pointee.flags & O_ACCMODE != O_RDONLY {
                reply.error(EACCES)
                return
            }
            // One snapshot per open, served by offset: small reads never mix two.
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(StatsSnapshot(statsText)).toOpaque()))
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        case .treeDir:
            reply.error(EISDIR)
        case .symlink:
            reply.error(ELOOP)
        case .settingFile(let path):
            // Read: its text as of the open; write: `key value` lines.
            guard case .setting(let node, let name)? = resolve(path),
                  let settings = node.node.publishedSettings.first(where: { $0.name == name })?.settings
            else {
                reply.error(ENOENT)
                return
            }
            switch fi.pointee.flags & O_ACCMODE {
            case O_RDONLY: fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(StatsSnapshot(settings.text())).toOpaque()))
            case O_WRONLY: fi.pointee.fh = 0
            default:
                reply.error(EACCES)
                return
            }
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        case .treeFile(let path, let f):
            if f == .control {
                guard fi.pointee.flags & O_ACCMODE == O_WRONLY else {
                    reply.error(EACCES)
                    return
                }
                fi.pointee.fh = 0
            } else {
                guard case .file(let node, _)? = resolve(path) else {
                    reply.error(ENOENT)  // the node went away since the name was looked up
                    return
                }
                guard fi.pointee.flags & O_ACCMODE == O_RDONLY else {
                    reply.error(EACCES)
                    return
                }
                fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(StatsSnapshot(text(node, f))).toOpaque()))
            }
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        case .verifier:
            // Reading says what Verifier checks and what it found; writing changes what it checks.
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(StatsSnapshot(verifierText)).toOpaque()))
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        case .power:
            // Reading says the system power state; writing S0...S5 moves the system there.
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(StatsSnapshot("\(io.systemPowerState)\n")).toOpaque()))
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        case .device(let link):
            let access: AccessMask = switch fi.pointee.flags & O_ACCMODE {
            case O_RDONLY: .readData
            case O_WRONLY: .writeData
            default: [.readData, .writeData]
            }
            let file: FileObject
            do throws(NTStatus) {
                file = try io.open(link, access: access)
            } catch {
                reply.error(ErrnoTable.errno(for: error))
                return
            }
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(file).toOpaque()))
            cfuse_fi_set_direct_io(fi)
            noteOpened(ino)
            reply.open(fi)
        }
    }

    /// Inodes with handles open, and their attributes as they were opened: fstat
    /// of an open descriptor keeps working after its name went away (with link
    /// count 0), as on Linux, where fstat of an open file does not fail.
    let openInodes = HandoffMutex<[fuse_ino_t: (handles: Int, attr: stat)]>([:])

    func release(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let reply = FuseReply(req, sink)
        openInodes.withLock { open in
            guard let e = open[ino] else { return }
            open[ino] = e.handles > 1 ? (e.handles - 1, e.attr) : nil
        }
        if let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) {
            if InodeKind(ino).isVirtual {
                Unmanaged<StatsSnapshot>.fromOpaque(p).release()
            } else {
                let file = Unmanaged<FileObject>.fromOpaque(p).takeRetainedValue()
                (file.hostData.load() as? HandleReplyBuffers)?.close()
                if let old = pollHandles.withLock({ $0.removeValue(forKey: ObjectIdentifier(file)) }) {
                    sink.destroyPollHandle(old.handle)
                }
                // The last handle is gone: CLEANUP (drivers cancel what waits on it), then CLOSE.
                io.close(file)
            }
        }
        reply.error(0)
    }

    // MARK: - Data path

    func read(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if Self.isVirtual(ino) {
            readStats(FuseReply(req, sink), size, off, fi)
            return
        }
        guard let file = Self.file(ino, fi) else {
            FuseReply(req, sink).error(EBADF)
            return
        }
        let pool = replyBuffers(of: file)
        let buffer = pool.take(size)
        let r = requests.take(self)
        r.begin(FuseReply(req, sink), kind: .read, size: size, buffer: buffer, from: pool, nonBlocking: fi!.pointee.flags & O_NONBLOCK != 0)
        _ = io.send(.read(buffer: buffer, length: size, offset: Int64(off)), on: file, requester: r)
    }

    /// The pool `device`'s reads are answered from (made at its first read).
    @inline(__always)
    func replyBuffers(of device: DeviceObject) -> ReplyBufferPool {
        if let pool = device.hostData.load() { return unsafeDowncast(pool, to: ReplyBufferPool.self) }
        let made = ReplyBufferPool(checked: io.checkedBuffers, verifier: io.verifier, device: device)
        return unsafeDowncast(device.hostData.storeIfNil(made), to: ReplyBufferPool.self)
    }

    /// The buffers `file`'s reads are answered from (made at its first read).
    @inline(__always)
    func replyBuffers(of file: FileObject) -> HandleReplyBuffers {
        if let own = file.hostData.load() { return unsafeDowncast(own, to: HandleReplyBuffers.self) }
        let made = HandleReplyBuffers(device: replyBuffers(of: file.deviceObject))
        return unsafeDowncast(file.hostData.storeIfNil(made), to: HandleReplyBuffers.self)
    }

    func write(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ data: UnsafePointer<CChar>?, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if InodeKind(ino) == .power {
            writePower(FuseReply(req, sink), data, size)
            return
        }
        if InodeKind(ino) == .verifier {
            writeVerifier(FuseReply(req, sink), data, size)
            return
        }
        if InodeKind(ino).isTree {
            let reply = FuseReply(req, sink)
            let text = data.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
            let words = text.split(whereSeparator: \.isWhitespace).map(String.init)
            let verb = words.joined(separator: " ")
            let path = treePath(ino)
            if let path, case .setting(let node, let name)? = resolve(path) {
                let e = writeSettings(node, name, text)
                if e == 0 { reply.written(size) } else { reply.error(e) }
                return
            }
            if path.map({ resolve($0) == .rootControl }) == true {
                // `.devices/.control`: `rescan` from the root (removed root devices come
                // back); `settle` waits until the PnP manager has nothing left to do.
                if words.first == "log-level", words.count == 2 {
                    // The drivers' log levels: `log-level debug`, `log-level RamDisk=trace,Echo=debug`.
                    if let why = io.setLogLevels(words[1]) {
                        io.log?(".devices/.control: log-level: \(why)")
                        reply.error(EINVAL)
                    } else {
                        io.log?("log levels \(io.logLevelText)")
                        reply.written(size)
                    }
                    return
                }
                switch verb {
                case "rescan": _ = io.rescan(nil)
                case "cover": coverAll()  // `wdmfs unmount` found the mount busy
                case "settle":
                    io.pnp.settle()
                    // ... and the kernel has heard of what changed (its cached listings).
                    _ = (sink as? LibfuseSink)?.notificationsDone(within: 1)
                default:
                    reply.error(EINVAL)
                    return
                }
                reply.written(size)
                return
            }
            guard let path, case .file(let node, .control)? = resolve(path) else {
                // The node went away after the file was opened.
                reply.error(ENODEV)
                return
            }
            let e = control(node, words)
            if e == 0 { reply.written(size) } else { reply.error(e) }
            return
        }
        guard let file = Self.file(ino, fi) else {
            FuseReply(req, sink).error(EBADF)
            return
        }
        let payload = UnsafeMutableRawPointer(mutating: data) ?? UnsafeMutableRawPointer(bitPattern: 1)!
        let r = requests.take(self)
        r.begin(FuseReply(req, sink), kind: .write, size: size, nonBlocking: fi!.pointee.flags & O_NONBLOCK != 0)
        // The payload is the request's memory, valid until this returns: borrowed.
        _ = io.send(.write(buffer: payload, length: size, offset: Int64(off), borrowedFrom: payload), on: file, requester: r)
    }

    func ioctl(
        _ req: FuseRequestHandle, _ ino: fuse_ino_t, _ cmd: UInt32, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ flags: UInt32,
        _ inBuf: UnsafeRawPointer?, _ inSize: Int, _ outSize: Int
    ) {
        let reply = FuseReply(req, sink)
        // Not the envelope, or a virtual file (which takes no ioctl, as a regular file
        // does not): the kernel's convention for an unknown request (TCGETS,
        // BLKGETSIZE64, FS_IOC_GETFLAGS...), so isatty, stty and lsattr say so plainly.
        guard let file = Self.file(ino, fi), flags & UInt32(FUSE_IOCTL_DIR) == 0, IoctlEnvelope.isEnvelopeFamily(cmd) else {
            reply.error(ENOTTY)
            return
        }
        // A malformed envelope never reaches a driver.
        guard let capacity = IoctlEnvelope.capacity(ofRequest: cmd),
              inSize == IoctlEnvelope.headerSize + capacity, outSize == inSize, let inBuf
        else {
            reply.error(EINVAL)
            return
        }
        let envelope = UnsafeMutableRawPointer(mutating: inBuf)
        let header = IoctlEnvelope.Header(from: envelope)
        let outputAt = IoctlEnvelope.outputOffset(code: header.code, inputLength: header.inputLength)
        guard header.inputLength <= capacity, header.outputLength <= capacity - min(outputAt, capacity) || header.outputLength == 0 else {
            reply.error(EINVAL)
            return
        }
        let r = requests.take(self)
        r.begin(reply, kind: .ioctl, size: header.outputLength)
        r.outputOffset = outputAt
        r.envelopeData = envelope + IoctlEnvelope.headerSize
        _ = io.send(
            .deviceControl(code: ControlCode(rawValue: header.code), buffer: envelope + IoctlEnvelope.headerSize, capacity: capacity,
                           inputLength: header.inputLength, outputLength: header.outputLength, borrowedFrom: envelope),
            on: file, requester: r)
    }

    func fsync(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let file = Self.file(ino, fi) else {
            // A virtual file has nothing to flush: its writes took effect at once.
            FuseReply(req, sink).error(0)
            return
        }
        let r = requests.take(self)
        r.begin(FuseReply(req, sink), kind: .flush, size: 0)
        _ = io.send(.flush, on: file, requester: r)
    }

    /// poll/select: the device's readiness now; with a handle, a wake-up when it changes.
    func poll(_ req: FuseRequestHandle, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ handle: OpaquePointer?, connection: FuseConnectionRole = .main) {
        let reply = FuseReply(req, sink)
        polls.add(1, ordering: .relaxed)
        guard connection == .poll || (pollConnection == nil && pollEnabled) else {
            // The kernel stops asking for the rest of the connection and reports
            // every file ready itself, with no round trip.
            if let handle { sink.destroyPollHandle(handle) }
            reply.error(ENOSYS)
            return
        }
        guard let file = Self.file(ino, fi) else {
            // A virtual file is always ready, as a regular file is.
            if let handle { sink.destroyPollHandle(handle) }
            reply.poll(UInt32(POLLIN | POLLOUT))
            return
        }
        if let handle {
            let device = file.deviceObject.topOfStack
            let old = pollHandles.withLock { $0.updateValue(PollHandle(device: device, handle: handle), forKey: ObjectIdentifier(file)) }
            if let old { sink.destroyPollHandle(old.handle) }
        }
        let r = io.readiness(of: file)
        var events: Int32 = 0
        if r.contains(.readable) { events |= Int32(POLLIN | POLLRDNORM) }
        if r.contains(.writable) { events |= Int32(POLLOUT | POLLWRNORM) }
        reply.poll(UInt32(events))
    }

    public func readinessChanged(_ device: DeviceObject) {
        pollHandles.withLock { handles in
            for (_, entry) in handles where entry.device === device {
                sink.notifyPoll(entry.handle)
            }
        }
    }

    // MARK: - Completion: NTSTATUS and request kind -> reply

    /// Answers a request whose IRP completed (called once, by the request that claimed its reply).
    func answer(_ reply: consuming FuseReply, _ r: PendingFuseRequest, _ irp: IRP) {
        let status = irp.ioStatus.status
        let information = irp.ioStatus.information
        switch r.kind {
        case .read:
            if status.isSuccess || status == .bufferOverflow {
                reply.data(irp.hostBuffer, Self.clamp(information, r.size))
            } else if status == .endOfFile {
                reply.data(nil, 0)
            } else {
                reply.error(errno(for: status, r))
            }
        case .write:
            if status.isSuccess {
                reply.written(Self.clamp(information, r.size))
            } else {
                reply.error(errno(for: status, r))
            }
        case .ioctl:
            // The envelope (or the I/O manager's copy of it, if the IRP pended).
            guard let data = irp.hostBuffer ?? r.envelopeData else {
                reply.error(EIO)
                return
            }
            let envelope = data - IoctlEnvelope.headerSize
            let n = status.isError ? 0 : Self.clamp(information, r.size)
            IoctlEnvelope.storeResult(status: status, information: information, into: envelope)
            reply.ioctl(envelope, IoctlEnvelope.headerSize + (n > 0 ? r.outputOffset + n : 0))
        case .flush:
            reply.error(status.isSuccess ? 0 : ErrnoTable.errno(for: status))
        }
    }

    /// The errno table, except for a cancelled wait: EAGAIN for a non-blocking
    /// caller, and ENODEV once the daemon is ending (an EINTR would be retried by
    /// the caller, and the retry would find the connection gone: ENOTCONN).
    @inline(__always)
    func errno(for status: NTStatus, _ r: PendingFuseRequest) -> Int32 {
        guard status == .cancelled else { return ErrnoTable.errno(for: status) }
        return r.nonBlocking ? EAGAIN : io.isShuttingDown ? ENODEV : EINTR
    }

    /// Never more than the buffer holds (the verifier reports a driver that claims more).
    @inline(__always)
    static func clamp(_ information: Int, _ limit: Int) -> Int { max(0, min(information, limit)) }

    // MARK: - Shutdown

    /// Waits until no request is in flight (or `seconds` pass); true if none is.
    /// Hosts that tear the bridge down without a session (tests) call it first.
    @discardableResult
    public func waitUntilIdle(seconds: Double = 5) -> Bool {
        // Woken by each IRP handed back (its request has been answered by then).
        io.waitForDeliveries(until: .now() + seconds) {
            requests.all.contains(where: { $0.busy.load(ordering: .acquiring) }) || !io.outstandingIrps.isEmpty
        }
    }

    /// When the session ends (a signal or an unmount, told by the session's
    /// watcher, and again after the loop): cancel what the drivers hold, give them
    /// `io.shutdownGrace` seconds (once), then answer every request still
    /// unanswered ENODEV, while the connection still carries answers, so no caller
    /// stays blocked. The verifier reports each IRP left.
    public func drain() {
        io.beginShutdown()
        // Requests that came in after the shutdown began are cancelled too.
        for irp in io.outstandingIrps { irp.cancelIrp(reportingStale: false) }
        for r in requests.all { r.answerAtShutdown() }
    }
}
