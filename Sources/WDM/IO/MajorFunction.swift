// Major function codes (IRP_MJ_*) with their real numeric values; the index
// into a driver object's dispatch table.

/// `IRP_MJ_*`: what an IRP asks a driver to do.
public enum MajorFunction: UInt8, Sendable, CaseIterable {
    /// `IRP_MJ_CREATE`
    case create = 0x00
    /// `IRP_MJ_CLOSE`
    case close = 0x02
    /// `IRP_MJ_READ`
    case read = 0x03
    /// `IRP_MJ_WRITE`
    case write = 0x04
    /// `IRP_MJ_QUERY_INFORMATION`
    case queryInformation = 0x05
    /// `IRP_MJ_SET_INFORMATION`
    case setInformation = 0x06
    /// `IRP_MJ_FLUSH_BUFFERS`
    case flushBuffers = 0x09
    /// `IRP_MJ_DEVICE_CONTROL`
    case deviceControl = 0x0E
    /// `IRP_MJ_INTERNAL_DEVICE_CONTROL`
    case internalDeviceControl = 0x0F
    /// `IRP_MJ_SHUTDOWN`
    case shutdown = 0x10
    /// `IRP_MJ_CLEANUP`
    case cleanup = 0x12
    /// `IRP_MJ_POWER`
    case power = 0x16
    /// `IRP_MJ_SYSTEM_CONTROL`
    case systemControl = 0x17
    /// `IRP_MJ_PNP`
    case pnp = 0x1B

    /// `IRP_MJ_MAXIMUM_FUNCTION + 1`: the size of a dispatch table.
    public static let tableSize = 0x1C

    /// The WDK name, for traces and messages.
    public var wdmName: String {
        switch self {
        case .create: "IRP_MJ_CREATE"
        case .close: "IRP_MJ_CLOSE"
        case .read: "IRP_MJ_READ"
        case .write: "IRP_MJ_WRITE"
        case .queryInformation: "IRP_MJ_QUERY_INFORMATION"
        case .setInformation: "IRP_MJ_SET_INFORMATION"
        case .flushBuffers: "IRP_MJ_FLUSH_BUFFERS"
        case .deviceControl: "IRP_MJ_DEVICE_CONTROL"
        case .internalDeviceControl: "IRP_MJ_INTERNAL_DEVICE_CONTROL"
        case .shutdown: "IRP_MJ_SHUTDOWN"
        case .cleanup: "IRP_MJ_CLEANUP"
        case .power: "IRP_MJ_POWER"
        case .systemControl: "IRP_MJ_SYSTEM_CONTROL"
        case .pnp: "IRP_MJ_PNP"
        }
    }
}

/// `ACCESS_MASK` bits granted to a handle at open (IRP_MJ_CREATE).
public struct AccessMask: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `FILE_READ_DATA` (also `FILE_READ_ACCESS` in a CTL_CODE)
    public static let readData = AccessMask(rawValue: 0x0001)
    /// `FILE_WRITE_DATA` (also `FILE_WRITE_ACCESS` in a CTL_CODE)
    public static let writeData = AccessMask(rawValue: 0x0002)
}

/// `IO_STATUS_BLOCK`: the final status and the count of bytes transferred.
public struct IOStatusBlock: Sendable {
    public var status: NTStatus = .success
    public var information: Int = 0
    public init(status: NTStatus = .success, information: Int = 0) {
        self.status = status
        self.information = information
    }
}

/// `FILE_INFORMATION_CLASS` values the model answers.
public enum FileInformationClass: UInt32, Sendable {
    /// `FileStandardInformation`: FILE_STANDARD_INFORMATION (24 bytes).
    case standard = 5
}

/// `FILE_STANDARD_INFORMATION`, laid out as in the WDK: AllocationSize and
/// EndOfFile (LARGE_INTEGER), NumberOfLinks (ULONG), DeletePending and Directory (BOOLEAN).
public enum FileStandardInformation {
    public static let size = 24
    public static func write(endOfFile: Int64, to buffer: UnsafeMutableRawPointer) {
        buffer.storeBytes(of: endOfFile.littleEndian, toByteOffset: 0, as: Int64.self)
        buffer.storeBytes(of: endOfFile.littleEndian, toByteOffset: 8, as: Int64.self)
        buffer.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 16, as: UInt32.self)
        buffer.storeBytes(of: UInt32(0), toByteOffset: 20, as: UInt32.self)
    }
    public static func endOfFile(in buffer: UnsafeRawPointer) -> Int64 {
        Int64(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: Int64.self))
    }
}
