// FuseBridge: the one place where FUSE low-level operations become IRPs and
// completed IRPs become FUSE replies.
//
//   open    -> IRP_MJ_CREATE (access from O_ACCMODE)
//   read    -> IRP_MJ_READ at the offset, into a reply buffer sent as is
//   write   -> IRP_MJ_WRITE over the request's own payload
//   ioctl   -> IRP_MJ_DEVICE_CONTROL over the request's own envelope
//   fsync   -> IRP_MJ_FLUSH_BUFFERS
//   release -> IRP_MJ_CLEANUP, then IRP_MJ_CLOSE
//   getattr -> IRP_MJ_QUERY_INFORMATION (FileStandardInformation) for the size
//
// Replies are sent by whoever finishes the IRP: the worker thread when the
// driver completed it during dispatch, otherwise the thread that completed it
// later (STATUS_PENDING). A write or ioctl whose IRP pends keeps its worker
// thread waiting, because the request memory the driver works on is only valid
// until the FUSE callback returns. A FUSE interrupt (a signal to the caller)
// cancels the IRP; the cancelled IRP's reply is EINTR.

import CFuse
import Dispatch
import Glibc
import Synchronization
import WDM

/// A mounted device tree.
public final class FuseBridge: IRPRequester, ReadinessObserver, @unchecked Sendable {
    public let io: IOManager
    let buffers = ReplyBufferPool()
    let mountTime = timespec(tv_sec: time(nil), tv_nsec: 0)

    enum Node {
        case root
        case stats
        case device(String)
    }
    /// Inode n is nodes[n - 1]: 1 the root, 2 `.stats`, then one per symbolic link.
    let nodes: [(name: String, node: Node)]
    /// The libfuse session while `serve` runs.
    nonisolated(unsafe) var session: OpaquePointer?

    enum RequestKind: Int {
        case read = 1, write, ioctl, flush
    }

    public init(io: IOManager) {
        self.io = io
        nodes = [("", .root), (".stats", .stats)] + io.symbolicLinks.map { ($0, .device($0)) }
    }

    /// Poll handles the kernel gave us, per open file: woken when the device's
    /// readiness changes (`ReadinessObserver`), replaced by the next poll, destroyed at release.
    let pollHandles = Mutex<[ObjectIdentifier: PollHandle]>([:])

    /// A kernel poll handle (struct fuse_pollhandle *) and the device it waits on.
    struct PollHandle: @unchecked Sendable {
        let device: DeviceObject
        let handle: OpaquePointer
    }

    /// The text of the `.stats` file.
    public var statsText: String { io.statistics.text }

    // MARK: - Attributes

    func node(_ ino: fuse_ino_t) -> Node? {
        ino >= 1 && ino <= UInt64(nodes.count) ? nodes[Int(ino) - 1].node : nil
    }

    func attributes(_ ino: fuse_ino_t) -> stat? {
        guard let node = node(ino) else { return nil }
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_uid = geteuid()
        st.st_gid = getegid()
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
        case .device(let link):
            st.st_mode = Glibc.S_IFREG | 0o666
            st.st_nlink = 1
            st.st_size = Int(deviceSize(link))
            st.st_blocks = (st.st_size + 511) / 512
        }
        return st
    }

    /// The size the device's stack reports through IRP_MJ_QUERY_INFORMATION; 0 if it does not answer.
    func deviceSize(_ link: String) -> Int64 {
        guard let file = try? io.makeFileObject(link: link, access: []) else { return 0 }
        return withUnsafeTemporaryAllocation(byteCount: FileStandardInformation.size, alignment: 8) { raw in
            let irp = io.makeIrp(.queryInformation, file: file)
            io.prepareQueryStandardInformation(irp, buffer: raw.baseAddress!)
            let status = io.callSynchronously(irp)
            io.freeIrp(irp)
            return status.isSuccess ? FileStandardInformation.endOfFile(in: raw.baseAddress!) : 0
        }
    }

    // MARK: - Handles

    static func file(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> FileObject? {
        guard let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        return Unmanaged<FileObject>.fromOpaque(p).takeUnretainedValue()
    }

    func open(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        switch node(ino) {
        case nil:
            fuse_reply_err(req, ENOENT)
        case .root:
            fuse_reply_err(req, EISDIR)
        case .stats:
            if fi.pointee.flags & O_ACCMODE != O_RDONLY {
                fuse_reply_err(req, EACCES)
                return
            }
            fi.pointee.fh = 0
            cfuse_fi_set_direct_io(fi)
            fuse_reply_open(req, fi)
        case .device(let link):
            let access: AccessMask = switch fi.pointee.flags & O_ACCMODE {
            case O_RDONLY: .readData
            case O_WRONLY: .writeData
            default: [.readData, .writeData]
            }
            let file: FileObject
            do throws(NTStatus) {
                file = try io.makeFileObject(link: link, access: access)
            } catch {
                fuse_reply_err(req, ErrnoTable.errno(for: error))
                return
            }
            let irp = io.makeIrp(.create, file: file)
            io.prepareCreate(irp, access: access)
            let status = io.callSynchronously(irp)
            io.freeIrp(irp)
            guard status.isSuccess else {
                fuse_reply_err(req, ErrnoTable.errno(for: status))
                return
            }
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(file).toOpaque()))
            cfuse_fi_set_direct_io(fi)
            fuse_reply_open(req, fi)
        }
    }

    func release(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) {
            let file = Unmanaged<FileObject>.fromOpaque(p).takeRetainedValue()
            if let old = pollHandles.withLock({ $0.removeValue(forKey: ObjectIdentifier(file)) }) {
                fuse_pollhandle_destroy(old.handle)
            }
            // The last handle is gone: CLEANUP (drivers cancel what waits on it), then CLOSE.
            for major in [MajorFunction.cleanup, .close] {
                let irp = io.makeIrp(major, file: file)
                _ = io.callSynchronously(irp)
                io.freeIrp(irp)
            }
        }
        fuse_reply_err(req, 0)
    }

    // MARK: - Data path

    func read(_ req: fuse_req_t?, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let file = Self.file(fi) else {
            readStats(req, size, off)
            return
        }
        let buffer = buffers.take(size)
        let irp = io.makeIrp(.read, file: file)
        io.prepareTransfer(irp, buffer: buffer, length: size, offset: Int64(off))
        start(irp, req, .read, word: size, buffer: buffer, nonBlocking: fi!.pointee.flags & O_NONBLOCK != 0)
        _ = io.submit(irp)
    }

    func write(_ req: fuse_req_t?, _ data: UnsafePointer<CChar>?, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let file = Self.file(fi) else {
            fuse_reply_err(req, EBADF)
            return
        }
        let payload = UnsafeMutableRawPointer(mutating: data) ?? UnsafeMutableRawPointer(bitPattern: 1)!
        let irp = io.makeIrp(.write, file: file)
        io.prepareTransfer(irp, buffer: payload, length: size, offset: Int64(off))
        start(irp, req, .write, word: size, buffer: payload, nonBlocking: fi!.pointee.flags & O_NONBLOCK != 0)
        if io.submit(irp) == .pending {
            // The payload is the request's memory: hold it until the IRP is done.
            waitForBorrowing(irp)
        }
    }

    func ioctl(
        _ req: fuse_req_t?, _ cmd: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ flags: UInt32,
        _ inBuf: UnsafeRawPointer?, _ inSize: Int, _ outSize: Int
    ) {
        guard let file = Self.file(fi), flags & UInt32(FUSE_IOCTL_DIR) == 0 else {
            fuse_reply_err(req, ENOTTY)
            return
        }
        // A malformed envelope never reaches a driver.
        guard let capacity = IoctlEnvelope.capacity(ofRequest: UInt32(bitPattern: cmd)),
              inSize == IoctlEnvelope.headerSize + capacity, outSize == inSize, let inBuf
        else {
            fuse_reply_err(req, EINVAL)
            return
        }
        let envelope = UnsafeMutableRawPointer(mutating: inBuf)
        let header = IoctlEnvelope.Header(from: envelope)
        guard header.inputLength <= capacity, header.outputLength <= capacity else {
            fuse_reply_err(req, EINVAL)
            return
        }
        let irp = io.makeIrp(.deviceControl, file: file)
        do throws(NTStatus) {
            try io.prepareDeviceControl(
                irp, code: ControlCode(rawValue: header.code),
                buffer: capacity > 0 ? envelope + IoctlEnvelope.headerSize : nil, capacity: capacity,
                inputLength: header.inputLength, outputLength: header.outputLength)
        } catch {
            // Refused by the I/O manager (RequiredAccess): the status still travels in the header.
            io.freeIrp(irp)
            IoctlEnvelope.storeResult(status: error, information: 0, into: envelope)
            fuse_reply_ioctl(req, 0, envelope, IoctlEnvelope.headerSize)
            return
        }
        start(irp, req, .ioctl, word: header.outputLength, buffer: envelope)
        if io.submit(irp) == .pending {
            waitForBorrowing(irp)
        }
    }

    func fsync(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let file = Self.file(fi) else {
            fuse_reply_err(req, 0)
            return
        }
        let irp = io.makeIrp(.flushBuffers, file: file)
        start(irp, req, .flush, word: 0, buffer: nil)
        _ = io.submit(irp)
    }

    /// poll/select: the device's readiness now; with a handle, a wake-up when it changes.
    func poll(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ handle: OpaquePointer?) {
        guard let file = Self.file(fi) else {
            if let handle { fuse_pollhandle_destroy(handle) }
            fuse_reply_poll(req, UInt32(POLLIN | POLLOUT))
            return
        }
        if let handle {
            let device = io.target(of: file)
            let old = pollHandles.withLock { $0.updateValue(PollHandle(device: device, handle: handle), forKey: ObjectIdentifier(file)) }
            if let old { fuse_pollhandle_destroy(old.handle) }
        }
        let r = io.readiness(of: file)
        var events: Int32 = 0
        if r.contains(.readable) { events |= Int32(POLLIN | POLLRDNORM) }
        if r.contains(.writable) { events |= Int32(POLLOUT | POLLWRNORM) }
        fuse_reply_poll(req, UInt32(events))
    }

    public func readinessChanged(_ device: DeviceObject) {
        pollHandles.withLock { handles in
            for (_, entry) in handles where entry.device === device {
                fuse_lowlevel_notify_poll(entry.handle)
            }
        }
    }

    func readStats(_ req: fuse_req_t?, _ size: Int, _ off: Int) {
        let text = Array(statsText.utf8)
        let from = min(max(off, 0), text.count), to = min(from + size, text.count)
        _ = text.withUnsafeBytes {
            fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self).advanced(by: from), to - from)
        }
    }

    /// Waits on the worker thread for a pending IRP that works on the request's
    /// memory, then frees it. When the session is ending (a signal, an unmount) the
    /// IRP is cancelled: libfuse joins its workers before it returns, so a worker
    /// left waiting on a driver that never completes would keep the daemon alive.
    private func waitForBorrowing(_ irp: IRP) {
        let generation = irp.generation
        while !irp.waitUntilDone(seconds: 0.1) {
            if let session, fuse_session_exited(session) != 0 { irp.cancel(ifGeneration: generation) }
        }
        io.freeIrp(irp)
    }

    /// Ties the IRP to the request and lets a FUSE interrupt cancel it.
    @inline(__always)
    private func start(
        _ irp: IRP, _ req: fuse_req_t?, _ kind: RequestKind, word: Int, buffer: UnsafeMutableRawPointer?, nonBlocking: Bool = false
    ) {
        irp.requester = self
        irp.requesterContext = UnsafeMutableRawPointer(req)
        irp.requesterTag = kind.rawValue | (nonBlocking ? FuseBridge.nonBlocking : 0) | (word << 8)
        irp.requesterBuffer = buffer
    }

    /// The IRP pends: from now on a FUSE interrupt (a signal to the caller) cancels it.
    /// libfuse runs the callback at once if the interrupt already arrived.
    public func irpPending(_ irp: IRP) {
        if irp.requesterTag & FuseBridge.nonBlocking != 0 {
            // O_NONBLOCK: an IRP that would wait is called back at once; its
            // STATUS_CANCELLED becomes EAGAIN. (Data that won the race is still delivered.)
            irp.cancelIrp()
            return
        }
        irp.requesterTag |= FuseBridge.interruptArmed
        fuse_req_interrupt_func(OpaquePointer(irp.requesterContext), fuseInterrupt, Unmanaged.passUnretained(irp).toOpaque())
    }

    /// A bit of `requesterTag`: an interrupt callback was registered for the request.
    static let interruptArmed = 0x80
    /// A bit of `requesterTag`: the file was opened (or set) O_NONBLOCK.
    static let nonBlocking = 0x40

    // MARK: - Completion

    public func irpCompleted(_ irp: IRP) {
        let req = OpaquePointer(irp.requesterContext)
        if irp.requesterTag & FuseBridge.interruptArmed != 0 {
            // Waits for an interrupt callback that is running now, and stops new ones:
            // after this the IRP may be reused.
            fuse_req_interrupt_func(req, nil, nil)
        }
        let status = irp.ioStatus.status
        let information = irp.ioStatus.information
        let word = irp.requesterTag >> 8
        switch RequestKind(rawValue: irp.requesterTag & 0x3F) {
        case .read:
            let buffer = irp.requesterBuffer!
            if status.isSuccess || status == .bufferOverflow {
                fuse_reply_buf(req, buffer.assumingMemoryBound(to: CChar.self), checkedLength(information, word, irp))
            } else if status == .endOfFile {
                fuse_reply_buf(req, nil, 0)
            } else {
                fuse_reply_err(req, Self.errno(for: status, tag: irp.requesterTag))
            }
            buffers.put(buffer, size: word)
            io.freeIrp(irp)
        case .write:
            if status.isSuccess {
                fuse_reply_write(req, checkedLength(information, word, irp))
            } else {
                fuse_reply_err(req, Self.errno(for: status, tag: irp.requesterTag))
            }
            finishBorrowing(irp)
        case .ioctl:
            let envelope = irp.requesterBuffer!
            let n = status.isError ? 0 : checkedLength(information, word, irp)
            IoctlEnvelope.storeResult(status: status, information: information, into: envelope)
            fuse_reply_ioctl(req, 0, envelope, IoctlEnvelope.headerSize + n)
            finishBorrowing(irp)
        case .flush:
            fuse_reply_err(req, status.isSuccess ? 0 : ErrnoTable.errno(for: status))
            io.freeIrp(irp)
        case nil:
            fuse_reply_err(req, EIO)
            io.freeIrp(irp)
        }
    }

    /// The errno table, except that a non-blocking caller's cancelled wait is EAGAIN.
    @inline(__always)
    static func errno(for status: NTStatus, tag: Int) -> Int32 {
        status == .cancelled && tag & nonBlocking != 0 ? EAGAIN : ErrnoTable.errno(for: status)
    }

    /// Information may not exceed the buffer it describes (a verifier rule).
    @inline(__always)
    private func checkedLength(_ information: Int, _ limit: Int, _ irp: IRP) -> Int {
        if information > limit || information < 0 {
            io.verifier.report(.informationExceedsBuffer, irp: irp)
            return max(0, min(information, limit))
        }
        return information
    }

    /// A write or ioctl: if its worker is waiting for it, wake the worker, which frees it.
    @inline(__always)
    private func finishBorrowing(_ irp: IRP) {
        if irp.completedAsynchronously {
            irp.signalDone()
        } else {
            io.freeIrp(irp)
        }
    }
}

/// FUSE_INTERRUPT: the caller got a signal. libfuse calls this with the request's
/// lock held, and our reply needs that lock, so the cancel runs on another thread.
private let fuseInterrupt: fuse_interrupt_func_t = { _, data in
    guard let data else { return }
    let irp = Unmanaged<IRP>.fromOpaque(data).takeUnretainedValue()
    let generation = irp.generation
    DispatchQueue.global().async { irp.cancel(ifGeneration: generation) }
}
