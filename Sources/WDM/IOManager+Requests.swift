// How the I/O manager turns a request on a handle into an IRP: the work of
// NtCreateFile, NtReadFile, NtWriteFile, NtDeviceIoControlFile and the close
// path. The FUSE bridge and the embedded host both build IRPs here, so the
// buffering rules live in one place.

extension IOManager {
    /// Opens a device by its symbolic link name: the file object that IRP_MJ_CREATE will carry.
    public func makeFileObject(link: String, access: AccessMask) throws(NTStatus) -> FileObject {
        guard let device = device(forLink: link), !device.deleted else { throw NTStatus.noSuchDevice }
        return FileObject(deviceObject: device, grantedAccess: access, fileName: link)
    }

    /// An IRP for `major` on `file`, sized for the top of its stack, with the
    /// first location (the one the top device will see) filled in. `submit(_:)`
    /// and `callSynchronously(_:)` send it to that top device.
    public func makeIrp(_ major: MajorFunction, file: FileObject) -> IRP {
        let top = file.deviceObject.topOfStack
        let irp = allocateIrp(stackSize: top.stackSize)
        irp.targetDevice = top
        irp.nextStackLocation.majorFunction = major
        irp.nextStackLocation.fileObject = file
        return irp
    }

    /// The device an IRP made by `makeIrp` goes to.
    @inline(__always) public func target(of file: FileObject) -> DeviceObject {
        file.deviceObject.topOfStack
    }

    /// IRP_MJ_CREATE.
    public func prepareCreate(_ irp: IRP, access: AccessMask) {
        irp.nextStackLocation.parameters.create.desiredAccess = access
    }

    /// IRP_MJ_READ or IRP_MJ_WRITE over the caller's `buffer`: SystemBuffer for
    /// DO_BUFFERED_IO, an MDL for DO_DIRECT_IO, UserBuffer otherwise.
    public func prepareTransfer(
        _ irp: IRP, buffer: UnsafeMutableRawPointer, length: Int, offset: Int64
    ) {
        let loc = irp.currentLocation - 2
        irp.locations[loc].parameters.read.length = length
        irp.locations[loc].parameters.read.byteOffset = offset
        let flags = (irp.targetDevice ?? irp.locations[loc].fileObject!.deviceObject.topOfStack).flags
        if flags.contains(.directIO) {
            irp.mdlAddress = MDL(address: buffer, byteCount: length)
        } else if flags.contains(.bufferedIO) {
            irp.systemBuffer = bounceBuffers
                ? bounce(irp, caller: buffer, size: length,
                         copyIn: irp.locations[loc].majorFunction == .write ? length : 0,
                         copyBack: irp.locations[loc].majorFunction == .read)
                : buffer
        } else {
            irp.userBuffer = buffer
        }
    }

    /// IRP_MJ_DEVICE_CONTROL, as NtDeviceIoControlFile sets it up.
    ///
    /// `buffer` holds `capacity` bytes: the input on entry, the output on return.
    /// Input and output share it, as when a caller passes one buffer for both.
    /// Fails with STATUS_ACCESS_DENIED, before any driver sees the IRP, when the
    /// code's RequiredAccess was not granted to the handle.
    public func prepareDeviceControl(
        _ irp: IRP, code: ControlCode, buffer: UnsafeMutableRawPointer?, capacity: Int,
        inputLength: Int, outputLength: Int
    ) throws(NTStatus) {
        let loc = irp.currentLocation - 2
        let file = irp.locations[loc].fileObject!
        guard file.grantedAccess.isSuperset(of: code.requiredAccess) else { throw NTStatus.accessDenied }
        guard inputLength >= 0, outputLength >= 0, inputLength <= capacity, outputLength <= capacity else {
            throw NTStatus.invalidParameter
        }
        irp.locations[loc].parameters.deviceIoControl.ioControlCode = code
        irp.locations[loc].parameters.deviceIoControl.inputBufferLength = inputLength
        irp.locations[loc].parameters.deviceIoControl.outputBufferLength = outputLength
        guard let buffer else { return }
        switch code.method {
        case .buffered:
            let size = max(inputLength, outputLength)
            irp.systemBuffer = size == 0 ? nil
                : bounceBuffers ? bounce(irp, caller: buffer, size: size, copyIn: inputLength, copyBack: true)
                : buffer
        case .inDirect, .outDirect:
            if inputLength > 0 {
                irp.systemBuffer = bounceBuffers
                    ? bounce(irp, caller: buffer, size: inputLength, copyIn: inputLength, copyBack: false)
                    : buffer
            }
            if outputLength > 0 { irp.mdlAddress = MDL(address: buffer, byteCount: outputLength) }
        case .neither:
            irp.locations[loc].parameters.deviceIoControl.type3InputBuffer = inputLength > 0 ? buffer : nil
            irp.userBuffer = outputLength > 0 ? buffer : nil
        }
    }

    /// IRP_MJ_QUERY_INFORMATION(FileStandardInformation) into `buffer` (24 bytes).
    public func prepareQueryStandardInformation(_ irp: IRP, buffer: UnsafeMutableRawPointer) {
        irp.nextStackLocation.parameters.queryFile.length = FileStandardInformation.size
        irp.nextStackLocation.parameters.queryFile.fileInformationClass = .standard
        irp.systemBuffer = buffer
    }

    // MARK: - Bounce buffers

    private func bounce(
        _ irp: IRP, caller: UnsafeMutableRawPointer, size: Int, copyIn: Int, copyBack: Bool
    ) -> UnsafeMutableRawPointer {
        let system = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16)
        system.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        copyBytes(from: caller, to: system, count: copyIn)
        irp.bounceCaller = caller
        irp.bounceSystem = system
        irp.bounceCopyBack = copyBack ? size : 0
        return system
    }

    /// At completion: Information bytes of the SystemBuffer go back to the caller,
    /// unless the status is an error.
    func copyBackBounceBuffer(_ irp: IRP) {
        guard let system = irp.bounceSystem, let caller = irp.bounceCaller, irp.bounceCopyBack > 0 else { return }
        if !irp.ioStatus.status.isError {
            copyBytes(from: system, to: caller, count: min(irp.ioStatus.information, irp.bounceCopyBack))
        }
    }

    func releaseBounceBuffer(_ irp: IRP) {
        irp.bounceSystem?.deallocate()
        irp.bounceSystem = nil
        irp.bounceCaller = nil
        irp.bounceCopyBack = 0
    }
}
