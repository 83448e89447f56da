// Disk: what every disk driver answers the same way (classpnp does it for the
// disk class on Windows): the byte range a read or write may touch, and the
// IOCTLs that ask a disk its length and geometry. The RAM disk and the host-file
// disk share it.

public enum Disk {
    public static let bytesPerSector = 512
    public static let sectorsPerTrack = 32
    public static let tracksPerCylinder = 2
    /// `MEDIA_TYPE` FixedMedia
    public static let fixedMedia: UInt32 = 12

    /// The disk IOCTLs' names (a disk driver's `ioctlNames`).
    public static let ioctlNames: [UInt32: String] = [
        ControlCode.diskGetLengthInfo.rawValue: "IOCTL_DISK_GET_LENGTH_INFO",
        ControlCode.diskGetDriveGeometry.rawValue: "IOCTL_DISK_GET_DRIVE_GEOMETRY",
        ControlCode.diskGetDriveGeometryEx.rawValue: "IOCTL_DISK_GET_DRIVE_GEOMETRY_EX",
    ]

    /// The part of [offset, offset + length) inside a disk of `size` bytes (0 at or
    /// past its end), or nil for a negative offset.
    public static func clamp(_ offset: Int64, _ length: Int, size: Int) -> Int? {
        guard offset >= 0 else { return nil }
        if offset >= Int64(size) { return 0 }
        return min(length, size - Int(offset))
    }

    /// Completes IOCTL_DISK_GET_LENGTH_INFO, IOCTL_DISK_GET_DRIVE_GEOMETRY and
    /// IOCTL_DISK_GET_DRIVE_GEOMETRY_EX for a disk of `size` bytes and returns the
    /// status; nil (the IRP untouched) for any other code.
    public static func answerQuery(_ irp: IRP, size: Int) -> NTStatus? {
        let p = irp.parameters.deviceIoControl
        let out = UnsafeMutableRawBufferPointer(start: irp.systemBuffer, count: irp.systemBuffer == nil ? 0 : p.outputBufferLength)
        guard let (status, information) = answer(p.ioControlCode, size: size, into: out) else { return nil }
        irp.complete(status, information: information)
        return status
    }

    /// The answer to one of those queries, written into `out` (a framework driver
    /// completes its request with it): nil for any other code.
    public static func answer(_ code: ControlCode, size: Int, into out: UnsafeMutableRawBufferPointer) -> (NTStatus, Int)? {
        func fill(_ needed: Int, _ write: (UnsafeMutableRawPointer) -> Void) -> (NTStatus, Int) {
            guard out.count >= needed, let base = out.baseAddress else { return (.bufferTooSmall, 0) }
            write(base)
            return (.success, needed)
        }
        switch code {
        case .diskGetLengthInfo:
            // GET_LENGTH_INFORMATION { LARGE_INTEGER Length; }
            return fill(8) { $0.storeBytes(of: Int64(size).littleEndian, as: Int64.self) }
        case .diskGetDriveGeometry:
            return fill(24) { writeGeometry(size, to: $0) }
        case .diskGetDriveGeometryEx:
            // DISK_GEOMETRY_EX up to Data[]: Geometry, then LARGE_INTEGER DiskSize.
            return fill(32) {
                writeGeometry(size, to: $0)
                $0.storeBytes(of: Int64(size).littleEndian, toByteOffset: 24, as: Int64.self)
            }
        default:
            return nil
        }
    }

    /// `DISK_GEOMETRY`: Cylinders (LARGE_INTEGER), MediaType, TracksPerCylinder,
    /// SectorsPerTrack, BytesPerSector (ULONG each): 24 bytes.
    static func writeGeometry(_ size: Int, to p: UnsafeMutableRawPointer) {
        let cylinder = bytesPerSector * sectorsPerTrack * tracksPerCylinder
        p.storeBytes(of: Int64(size / cylinder).littleEndian, toByteOffset: 0, as: Int64.self)
        p.storeBytes(of: fixedMedia.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(tracksPerCylinder).littleEndian, toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: UInt32(sectorsPerTrack).littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: UInt32(bytesPerSector).littleEndian, toByteOffset: 20, as: UInt32.self)
    }
}
