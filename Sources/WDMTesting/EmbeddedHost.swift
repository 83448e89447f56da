// EmbeddedHost: a Win32-like synchronous API (CreateFile, ReadFile, WriteFile,
// DeviceIoControl, CloseHandle) over an in-process I/O manager, so drivers are
// tested with no mount. It goes through the same seam as the FUSE bridge
// (`IOManager.open`, `send`, `call`, `close`, in WDM's IO/IOManager+Host.swift),
// so a driver sees the same IRPs and the verifier the same rules in both.
//
// It lives in WDMTesting, not in WDM: it needs nothing of WDM but that public
// seam, and a daemon or a driver does not need it. Driver packages get it (with
// the recorders and stack builders beside it) from the `WDMTesting` product.

import Dispatch
import Synchronization
import WDM

/// Drives an `IOManager` in-process, as an application would through Win32.
public final class EmbeddedHost: Sendable {
    public let io: IOManager

    public init(_ io: IOManager) { self.io = io }

    /// `CreateFile`: IRP_MJ_CREATE to the top of the named device's stack.
    public func open(_ link: String, access: AccessMask = [.readData, .writeData]) throws(NTStatus) -> FileObject {
        try io.open(link, access: access)
    }

    /// `CloseHandle` on the last handle: IRP_MJ_CLEANUP, then IRP_MJ_CLOSE.
    @discardableResult
    public func close(_ file: FileObject) -> (cleanup: NTStatus, close: NTStatus) { io.close(file) }

    /// `FlushFileBuffers`: IRP_MJ_FLUSH_BUFFERS.
    public func flush(_ file: FileObject) -> NTStatus { io.call(.flush, on: file).status }

    /// `ReadFile` of up to `count` bytes at `offset`.
    public func read(_ file: FileObject, count: Int, offset: Int64 = 0) -> (status: NTStatus, data: [UInt8]) {
        var buffer = [UInt8](repeating: 0xA5, count: count)
        let io = self.io
        let result = buffer.withUnsafeMutableBytes { raw in
            io.call(.read(buffer: raw.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1)!, length: count, offset: offset), on: file)
        }
        return (result.status, result.status.isError ? [] : Array(buffer.prefix(max(0, min(result.information, count)))))
    }

    /// `WriteFile` of `data` at `offset`; returns the status and the bytes written.
    public func write(_ file: FileObject, _ data: [UInt8], offset: Int64 = 0) -> IOStatusBlock {
        var copy = data
        let io = self.io
        return copy.withUnsafeMutableBytes { raw in
            io.call(.write(buffer: raw.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1)!, length: data.count, offset: offset, borrowedFrom: nil), on: file)
        }
    }

    /// `DeviceIoControl` with separate input and output, laid out in one host
    /// buffer as the wdmfs envelope lays them out (`DirectLayout`).
    public func deviceIoControl(
        _ file: FileObject, _ code: ControlCode, input: [UInt8] = [], outputLength: Int = 0
    ) -> (status: NTStatus, information: Int, output: [UInt8]) {
        let direct = code.method == .inDirect || code.method == .outDirect
        let capacity = direct ? DirectLayout.capacity(inputLength: input.count, outputLength: outputLength)
            : max(input.count, outputLength)
        let outputAt = direct ? DirectLayout.outputOffset(inputLength: input.count) : 0
        var buffer = input + [UInt8](repeating: 0, count: capacity - input.count)
        let io = self.io
        let result = buffer.withUnsafeMutableBytes { raw in
            io.call(.deviceControl(code: code, buffer: raw.baseAddress, capacity: capacity,
                                   inputLength: input.count, outputLength: outputLength, borrowedFrom: nil), on: file)
        }
        let n = result.status.isError ? 0 : max(0, min(result.information, outputLength))
        return (result.status, result.information, Array(buffer[outputAt..<outputAt + n]))
    }

    /// The size the stack reports through IRP_MJ_QUERY_INFORMATION, or nil if it does not answer.
    public func querySize(_ file: FileObject) -> Int64? {
        var info = [UInt8](repeating: 0, count: FileStandardInformation.size)
        let io = self.io
        return info.withUnsafeMutableBytes { raw -> Int64? in
            let status = io.call(.queryStandardInformation(buffer: raw.baseAddress!), on: file).status
            return status.isSuccess ? FileStandardInformation.endOfFile(in: raw.baseAddress!) : nil
        }
    }

    /// Starts a read that may pend; the result is collected with `PendingRequest.wait`.
    public func beginRead(_ file: FileObject, count: Int, offset: Int64 = 0) -> PendingRequest {
        let pending = PendingRequest(capacity: count)
        let io = self.io
        pending.start { io.send(.read(buffer: pending.buffer, length: count, offset: offset), on: file, requester: pending) }
        return pending
    }

    /// Starts a write that may pend. Its data is borrowed (as the bridge's are): if
    /// the IRP pends, the I/O manager copies it, and the host's buffer is at once
    /// overwritten with 0xEE to prove the driver no longer reads it.
    public func beginWrite(_ file: FileObject, _ data: [UInt8], offset: Int64 = 0) -> PendingRequest {
        let pending = PendingRequest(capacity: data.count)
        pending.buffer.copyMemory(from: data, byteCount: data.count)
        let io = self.io
        pending.start {
            let s = io.send(.write(buffer: pending.buffer, length: data.count, offset: offset, borrowedFrom: pending.buffer), on: file, requester: pending)
            if s == .pending { pending.buffer.initializeMemory(as: UInt8.self, repeating: 0xEE, count: data.count) }
            return s
        }
        return pending
    }

    /// Starts an IOCTL that may pend, with borrowed input (see `beginWrite`).
    public func beginDeviceIoControl(_ file: FileObject, _ code: ControlCode, input: [UInt8] = [], outputLength: Int = 0) -> PendingRequest {
        let direct = code.method == .inDirect || code.method == .outDirect
        let capacity = direct ? DirectLayout.capacity(inputLength: input.count, outputLength: outputLength) : max(input.count, outputLength)
        let pending = PendingRequest(capacity: capacity, outputAt: direct ? DirectLayout.outputOffset(inputLength: input.count) : 0, outputLength: outputLength)
        pending.buffer.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
        pending.buffer.copyMemory(from: input, byteCount: input.count)
        let io = self.io
        pending.start {
            let s = io.send(.deviceControl(code: code, buffer: pending.buffer, capacity: capacity, inputLength: input.count,
                                           outputLength: outputLength, borrowedFrom: pending.buffer), on: file, requester: pending)
            if s == .pending { pending.buffer.initializeMemory(as: UInt8.self, repeating: 0xEE, count: capacity) }
            return s
        }
        return pending
    }
}

/// A request in flight from `EmbeddedHost.begin…`.
public final class PendingRequest: IRPRequester, @unchecked Sendable {
    let buffer: UnsafeMutableRawPointer
    let capacity: Int
    let outputAt: Int
    let outputLength: Int?
    private let finished = DispatchSemaphore(value: 0)
    private let irp = HandoffMutex<IRP?>(nil)
    private let result = HandoffMutex<(NTStatus, Int, [UInt8])>((.pending, 0, []))
    /// True when `send` returned STATUS_PENDING.
    public private(set) var pended = false

    init(capacity: Int, outputAt: Int = 0, outputLength: Int? = nil) {
        self.capacity = capacity
        self.outputAt = outputAt
        self.outputLength = outputLength
        buffer = .allocate(byteCount: max(capacity, 1), alignment: 16)
    }

    deinit { buffer.deallocate() }

    func start(_ send: () -> NTStatus) { pended = send() == .pending }

    public func irpPending(_ irp: IRP) { self.irp.withLock { $0 = irp } }

    public func irpCompleted(_ irp: IRP) {
        let status = irp.ioStatus.status
        let info = irp.ioStatus.information
        let limit = outputLength ?? capacity
        let n = status.isError ? 0 : max(0, min(info, limit))
        // The data is where the IRP left it: the host's buffer, or the I/O manager's copy.
        let base = (irp.hostBuffer ?? buffer) + outputAt
        let data = Array(UnsafeRawBufferPointer(start: base, count: n))
        result.withLock { $0 = (status, info, data) }
        self.irp.withLock { $0 = nil }
        finished.signal()
    }

    /// The final status, once `wait` returned true.
    public var status: NTStatus { result.withLock { $0.0 } }
    /// The final Information.
    public var information: Int { result.withLock { $0.1 } }
    /// The data read (or an IOCTL's output).
    public var data: [UInt8] { result.withLock { $0.2 } }

    /// `CancelIo`: cancels the request if it is still in flight.
    @discardableResult
    public func cancel() -> Bool { irp.withLock { $0 }?.cancelIrp(reportingStale: false) ?? false }

    /// Waits for completion; false on timeout.
    public func wait(seconds: Double = 5) -> Bool {
        if finished.wait(timeout: .now() + seconds) == .success {
            finished.signal()
            return true
        }
        return false
    }
}
