// The one seam between a host (the FUSE bridge, the embedded host, a benchmark)
// and the I/O manager: open a device by name and get a handle, send requests on
// it, close it. This is where the work of NtCreateFile, NtReadFile,
// NtWriteFile, NtDeviceIoControlFile and the close path is done, so the
// buffering rules, the access checks and the handle checks exist once.

import Dispatch
import Synchronization

/// A request a host sends on an open handle. Buffers are the host's memory.
/// `borrowedFrom`, when set, says the host's memory from there to the end of
/// the buffer is valid only until `send` returns: if the IRP pends, the I/O
/// manager moves that region to a copy of its own first (counted in
/// `bytesCopied`) and points the IRP there.
public enum IORequest: @unchecked Sendable {
    /// IRP_MJ_READ of `length` bytes at `offset` into `buffer`.
    case read(buffer: UnsafeMutableRawPointer, length: Int, offset: Int64)
    /// IRP_MJ_WRITE of `length` bytes at `offset` from `buffer`.
    case write(buffer: UnsafeMutableRawPointer, length: Int, offset: Int64, borrowedFrom: UnsafeMutableRawPointer?)
    /// IRP_MJ_DEVICE_CONTROL. `buffer` holds `capacity` bytes: the input on entry,
    /// the output on return (one buffer for both, as when a caller passes the
    /// same buffer twice; for the direct methods see `DirectLayout`).
    case deviceControl(code: ControlCode, buffer: UnsafeMutableRawPointer?, capacity: Int, inputLength: Int, outputLength: Int, borrowedFrom: UnsafeMutableRawPointer?)
    /// IRP_MJ_FLUSH_BUFFERS.
    case flush
    /// IRP_MJ_QUERY_INFORMATION(FileStandardInformation) into `buffer` (24 bytes).
    case queryStandardInformation(buffer: UnsafeMutableRawPointer)

    /// The host's buffer the request is answered from.
    var hostBuffer: UnsafeMutableRawPointer? {
        switch self {
        case .read(let b, _, _), .write(let b, _, _, _), .queryStandardInformation(let b): b
        case .deviceControl(_, let b, _, _, _, _): b
        case .flush: nil
        }
    }

    var major: MajorFunction {
        switch self {
        case .read: .read
        case .write: .write
        case .deviceControl: .deviceControl
        case .flush: .flushBuffers
        case .queryStandardInformation: .queryInformation
        }
    }
}

extension IOManager {
    // MARK: - Handles

    /// `CreateFile`: IRP_MJ_CREATE to the top of the named device's stack. The
    /// handle is usable once this returns; no request is accepted on a file
    /// object that did not go through CREATE.
    public func open(_ link: String, access: AccessMask) throws(NTStatus) -> FileObject {
        guard let device = device(forLink: link), !device.deleted else { throw NTStatus.noSuchDevice }
        // IopCheckDeviceAndDriver. The handle counts itself before it looks at the
        // device's state, and removal marks the state before it counts handles, so
        // one of the two always sees the other.
        let node = device.deviceNode
        if device.flags.contains(.exclusive) {
            guard device.openHandles.compareExchange(expected: 0, desired: 1, ordering: .sequentiallyConsistent).exchanged else {
                throw NTStatus.accessDenied  // a second open of a DO_EXCLUSIVE device
            }
        } else {
            device.openHandles.add(1, ordering: .sequentiallyConsistent)
        }
        node?.handles.add(1, ordering: .sequentiallyConsistent)
        func undo() {
            device.openHandles.subtract(1, ordering: .sequentiallyConsistent)
            if let node {
                node.handles.subtract(1, ordering: .sequentiallyConsistent)
                handleClosed(node)
            }
        }
        let state = device.openState.load(ordering: .sequentiallyConsistent)
        guard node == nil || state == DeviceObject.OpenState.started.rawValue, !device.flags.contains(.deviceInitializing) else {
            undo()
            throw NTStatus.noSuchDevice  // not started yet, being removed, or gone
        }
        let file = FileObject(deviceObject: device, grantedAccess: access, fileName: link)
        let irp = makeIrp(.create, file: file)
        irp.nextStackLocation.parameters.create.desiredAccess = access
        let (status, completed) = callSynchronously(irp)
        if completed { freeIrp(irp) }
        guard status.isSuccess else {
            undo()
            throw status
        }
        file.state.store(FileObject.State.open.rawValue, ordering: .releasing)
        file.top = device.topOfStack
        file.node = node
        return file
    }

    /// `CloseHandle` on the last handle: IRP_MJ_CLEANUP (drivers cancel what the
    /// handle left queued), then IRP_MJ_CLOSE. Returns the two statuses.
    @discardableResult
    public func close(_ file: FileObject) -> (cleanup: NTStatus, close: NTStatus) {
        let (ok, _) = file.state.compareExchange(
            expected: FileObject.State.open.rawValue, desired: FileObject.State.closed.rawValue, ordering: .acquiringAndReleasing)
        guard ok else { return (.invalidHandle, .invalidHandle) }
        var result: [NTStatus] = []
        for major in [MajorFunction.cleanup, .close] {
            let irp = makeIrp(major, file: file)
            let (status, completed) = callSynchronously(irp)
            if completed { freeIrp(irp) }
            result.append(status)
        }
        file.deviceObject.openHandles.subtract(1, ordering: .sequentiallyConsistent)
        if let node = file.node {
            node.handles.subtract(1, ordering: .sequentiallyConsistent)
            handleClosed(node)
        }
        return (result[0], result[1])
    }

    // MARK: - Requests

    /// Sends `request` on `file`. `requester.irpCompleted` is called exactly once,
    /// with the IRP holding the final status and Information; the I/O manager frees
    /// the IRP when it returns. Returns STATUS_PENDING if and only if that call
    /// comes later, from the thread that completes the IRP; otherwise it has
    /// already happened and the result is the final status.
    ///
    /// A request refused before any driver sees it (a handle that is not open, an
    /// IOCTL whose RequiredAccess the handle lacks, bad lengths) is completed with
    /// that status the same way.
    @inline(__always)
    public func send(_ request: IORequest, on file: FileObject, requester: any IRPRequester) -> NTStatus {
        let irp = makeIrp(request.major, file: file)
        irp.packet.requester = requester
        if let refused = prepare(irp, request, file) {
            return refuse(irp, refused)
        }
        watchDeadlineIfAsked(irp, file)
        if anyHeld.load(ordering: .relaxed), let top = irp.packet.targetDevice, top.held.load(ordering: .acquiring) != 0 {
            // A driver that says so fails I/O while it is not in D0, instead of holding it.
            if top.held.load(ordering: .relaxed) & HoldReason.power.rawValue != 0, failsWhileAsleep(top) { return refuse(irp, .deviceNotReady) }
            return park(irp, top)
        }
        return submit(irp)
    }

    /// The deadline stress option, for a verified driver's request: one load when off.
    @inline(__always) private func watchDeadlineIfAsked(_ irp: IRP, _ file: FileObject) {
        if verifier.stressBits.load(ordering: .relaxed) & StressBits.deadline != 0, verifier.verifies(file.deviceObject.driverObject) {
            watchDeadline(irp, file)
        }
    }

    /// Verifier's deadline for user IRPs: one still in flight when it passes is
    /// reported (the report touches nothing of the IRP: it can still be cancelled).
    private func watchDeadline(_ irp: IRP, _ file: FileObject) {
        let p = irp.packet, g = irp.generation
        let seconds = verifier.stress.deadline
        let label = IRPTracer.label(irp)
        let device = file.deviceObject
        stressQueue.asyncAfter(deadline: .now() + seconds) { [self] in
            defer { verifier.deadlineChecks.add(1, ordering: .releasing) }
            let w = p.state.load(ordering: .acquiring)
            guard w >> 8 == UInt64(g), w & 0xFF != UInt64(IRPPacket.Life.completed.rawValue), w & 0xFF != UInt64(IRPPacket.Life.free.rawValue),
                  verifier.stress.deadline > 0
            else { return }
            _ = verifier.report(.deadlineMissed, device: device, detail: "\(label) on \(file.fileName) not completed within \(seconds) s (it can still be cancelled)")
        }
    }

    /// Sends `request` and waits for it: the final status and Information.
    public func call(_ request: IORequest, on file: FileObject) -> IOStatusBlock {
        let irp = makeIrp(request.major, file: file)
        if let refused = prepare(irp, request, file) {
            freeIrp(irp)
            return IOStatusBlock(status: refused)
        }
        watchDeadlineIfAsked(irp, file)
        if anyHeld.load(ordering: .relaxed), let top = irp.packet.targetDevice, top.held.load(ordering: .acquiring) != 0 {
            if top.held.load(ordering: .relaxed) & HoldReason.power.rawValue != 0, failsWhileAsleep(top) {
                freeIrp(irp)
                return IOStatusBlock(status: .deviceNotReady)
            }
            // A synchronous caller's request waits with the others, and it waits for it.
            irp.packet.requester = SynchronousRequester.shared
            irp.packet.syncWait.store(UInt64(irp.generation) << 8 | IRPPacket.SyncWait.waiting.rawValue, ordering: .relaxed)
            _ = park(irp, top)
            let (_, completed) = waitSynchronously(irp)
            guard completed else { return IOStatusBlock(status: .cancelled) }
            let result = irp.packet.ioStatus
            freeIrp(irp)
            return result
        }
        let (_, completed) = callSynchronously(irp)
        guard completed else { return IOStatusBlock(status: .cancelled) }
        let result = irp.packet.ioStatus
        freeIrp(irp)
        return result
    }

    /// Whether a driver of the stack topped by `top` fails I/O while not in D0.
    func failsWhileAsleep(_ top: DeviceObject) -> Bool {
        var d: DeviceObject? = top
        while let device = d {
            if device.failsIOWhenNotInD0 { return true }
            d = device.lowerDevice
        }
        return false
    }

    /// An IRP for `major` on `file`, sized for the top of its stack, with the
    /// first location (the one the top device will see) filled in.
    @inline(__always)
    func makeIrp(_ major: MajorFunction, file: FileObject) -> IRP {
        let top = file.deviceObject.topOfStack
        let irp = allocateIrp(stackSize: top.stackSize)
        let p = irp.packet
        p.targetDevice = top
        p.file = file
        p.locations[p.currentLocation - 2].majorFunction = major
        p.locations[p.currentLocation - 2].fileObject = file
        return irp
    }

    /// Completes a request no driver will see, through the requester as usual.
    private func refuse(_ irp: IRP, _ status: NTStatus) -> NTStatus {
        let p = irp.packet
        p.ioStatus = IOStatusBlock(status: status)
        p.borrowed = false
        p.state.store(IRPPacket.word(irp.generation, .completed), ordering: .releasing)
        p.requester?.irpCompleted(irp)
        freeIrp(irp)
        noteDelivery()
        return status
    }

    /// Fills the top location and the buffers, as the Nt* services do; nil when
    /// the request may go to the drivers, else why it is refused.
    @inline(__always)
    private func prepare(_ irp: IRP, _ request: IORequest, _ file: FileObject) -> NTStatus? {
        let p = irp.packet
        guard file.isOpen else {
            p.hostBuffer = request.hostBuffer  // a refused request is answered from it
            return .invalidHandle
        }
        // The function driver said its device is gone (SURPRISE_REMOVAL, REMOVE_DEVICE:
        // `PnP.functionDispatch`); a device deleted meanwhile is reported (on Windows
        // the request would reach freed memory) and refused.
        if file.deviceObject.failsNewIO.load(ordering: .relaxed) {
            p.hostBuffer = request.hostBuffer
            return .noSuchDevice
        }
        // Verifier's low-resources simulation: the IRP "could not be allocated".
        if verifier.stressBits.load(ordering: .relaxed) & StressBits.lowResources != 0,
           verifier.verifies(file.deviceObject.driverObject), verifier.draw(\.lowResources) {
            p.hostBuffer = request.hostBuffer
            return .insufficientResources
        }
        if file.deviceObject.deleted {
            verifier.report(.requestToDeletedDevice, device: file.deviceObject, detail: "a request on a handle whose device was deleted")
            p.hostBuffer = request.hostBuffer
            return .noSuchDevice
        }
        let loc = p.currentLocation - 2
        switch request {
        case .read(let buffer, let length, let offset), .write(let buffer, let length, let offset, _):
            let isWrite = request.major == .write
            p.locations[loc].parameters.read.length = length
            p.locations[loc].parameters.read.byteOffset = offset
            p.hostBuffer = buffer
            p.informationLimit = length
            if case .write(_, _, _, let from?) = request { borrow(p, from: from, to: buffer + length) }
            guard length > 0 else { return nil }  // no MDL and no SystemBuffer for zero bytes
            let flags = p.targetDevice!.flags
            if flags.contains(.directIO) {
                p.mdlAddress = MDL(address: buffer, byteCount: length)
            } else if flags.contains(.bufferedIO) {
                p.systemBuffer = bounceBuffers
                    ? bounce(p, caller: buffer, size: length, copyIn: isWrite ? length : 0, copyBack: !isWrite)
                    : buffer
            } else {
                p.userBuffer = buffer
            }
        case .deviceControl(let code, let buffer, let capacity, let inputLength, let outputLength, let borrowedFrom):
            p.hostBuffer = buffer  // a refused request is answered from it too
            guard file.grantedAccess.isSuperset(of: code.requiredAccess) else { return .accessDenied }
            guard inputLength >= 0, outputLength >= 0, inputLength <= capacity, outputLength <= capacity else {
                return .invalidParameter
            }
            p.locations[loc].parameters.deviceIoControl.ioControlCode = code
            p.locations[loc].parameters.deviceIoControl.inputBufferLength = inputLength
            p.locations[loc].parameters.deviceIoControl.outputBufferLength = outputLength
            p.informationLimit = outputLength
            p.informationIsBufferedOutput = code.method == .buffered
            guard let buffer else { return nil }
            if let borrowedFrom { borrow(p, from: borrowedFrom, to: buffer + capacity) }
            prepareDeviceControlBuffers(p, loc, code.method, buffer, inputLength, outputLength)
        case .flush:
            break
        case .queryStandardInformation(let buffer):
            p.locations[loc].parameters.queryFile.length = FileStandardInformation.size
            p.locations[loc].parameters.queryFile.fileInformationClass = .standard
            p.systemBuffer = buffer
            p.hostBuffer = buffer
            p.informationLimit = FileStandardInformation.size
        }
        return nil
    }

    /// Where each transfer method puts an IOCTL's buffers. For the direct methods
    /// the input (SystemBuffer) and the output (the MDL) are separate regions of
    /// the host's buffer (see `DirectLayout`), so a driver that writes output
    /// through the MDL before it has read all its input still reads it intact.
    private func prepareDeviceControlBuffers(
        _ p: IRPPacket, _ loc: Int, _ method: TransferMethod, _ buffer: UnsafeMutableRawPointer,
        _ inputLength: Int, _ outputLength: Int
    ) {
        switch method {
        case .buffered:
            let size = max(inputLength, outputLength)
            p.systemBuffer = size == 0 ? nil
                : bounceBuffers ? bounce(p, caller: buffer, size: size, copyIn: inputLength, copyBack: true)
                : buffer
        case .inDirect, .outDirect:
            let output = buffer + DirectLayout.outputOffset(inputLength: inputLength)
            if inputLength > 0 {
                p.systemBuffer = bounceBuffers
                    ? bounce(p, caller: buffer, size: inputLength, copyIn: inputLength, copyBack: false)
                    : buffer
            }
            if outputLength > 0 { p.mdlAddress = MDL(address: output, byteCount: outputLength) }
        case .neither:
            p.locations[loc].parameters.deviceIoControl.type3InputBuffer = inputLength > 0 ? buffer : nil
            p.userBuffer = outputLength > 0 ? buffer : nil
        }
    }

    @inline(__always)
    private func borrow(_ p: IRPPacket, from: UnsafeMutableRawPointer, to end: UnsafeMutableRawPointer) {
        p.borrowed = true
        p.borrowBase = from
        p.borrowedCount = end - from
    }

    // MARK: - Bounce buffers

    private func bounce(
        _ p: IRPPacket, caller: UnsafeMutableRawPointer, size: Int, copyIn: Int, copyBack: Bool
    ) -> UnsafeMutableRawPointer {
        let system = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16)
        system.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        copyBytes(from: caller, to: system, count: copyIn)
        p.bounceCaller = caller
        p.bounceSystem = system
        p.bounceCopyBack = copyBack ? size : 0
        return system
    }

    /// At completion: Information bytes of the SystemBuffer go back to the caller,
    /// unless the status is an error.
    func copyBackBounceBuffer(_ p: IRPPacket) {
        guard let system = p.bounceSystem, let caller = p.bounceCaller, p.bounceCopyBack > 0 else { return }
        if !p.ioStatus.status.isError {
            copyBytes(from: system, to: caller, count: max(0, min(p.ioStatus.information, p.bounceCopyBack)))
        }
    }

    func releaseBounceBuffer(_ p: IRPPacket) {
        p.bounceSystem?.deallocate()
        p.bounceSystem = nil
        p.bounceCaller = nil
        p.bounceCopyBack = 0
    }
}

/// Where the direct methods' output sits in a host's IOCTL buffer: after the
/// input, rounded up to 8 bytes, so the MDL never overlaps the input (on
/// Windows the input is the I/O manager's private copy). METHOD_BUFFERED and
/// METHOD_NEITHER keep input and output at the start of the buffer.
public enum DirectLayout {
    /// The offset of the output for METHOD_IN_DIRECT / METHOD_OUT_DIRECT.
    @inlinable public static func outputOffset(inputLength: Int) -> Int { (inputLength + 7) & ~7 }
    /// The buffer capacity a direct-method call needs.
    @inlinable public static func capacity(inputLength: Int, outputLength: Int) -> Int {
        outputLength > 0 ? outputOffset(inputLength: inputLength) + outputLength : inputLength
    }
}
