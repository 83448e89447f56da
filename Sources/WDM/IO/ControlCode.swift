// CTL_CODE: how an I/O control code packs device type, function, transfer
// method and required access, and the codes wdmfs drivers answer.

/// `METHOD_*`: how the I/O manager describes an IOCTL's buffers.
public enum TransferMethod: UInt32, Sendable, CaseIterable {
    /// `METHOD_BUFFERED`: one SystemBuffer of max(in, out) bytes.
    case buffered = 0
    /// `METHOD_IN_DIRECT`: input in SystemBuffer, output described by an MDL.
    case inDirect = 1
    /// `METHOD_OUT_DIRECT`: input in SystemBuffer, output described by an MDL.
    case outDirect = 2
    /// `METHOD_NEITHER`: raw Type3InputBuffer and UserBuffer.
    case neither = 3

    public var wdmName: String {
        switch self {
        case .buffered: "METHOD_BUFFERED"
        case .inDirect: "METHOD_IN_DIRECT"
        case .outDirect: "METHOD_OUT_DIRECT"
        case .neither: "METHOD_NEITHER"
        }
    }
}

/// An I/O control code, `CTL_CODE(DeviceType, Function, Method, Access)`.
public struct ControlCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `CTL_CODE(DeviceType, Function, Method, Access)`.
    public init(deviceType: UInt32, function: UInt32, method: TransferMethod, access: AccessMask) {
        rawValue = (deviceType << 16) | ((access.rawValue & 3) << 14) | ((function & 0xFFF) << 2) | method.rawValue
    }

    /// `DEVICE_TYPE_FROM_CTL_CODE`
    public var deviceType: UInt32 { rawValue >> 16 }
    /// The function number (bits 2..13).
    public var function: UInt32 { (rawValue >> 2) & 0xFFF }
    /// `METHOD_FROM_CTL_CODE`
    public var method: TransferMethod { TransferMethod(rawValue: rawValue & 3)! }
    /// The `FILE_*_ACCESS` bits the handle must have been granted.
    public var requiredAccess: AccessMask { AccessMask(rawValue: (rawValue >> 14) & 3) }

    public var description: String { "0x" + String(rawValue, radix: 16, uppercase: true).leftPadded(to: 8) }

    /// `IOCTL_DISK_GET_DRIVE_GEOMETRY`
    public static let diskGetDriveGeometry = ControlCode(rawValue: 0x0007_0000)
    /// `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX`
    public static let diskGetDriveGeometryEx = ControlCode(rawValue: 0x0007_00A0)
    /// `IOCTL_DISK_GET_LENGTH_INFO`
    public static let diskGetLengthInfo = ControlCode(rawValue: 0x0007_405C)
}

/// `FILE_DEVICE_*` device types.
public enum DeviceType {
    /// `FILE_DEVICE_DISK`
    public static let disk: UInt32 = 0x07
    /// `FILE_DEVICE_NULL`
    public static let null: UInt32 = 0x15
    /// `FILE_DEVICE_UNKNOWN`
    public static let unknown: UInt32 = 0x22
    /// `FILE_DEVICE_BUS_EXTENDER`
    public static let busExtender: UInt32 = 0x2A
}
