// Request: the framework's WDFREQUEST. It hides where each METHOD_* and the
// device's buffering put the caller's buffers, and it has one owner: it is
// ~Copyable and every way to finish with it (complete, forward to the lower
// device or to another queue, mark cancellable) consumes it, so completing
// twice does not compile. A request its driver lets go without any of these is
// completed by the framework with STATUS_DRIVER_INTERNAL_ERROR and reported
// (Verifier rule requestDropped).

import WDM

/// A request the framework presents to a driver.
public struct Request: ~Copyable, @unchecked Sendable {
    // Only trivially destroyed parts, so that the consuming methods can `discard self`.
    let handle: IRP.Handle
    /// The queue it counts against (retained), if it came from one.
    let queue: Unmanaged<Queue>?
    /// The presenting call's token in `queue` (0: none).
    let presenter: UInt64

    init(_ irp: IRP, queue: Queue?, presenter: UInt64 = 0) {
        handle = irp.retainedHandle()
        self.queue = queue.map { .passRetained($0) }
        self.presenter = presenter
    }

    init(handle: IRP.Handle, queue: Unmanaged<Queue>?, presenter: UInt64) {
        self.handle = handle
        self.queue = queue
        self.presenter = presenter
    }

    /// The WDM IRP underneath (`WdfRequestWdmGetIrp`), for what the framework does not wrap.
    public var irp: IRP { handle.irp }
    /// `IRP_MJ_READ`, `IRP_MJ_WRITE`, `IRP_MJ_DEVICE_CONTROL`...
    public var major: MajorFunction { irp.majorFunction }
    /// The IOCTL code of a device control request.
    public var ioControlCode: ControlCode? {
        major == .deviceControl || major == .internalDeviceControl ? irp.parameters.deviceIoControl.ioControlCode : nil
    }
    /// The transfer length: a read's or write's length, an IOCTL's output length.
    public var length: Int {
        switch major {
        case .read, .write: irp.parameters.read.length
        case .deviceControl, .internalDeviceControl: irp.parameters.deviceIoControl.outputBufferLength
        default: 0
        }
    }
    /// A read's or write's byte offset.
    public var offset: Int64 { irp.parameters.read.byteOffset }
    /// The file object (handle) the request came through.
    public var file: FileObject? { irp.fileObject }
    /// True once the request was cancelled (`WdfRequestIsCanceled`).
    public var isCancelled: Bool { irp.cancel }
    /// The status the lower drivers completed it with (in a forward's completion callback).
    public var status: NTStatus { irp.ioStatus.status }
    /// The Information the lower drivers completed it with.
    public var information: Int { irp.ioStatus.information }
    /// The device the request is at.
    public var device: DeviceObject? { irp.currentStackLocation.deviceObject }

    /// `WdfRequestRetrieveInputBuffer`: a write's data or an IOCTL's input, wherever
    /// the method put it; STATUS_BUFFER_TOO_SMALL if shorter than `minimumLength`.
    public func input(minimumLength: Int = 0) throws(NTStatus) -> UnsafeRawBufferPointer {
        let irp = self.irp
        let start: UnsafeRawPointer?, count: Int
        switch major {
        case .write:
            let b = irp.transferBuffer
            (start, count) = (UnsafeRawPointer(b.baseAddress), b.count)
        case .deviceControl, .internalDeviceControl:
            let b = irp.deviceControlInput
            (start, count) = (b.baseAddress, irp.parameters.deviceIoControl.inputBufferLength)
        default:
            throw NTStatus.invalidDeviceRequest
        }
        guard count >= minimumLength else { throw NTStatus.bufferTooSmall }
        guard let start, count > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: start, count: count)
    }

    /// `WdfRequestRetrieveOutputBuffer`: a read's buffer or an IOCTL's output,
    /// wherever the method put it; STATUS_BUFFER_TOO_SMALL if shorter than `minimumLength`.
    public func output(minimumLength: Int = 0) throws(NTStatus) -> UnsafeMutableRawBufferPointer {
        let irp = self.irp
        let start: UnsafeMutableRawPointer?, count: Int
        switch major {
        case .read:
            let b = irp.transferBuffer
            (start, count) = (b.baseAddress, b.count)
        case .deviceControl, .internalDeviceControl:
            let b = irp.deviceControlOutput
            (start, count) = (b.baseAddress, irp.parameters.deviceIoControl.outputBufferLength)
        default:
            throw NTStatus.invalidDeviceRequest
        }
        guard count >= minimumLength else { throw NTStatus.bufferTooSmall }
        guard let start, count > 0 else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        return UnsafeMutableRawBufferPointer(start: start, count: count)
    }

    /// `WdfRequestCompleteWithInformation`.
    public consuming func complete(_ status: NTStatus, information: Int = 0) {
        let (handle, queue, presenter) = take()
        handle.irp.complete(status, information: information)
        Request.finished(handle, queue, presenter)
    }

    /// `WdfRequestForwardToIoQueue`: the request waits in `queue` (of the same
    /// device) until that queue presents it or the driver takes it out.
    public consuming func forward(to queue: Queue) {
        let (handle, old, presenter) = take()
        let irp = handle.irp
        queue.enqueue(irp)
        Request.finished(handle, old, presenter)
    }

    /// `WdfRequestSend` to the lower device. With no `completion` the request goes
    /// down as it is (IoSkipCurrentIrpStackLocation, "send and forget") and is
    /// no longer the driver's. With one, `completion` gets it back once the lower
    /// drivers completed it (`status`, `information`) and must finish with it.
    /// Returns what the lower driver's dispatch routine returned.
    @discardableResult
    public consuming func forwardToLower(completion: (@Sendable (consuming Request) -> Void)? = nil) -> NTStatus {
        let (handle, queue, presenter) = take()
        let irp = handle.irp
        guard let device = irp.currentStackLocation.deviceObject else {
            irp.complete(.invalidDeviceRequest)
            Request.finished(handle, queue, presenter)
            return .invalidDeviceRequest
        }
        guard let completion else {
            irp.skipCurrentStackLocation()
            let status = device.callLower(irp)
            Request.finished(handle, queue, presenter)
            return status
        }
        irp.copyCurrentStackLocationToNext()
        // The callback owns the handle and the queue's count from here.
        let parts = Parts(handle: handle, queue: queue, presenter: presenter)
        irp.setCompletionRoutine({ _, _, context in
            let p = unsafeDowncast(context!, to: Parts.self)
            completion(Request(handle: p.handle, queue: p.queue, presenter: p.presenter))
            return .moreProcessingRequired
        }, context: parts)
        return device.callLower(irp)
    }

    private final class Parts: @unchecked Sendable {
        let handle: IRP.Handle
        let queue: Unmanaged<Queue>?
        let presenter: UInt64
        init(handle: IRP.Handle, queue: Unmanaged<Queue>?, presenter: UInt64) {
            self.handle = handle
            self.queue = queue
            self.presenter = presenter
        }
    }

    /// `WdfRequestMarkCancelableEx`: from now on a cancel completes the request
    /// through `onCancel`, which gets it (and must complete it). The driver keeps
    /// the returned handle and takes the request back with `unmark()` to finish
    /// with it itself. A request already cancelled goes to `onCancel` at once.
    public consuming func markCancellable(_ onCancel: @escaping @Sendable (consuming Request) -> Void) -> CancellableRequest {
        let (handle, queue, presenter) = take()
        let held = CancellableRequest(handle: handle, queue: queue, presenter: presenter, onCancel: onCancel)
        held.arm()
        return held
    }

    /// The parts, without running deinit (the caller now owns them).
    consuming func take() -> (IRP.Handle, Unmanaged<Queue>?, UInt64) {
        let parts = (handle, queue, presenter)
        discard self
        return parts
    }

    static func finished(_ handle: IRP.Handle, _ queue: Unmanaged<Queue>?, _ presenter: UInt64) {
        if let queue {
            queue.takeUnretainedValue().requestDone(presenter)
            queue.release()
        }
        handle.release()
    }

    deinit {
        // Dropped: neither completed, forwarded nor kept. The framework completes it.
        let irp = handle.irp
        let device = irp.currentLocation <= irp.stackCount ? irp.currentStackLocation.deviceObject : nil
        _ = irp.ioManager.verifier.report(.requestDropped, irp: irp, device: device,
                                          detail: "\(irp.majorFunction.wdmName) completed by the framework with STATUS_DRIVER_INTERNAL_ERROR")
        irp.complete(.driverInternalError)
        Request.finished(handle, queue, presenter)
    }
}

/// A request marked cancellable: the framework holds it until a cancel (which
/// hands it to the `onCancel` callback) or `unmark()` (which hands it back).
public final class CancellableRequest: @unchecked Sendable {
    private let handle: IRP.Handle
    private let queue: Unmanaged<Queue>?
    private let presenter: UInt64
    private let onCancel: @Sendable (consuming Request) -> Void

    init(handle: IRP.Handle, queue: Unmanaged<Queue>?, presenter: UInt64, onCancel: @escaping @Sendable (consuming Request) -> Void) {
        self.handle = handle
        self.queue = queue
        self.presenter = presenter
        self.onCancel = onCancel
    }

    func arm() {
        let irp = handle.irp
        irp.driverContext = self
        let armed = irp.setCancelRoutineUnlessCancelled { _, irp in
            let held = unsafeDowncast(irp.driverContext!, to: CancellableRequest.self)
            irp.driverContext = nil
            held.onCancel(Request(handle: held.handle, queue: held.queue, presenter: held.presenter))
        }
        if !armed {
            irp.driverContext = nil
            onCancel(Request(handle: handle, queue: queue, presenter: presenter))
        }
    }

    /// `WdfRequestUnmarkCancelable`: the request back, or nil if a cancel already
    /// took it (its `onCancel` has it).
    public func unmark() -> Request? {
        let irp = handle.irp
        guard irp.setCancelRoutine(nil) != nil else { return nil }
        irp.driverContext = nil
        return Request(handle: handle, queue: queue, presenter: presenter)
    }
}
