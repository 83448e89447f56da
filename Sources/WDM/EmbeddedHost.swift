// EmbeddedHost: a Win32-like synchronous API (CreateFile, ReadFile, WriteFile,
// DeviceIoControl, CloseHandle) over an in-process I/O manager, so drivers are
// tested with no mount. It builds IRPs with the same I/O-manager code the FUSE
// bridge uses.

import Dispatch

/// Drives an `IOManager` in-process, as an application would through Win32.
public final class EmbeddedHost: Sendable {
    public let io: IOManager

    public init(_ io: IOManager) { self.io = io }

    /// `CreateFile`: IRP_MJ_CREATE to the top of the named device's stack.
    public func open(_ link: String, access: AccessMask = [.readData, .writeData]) throws(NTStatus) -> FileObject {
        let file = try io.makeFileObject(link: link, access: access)
        let irp = io.makeIrp(.create, file: file)
        io.prepareCreate(irp, access: access)
        let status = io.callSynchronously(irp)
        io.freeIrp(irp)
        guard status.isSuccess else { throw status }
        return file
    }

    /// `CloseHandle` on the last handle: IRP_MJ_CLEANUP, then IRP_MJ_CLOSE.
    /// Returns the two statuses.
    @discardableResult
    public func close(_ file: FileObject) -> (cleanup: NTStatus, close: NTStatus) {
        (simple(.cleanup, file), simple(.close, file))
    }

    /// `FlushFileBuffers`: IRP_MJ_FLUSH_BUFFERS.
    public func flush(_ file: FileObject) -> NTStatus { simple(.flushBuffers, file) }

    private func simple(_ major: MajorFunction, _ file: FileObject) -> NTStatus {
        let irp = io.makeIrp(major, file: file)
        let status = io.callSynchronously(irp)
        io.freeIrp(irp)
        return status
    }

    /// `ReadFile` of up to `count` bytes at `offset`.
    public func read(_ file: FileObject, count: Int, offset: Int64 = 0) -> (status: NTStatus, data: [UInt8]) {
        var buffer = [UInt8](repeating: 0xA5, count: count)
        let io = self.io
        let (status, info) = buffer.withUnsafeMutableBytes { raw in
            let irp = io.makeIrp(.read, file: file)
            io.prepareTransfer(irp, buffer: raw.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1)!, length: count, offset: offset)
            let status = io.callSynchronously(irp)
            let info = irp.ioStatus.information
            io.freeIrp(irp)
            return (status, info)
        }
        return (status, status.isError ? [] : Array(buffer.prefix(max(0, min(info, count)))))
    }

    /// `WriteFile` of `data` at `offset`; returns the status and the bytes written.
    public func write(_ file: FileObject, _ data: [UInt8], offset: Int64 = 0) -> IOStatusBlock {
        var copy = data
        let io = self.io
        return copy.withUnsafeMutableBytes { raw in
            let irp = io.makeIrp(.write, file: file)
            io.prepareTransfer(irp, buffer: raw.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1)!, length: data.count, offset: offset)
            _ = io.callSynchronously(irp)
            let result = irp.ioStatus
            io.freeIrp(irp)
            return result
        }
    }

    /// `DeviceIoControl` with one buffer of max(input, output) bytes shared by both directions.
    public func deviceIoControl(
        _ file: FileObject, _ code: ControlCode, input: [UInt8] = [], outputLength: Int = 0
    ) -> (status: NTStatus, information: Int, output: [UInt8]) {
        let capacity = max(input.count, outputLength)
        var buffer = input + [UInt8](repeating: 0, count: capacity - input.count)
        let io = self.io
        let (status, info) = buffer.withUnsafeMutableBytes { raw -> (NTStatus, Int) in
            let irp = io.makeIrp(.deviceControl, file: file)
            do {
                try io.prepareDeviceControl(
                    irp, code: code, buffer: raw.baseAddress, capacity: capacity,
                    inputLength: input.count, outputLength: outputLength)
            } catch let error as NTStatus {
                io.freeIrp(irp)
                return (error, 0)
            } catch {
                io.freeIrp(irp)
                return (.unsuccessful, 0)
            }
            let status = io.callSynchronously(irp)
            let info = irp.ioStatus.information
            io.freeIrp(irp)
            return (status, info)
        }
        let n = status.isError ? 0 : max(0, min(info, outputLength))
        return (status, info, Array(buffer.prefix(n)))
    }

    /// The size the stack reports through IRP_MJ_QUERY_INFORMATION, or nil if it does not answer.
    public func querySize(_ file: FileObject) -> Int64? {
        var info = [UInt8](repeating: 0, count: FileStandardInformation.size)
        let io = self.io
        return info.withUnsafeMutableBytes { raw -> Int64? in
            let irp = io.makeIrp(.queryInformation, file: file)
            io.prepareQueryStandardInformation(irp, buffer: raw.baseAddress!)
            let status = io.callSynchronously(irp)
            io.freeIrp(irp)
            return status.isSuccess ? FileStandardInformation.endOfFile(in: raw.baseAddress!) : nil
        }
    }

    /// Starts a read that may pend; the result is collected with `PendingRead.wait`.
    public func beginRead(_ file: FileObject, count: Int, offset: Int64 = 0) -> PendingRead {
        let pending = PendingRead(io: io, count: count)
        let irp = io.makeIrp(.read, file: file)
        io.prepareTransfer(irp, buffer: pending.buffer, length: count, offset: offset)
        irp.requester = pending
        pending.start(irp, generation: irp.generation)
        _ = io.submit(irp)
        return pending
    }
}

/// A read in flight from `EmbeddedHost.beginRead`.
public final class PendingRead: IRPRequester, @unchecked Sendable {
    let io: IOManager
    let buffer: UnsafeMutableRawPointer
    let count: Int
    private let finished = DispatchSemaphore(value: 0)
    private var irp: IRP?
    private var generation: UInt64 = 0
    /// The final status and data, once `wait` returned true.
    public private(set) var status: NTStatus = .pending
    public private(set) var data: [UInt8] = []

    init(io: IOManager, count: Int) {
        self.io = io
        self.count = count
        buffer = .allocate(byteCount: max(count, 1), alignment: 16)
    }

    deinit { buffer.deallocate() }

    func start(_ irp: IRP, generation: UInt64) {
        self.irp = irp
        self.generation = generation
    }

    public func irpCompleted(_ irp: IRP) {
        status = irp.ioStatus.status
        let n = status.isError ? 0 : min(irp.ioStatus.information, count)
        data = Array(UnsafeRawBufferPointer(start: buffer, count: n))
        io.freeIrp(irp)
        finished.signal()
    }

    /// `CancelIo`: cancels the read if it is still in flight.
    @discardableResult
    public func cancel() -> Bool { irp?.cancel(ifGeneration: generation) ?? false }

    /// Waits for completion; false on timeout.
    public func wait(seconds: Double = 5) -> Bool {
        if finished.wait(timeout: .now() + seconds) == .success {
            finished.signal()
            return true
        }
        return false
    }
}
