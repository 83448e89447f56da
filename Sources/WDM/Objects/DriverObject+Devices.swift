// The AddDevice steps every driver repeats: IoCreateDevice, then
// IoAttachDeviceToDeviceStack, then (for a function driver) IoCreateSymbolicLink,
// then clearing DO_DEVICE_INITIALIZING.

extension DriverObject {
    /// Creates a function device object (FDO) for `pdo`, attaches it to the stack
    /// and names it: the symbolic link is the device node's `SymbolicLinkName`
    /// parameter, else its instance name.
    @discardableResult
    public func createFunctionDevice(
        for pdo: DeviceObject, deviceType: UInt32, characteristics: UInt32 = 0, flags: DeviceFlags = [], extension ext: AnyObject? = nil
    ) throws(NTStatus) -> DeviceObject {
        let fdo = ioManager.createDevice(driver: self, deviceType: deviceType, characteristics: characteristics, flags: flags, extension: ext)
        ioManager.attachDeviceToDeviceStack(fdo, to: pdo)
        // Flags first: once the name exists another thread may open it and read them
        // (it is refused until START all the same).
        fdo.flags.remove(.deviceInitializing)
        if let node = pdo.deviceNode {
            do throws(NTStatus) {
                try ioManager.createSymbolicLink(node.parameters["SymbolicLinkName"] ?? node.instanceName, device: fdo)
            } catch {
                ioManager.detachAndDelete(fdo)  // AddDevice fails: nothing of it is left attached
                throw error
            }
        }
        return fdo
    }

    /// `createFunctionDevice` as an AddDevice routine's result: STATUS_SUCCESS, or why it failed.
    public func addFunctionDevice(
        for pdo: DeviceObject, deviceType: UInt32, characteristics: UInt32 = 0, flags: DeviceFlags = [], extension ext: AnyObject? = nil
    ) -> NTStatus {
        do throws(NTStatus) {
            try createFunctionDevice(for: pdo, deviceType: deviceType, characteristics: characteristics, flags: flags, extension: ext)
            return .success
        } catch {
            return error
        }
    }

    /// Creates a filter device object for `pdo`'s stack and attaches it on top.
    /// Attaching copies nothing (as on Windows), so this does what a filter's
    /// AddDevice must: it takes DO_BUFFERED_IO, DO_DIRECT_IO and DO_POWER_PAGABLE,
    /// the DeviceType and the Characteristics of the device below.
    @discardableResult
    public func createFilterDevice(for pdo: DeviceObject, extension ext: AnyObject? = nil) -> DeviceObject {
        let filter = ioManager.createDevice(driver: self, deviceType: DeviceType.unknown, extension: ext)
        // Copied before the attach, which publishes the filter: on a running stack
        // (a live attach) a request may reach it the moment it is attached.
        filter.copyAttributes(from: pdo.topOfStack)
        filter.flags.remove(.deviceInitializing)
        ioManager.attachDeviceToDeviceStack(filter, to: pdo)
        return filter
    }
}

extension DeviceObject {
    /// What a filter copies from the device it attached to.
    public func copyAttributes(from lower: DeviceObject) {
        let copied: DeviceFlags = [.bufferedIO, .directIO, .powerPagable]
        flags = flags.subtracting(copied).union(lower.flags.intersection(copied))
        deviceType = lower.deviceType
        characteristics = lower.characteristics
    }
}

extension DispatchTable {
    /// Routines that complete the IRP with STATUS_SUCCESS and no data
    /// (what a simple device does for CREATE, CLEANUP, CLOSE and FLUSH).
    public mutating func succeed(_ majors: [MajorFunction]) {
        set(majors) { _, irp in
            irp.complete(.success)
            return .success
        }
    }
}

extension IRP {
    /// Answers IRP_MJ_QUERY_INFORMATION(FileStandardInformation) with `size`
    /// as EndOfFile; other classes get STATUS_INVALID_PARAMETER. Returns the status.
    public func completeQueryStandardInformation(size: Int64) -> NTStatus {
        let p = parameters.queryFile
        guard p.fileInformationClass == .standard, p.length >= FileStandardInformation.size, let buffer = systemBuffer else {
            complete(.invalidParameter)
            return .invalidParameter
        }
        FileStandardInformation.write(endOfFile: size, to: buffer)
        complete(.success, information: FileStandardInformation.size)
        return .success
    }
}
