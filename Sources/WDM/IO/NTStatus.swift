// NTStatus: the 32-bit status every IRP carries, with the real NTSTATUS codes.
// Inside wdmfs this is the truth; only the FUSE bridge translates it to errno.

/// An NTSTATUS value.
///
/// The top two bits are the severity: 0 success, 1 informational, 2 warning,
/// 3 error. `isSuccess` is the `NT_SUCCESS` macro.
public struct NTStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Error {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }

    /// `NT_SUCCESS(Status)`: success and informational codes.
    @inlinable public var isSuccess: Bool { Int32(bitPattern: rawValue) >= 0 }
    /// `NT_INFORMATION(Status)`.
    @inlinable public var isInformation: Bool { rawValue >> 30 == 1 }
    /// `NT_WARNING(Status)`: not a success, but data may be valid (STATUS_BUFFER_OVERFLOW).
    @inlinable public var isWarning: Bool { rawValue >> 30 == 2 }
    /// `NT_ERROR(Status)`.
    @inlinable public var isError: Bool { rawValue >> 30 == 3 }

    /// `STATUS_SUCCESS`
    @inlinable public static var success: NTStatus { NTStatus(0x0000_0000) }
    /// `STATUS_PENDING`
    @inlinable public static var pending: NTStatus { NTStatus(0x0000_0103) }
    /// `STATUS_BUFFER_OVERFLOW` (warning: the partial data returned is valid)
    @inlinable public static var bufferOverflow: NTStatus { NTStatus(0x8000_0005) }
    /// `STATUS_DEVICE_BUSY` (warning)
    @inlinable public static var deviceBusy: NTStatus { NTStatus(0x8000_0011) }
    /// `STATUS_UNSUCCESSFUL`
    @inlinable public static var unsuccessful: NTStatus { NTStatus(0xC000_0001) }
    /// `STATUS_NOT_IMPLEMENTED`
    @inlinable public static var notImplemented: NTStatus { NTStatus(0xC000_0002) }
    /// `STATUS_INVALID_HANDLE`: a request on a handle that was never opened or is closed.
    @inlinable public static var invalidHandle: NTStatus { NTStatus(0xC000_0008) }
    /// `STATUS_INVALID_PARAMETER`
    @inlinable public static var invalidParameter: NTStatus { NTStatus(0xC000_000D) }
    /// `STATUS_NO_SUCH_DEVICE`
    @inlinable public static var noSuchDevice: NTStatus { NTStatus(0xC000_000E) }
    /// `STATUS_INVALID_DEVICE_REQUEST`
    @inlinable public static var invalidDeviceRequest: NTStatus { NTStatus(0xC000_0010) }
    /// `STATUS_END_OF_FILE`
    @inlinable public static var endOfFile: NTStatus { NTStatus(0xC000_0011) }
    /// `STATUS_MORE_PROCESSING_REQUIRED`: a completion routine keeps the IRP.
    @inlinable public static var moreProcessingRequired: NTStatus { NTStatus(0xC000_0016) }
    /// `STATUS_ACCESS_DENIED`
    @inlinable public static var accessDenied: NTStatus { NTStatus(0xC000_0022) }
    /// `STATUS_DRIVER_INTERNAL_ERROR`: what Verifier's `fail` action completes an IRP with.
    @inlinable public static var driverInternalError: NTStatus { NTStatus(0xC000_0183) }
    /// `STATUS_INVALID_DEVICE_STATE`: the device is not in a state that allows the request.
    @inlinable public static var invalidDeviceState: NTStatus { NTStatus(0xC000_0184) }
    /// `STATUS_NONEXISTENT_SECTOR`
    @inlinable public static var nonexistentSector: NTStatus { NTStatus(0xC000_0015) }
    /// `STATUS_CRC_ERROR`: a data error (a disk's bad sector).
    @inlinable public static var crcError: NTStatus { NTStatus(0xC000_003F) }
    /// `STATUS_DEVICE_DATA_ERROR`
    @inlinable public static var deviceDataError: NTStatus { NTStatus(0xC000_009C) }
    /// `STATUS_MEDIA_WRITE_PROTECTED`: a write to a read-only disk.
    @inlinable public static var mediaWriteProtected: NTStatus { NTStatus(0xC000_00A2) }
    /// `STATUS_BUFFER_TOO_SMALL`
    @inlinable public static var bufferTooSmall: NTStatus { NTStatus(0xC000_0023) }
    /// `STATUS_DELETE_PENDING`
    @inlinable public static var deletePending: NTStatus { NTStatus(0xC000_0056) }
    /// `STATUS_DISK_FULL`
    @inlinable public static var diskFull: NTStatus { NTStatus(0xC000_007F) }
    /// `STATUS_INSUFFICIENT_RESOURCES`
    @inlinable public static var insufficientResources: NTStatus { NTStatus(0xC000_009A) }
    /// `STATUS_DEVICE_NOT_READY`
    @inlinable public static var deviceNotReady: NTStatus { NTStatus(0xC000_00A3) }
    /// `STATUS_IO_TIMEOUT`
    @inlinable public static var ioTimeout: NTStatus { NTStatus(0xC000_00B5) }
    /// `STATUS_NOT_SUPPORTED`
    @inlinable public static var notSupported: NTStatus { NTStatus(0xC000_00BB) }
    /// `STATUS_CANCELLED`
    @inlinable public static var cancelled: NTStatus { NTStatus(0xC000_0120) }
    /// `STATUS_DEVICE_REMOVED`
    @inlinable public static var deviceRemoved: NTStatus { NTStatus(0xC000_02B6) }
    /// `STATUS_DRIVER_PROCESS_TERMINATED`: the driver host process of the device ended (UMDF's).
    @inlinable public static var driverProcessTerminated: NTStatus { NTStatus(0xC000_0450) }

    /// Every status this model names, with its WDK name.
    public static let knownNames: [(NTStatus, String)] = [
        (.success, "STATUS_SUCCESS"), (.pending, "STATUS_PENDING"),
        (.bufferOverflow, "STATUS_BUFFER_OVERFLOW"), (.deviceBusy, "STATUS_DEVICE_BUSY"),
        (.unsuccessful, "STATUS_UNSUCCESSFUL"), (.notImplemented, "STATUS_NOT_IMPLEMENTED"),
        (.invalidHandle, "STATUS_INVALID_HANDLE"), (.invalidParameter, "STATUS_INVALID_PARAMETER"), (.noSuchDevice, "STATUS_NO_SUCH_DEVICE"),
        (.invalidDeviceRequest, "STATUS_INVALID_DEVICE_REQUEST"), (.endOfFile, "STATUS_END_OF_FILE"),
        (.moreProcessingRequired, "STATUS_MORE_PROCESSING_REQUIRED"),
        (.accessDenied, "STATUS_ACCESS_DENIED"), (.bufferTooSmall, "STATUS_BUFFER_TOO_SMALL"),
        (.deletePending, "STATUS_DELETE_PENDING"), (.diskFull, "STATUS_DISK_FULL"),
        (.insufficientResources, "STATUS_INSUFFICIENT_RESOURCES"),
        (.deviceNotReady, "STATUS_DEVICE_NOT_READY"), (.ioTimeout, "STATUS_IO_TIMEOUT"),
        (.notSupported, "STATUS_NOT_SUPPORTED"), (.cancelled, "STATUS_CANCELLED"),
        (.deviceRemoved, "STATUS_DEVICE_REMOVED"), (.driverInternalError, "STATUS_DRIVER_INTERNAL_ERROR"),
        (.invalidDeviceState, "STATUS_INVALID_DEVICE_STATE"), (.nonexistentSector, "STATUS_NONEXISTENT_SECTOR"),
        (.crcError, "STATUS_CRC_ERROR"), (.deviceDataError, "STATUS_DEVICE_DATA_ERROR"),
        (.mediaWriteProtected, "STATUS_MEDIA_WRITE_PROTECTED"), (.driverProcessTerminated, "STATUS_DRIVER_PROCESS_TERMINATED"),
    ]

    /// The WDK name (`STATUS_ACCESS_DENIED`), or nil for a code this model does not name.
    public var name: String? {
        for (status, name) in NTStatus.knownNames where status == self { return name }
        return nil
    }

    /// The name when known, else the hex code.
    public var description: String {
        name ?? "0x" + String(rawValue, radix: 16, uppercase: true).leftPadded(to: 8)
    }
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
