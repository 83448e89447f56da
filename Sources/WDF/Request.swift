// Request: the framework's WDFREQUEST. It hides where each METHOD_* and the
// device's buffering put the caller's buffers, and it has one owner: it is
// ~Copyable and every way to finish with it (complete, forward to the lower
// device or to another queue, mark cancellable) consumes it, so completing
// twice does not compile. A request its driver lets go without any of these is
// completed by the framework with STATUS_DRIVER_INTERNAL_ERROR and reported
// (Verifier rule requestDropped).
//
// It is also ~Escapable: it lives only as long as the call it was handed to
// (a queue's handler, a forward's completion callback, a cancel callback), so a
// driver cannot store it and finish with it later behind the framework's back;
// a driver keeps a request the framework's ways (another queue, marked
// cancellable, sent down with a completion callback). That is what lets a
// queue present a request inline, in the dispatch routine that received it:
// completed in the handler, the IRP never pends (its buffers are never copied)
// and the dispatch routine returns the status; kept, it is marked pending
// at that moment and the dispatch routine returns STATUS_PENDING.

import WDM

/// A request the framework presents to a driver.
public struct Request: ~Copyable, ~Escapable, @unchecked Sendable {
    // Only trivially destroyed parts, so that the consuming methods can `discard self`.
    let handle: IRP.Handle
    /// The queue it counts against (retained, unless inline), if it came from one.
    let queue: Unmanaged<Queue>?
    /// The presenting call's token in `queue` (0: none).
    let presenter: UInt64
    /// Inline: where the dispatch routine that presents it reads what to return
    /// (a slot on its stack; the handle and the queue are then not retained).
    let outcome: UnsafeMutablePointer<NTStatus>?

    @_lifetime(immortal)
    init(_ irp: IRP, queue: Queue?, presenter: UInt64 = 0) {
        handle = irp.retainedHandle()
        self.queue = queue.map { .passRetained($0) }
        self.presenter = presenter
        outcome = nil
    }

    /// A request presented inline: valid while the presenting dispatch routine runs.
    @_lifetime(immortal)
    init(inline irp: IRP, queue: Queue?, presenter: UInt64, outcome: UnsafeMutablePointer<NTStatus>) {
        handle = irp.unretainedHandle()
        self.queue = queue.map { .passUnretained($0) }
        self.presenter = presenter
        self.outcome = outcome
    }

    @_lifetime(immortal)
    init(_ parts: Parts) {
        handle = parts.handle
        queue = parts.queue
        presenter = parts.presenter
        outcome = nil
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
        let parts = take()
        parts.outcome?.pointee = status
        parts.handle.irp.complete(status, information: information)
        parts.finished()
    }

    /// `WdfRequestForwardToIoQueue`: the request waits in `queue` (of the same
    /// device) until that queue presents it or the driver takes it out.
    public consuming func forward(to queue: Queue) {
        let parts = take()
        // Pending before the other queue has it (it may complete it at once); no
        // reference to keep: the other queue holds the IRP, this one is done with it.
        parts.pend()
        queue.enqueue(parts.handle.irp)
        parts.finished()
    }

    /// `WdfRequestSend` to the lower device. With no `completion` the request goes
    /// down as it is (IoSkipCurrentIrpStackLocation, "send and forget") and is
    /// no longer the driver's. With one, `completion` gets it back once the lower
    /// drivers completed it (`status`, `information`) and must finish with it.
    /// Returns what the lower driver's dispatch routine returned.
    @discardableResult
    public consuming func forwardToLower(completion: (@Sendable (consuming Request) -> Void)? = nil) -> NTStatus {
        var parts = take()
        let irp = parts.handle.irp
        guard let device = irp.currentStackLocation.deviceObject else {
            parts.outcome?.pointee = .invalidDeviceRequest
            irp.complete(.invalidDeviceRequest)
            parts.finished()
            return .invalidDeviceRequest
        }
        guard let completion else {
            irp.skipCurrentStackLocation()
            let status = device.callLower(irp)
            parts.outcome?.pointee = status
            parts.finished()
            return status
        }
        // The callback owns the handle and the queue's count from here; the
        // request will be finished after this dispatch routine returned.
        parts = parts.kept()
        irp.copyCurrentStackLocationToNext()
        irp.setCompletionRoutine({ _, _, context in
            completion(Request(unsafeDowncast(context!, to: Kept.self).parts))
            return .moreProcessingRequired
        }, context: Kept(parts))
        return device.callLower(irp)
    }

    /// What a request is made of; the caller of `take()` owns it.
    struct Parts {
        let handle: IRP.Handle
        let queue: Unmanaged<Queue>?
        let presenter: UInt64
        let outcome: UnsafeMutablePointer<NTStatus>?

        var isInline: Bool { outcome != nil }

        /// The request outlives the call it was presented in: an inline one is
        /// marked pending now (its dispatch routine returns STATUS_PENDING) and
        /// takes the references a request kept beyond its dispatch needs.
        func kept() -> Parts {
            guard isInline else { return self }
            pend()
            let irp = handle.irp
            _ = queue?.retain()
            // Presenter 0: the inline call may have returned when it finishes, so its end presents more.
            return Parts(handle: irp.retainedHandle(), queue: queue, presenter: 0, outcome: nil)
        }

        /// An inline request will not be completed in its dispatch routine: marked
        /// pending, and that routine returns STATUS_PENDING.
        func pend() {
            guard let outcome else { return }
            handle.irp.markPending()
            outcome.pointee = .pending
        }

        /// It is done with: its queue counts it finished, the references go.
        func finished() {
            if let queue {
                queue.takeUnretainedValue().requestDone(presenter)
                if !isInline { queue.release() }
            }
            if !isInline { handle.release() }
        }
    }

    /// Parts kept as a completion routine's context.
    final class Kept: @unchecked Sendable {
        let parts: Parts
        init(_ parts: Parts) { self.parts = parts }
    }

    /// `WdfRequestMarkCancelableEx`: from now on a cancel completes the request
    /// through `onCancel`, which gets it (and must complete it). The driver keeps
    /// the returned handle and takes the request back with `unmark()` to finish
    /// with it itself. A request already cancelled goes to `onCancel` at once.
    public consuming func markCancellable(_ onCancel: @escaping @Sendable (consuming Request) -> Void) -> CancellableRequest {
        let held = CancellableRequest(take().kept(), onCancel: onCancel)
        held.arm()
        return held
    }

    /// The parts, without running deinit (the caller now owns them).
    consuming func take() -> Parts {
        let parts = Parts(handle: handle, queue: queue, presenter: presenter, outcome: outcome)
        discard self
        return parts
    }

    deinit {
        // Dropped: neither completed, forwarded nor kept. The framework completes it.
        let irp = handle.irp
        let device = irp.currentLocation <= irp.stackCount ? irp.currentStackLocation.deviceObject : nil
        _ = irp.ioManager.verifier.report(.requestDropped, irp: irp, device: device,
                                          detail: "\(irp.majorFunction.wdmName) completed by the framework with STATUS_DRIVER_INTERNAL_ERROR")
        outcome?.pointee = .driverInternalError
        irp.complete(.driverInternalError)
        Parts(handle: handle, queue: queue, presenter: presenter, outcome: outcome).finished()
    }
}

/// A request marked cancellable: the framework holds it until a cancel (which
/// hands it to the `onCancel` callback) or `unmark()` (which hands it back).
public final class CancellableRequest: @unchecked Sendable {
    private let parts: Request.Parts
    private let onCancel: @Sendable (consuming Request) -> Void

    init(_ parts: Request.Parts, onCancel: @escaping @Sendable (consuming Request) -> Void) {
        self.parts = parts
        self.onCancel = onCancel
    }

    func arm() {
        let irp = parts.handle.irp
        irp.driverContext = self
        let armed = irp.setCancelRoutineUnlessCancelled { _, irp in
            let held = unsafeDowncast(irp.driverContext!, to: CancellableRequest.self)
            irp.driverContext = nil
            held.onCancel(Request(held.parts))
        }
        if !armed {
            irp.driverContext = nil
            onCancel(Request(parts))
        }
    }

    /// `WdfRequestUnmarkCancelable`: the request back, or nil if a cancel already
    /// took it (its `onCancel` has it).
    @_lifetime(immortal)
    public func unmark() -> Request? {
        let irp = parts.handle.irp
        guard irp.setCancelRoutine(nil) != nil else { return nil }
        irp.driverContext = nil
        return Request(parts)
    }
}
