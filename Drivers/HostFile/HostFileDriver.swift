// HostFileDriver: a disk whose sectors are a host file or block device, so the
// fault filters can sit over real data (and `losetup` can make a Linux block
// device of it). Reads and writes go straight between the file and the
// request's memory (pread and pwrite into the MDL's pages: wdmfs copies nothing
// of its own). Settings: `Path` (the file; made when missing), `Size` (bytes; 0
// for the file's size; a smaller file is extended) and `ReadOnly`.

import Glibc
import WDM

public enum HostFileDriver {
    public static let name = "HostFile"

    /// The disk's device extension: the open file.
    public final class Extension: Sendable {
        let fd: Int32
        public let size: Int
        public let readOnly: Bool
        init(fd: Int32, size: Int, readOnly: Bool) {
            self.fd = fd
            self.size = size
            self.readOnly = readOnly
        }
        deinit { close(fd) }
    }

    /// `Path`: the host file or block device.
    public static let pathSetting = DriverSetting.checked(
        "Path", values: "an absolute path (required: the default, /, is refused)", default: "/",
        help: "the host file or block device whose bytes are the disk's; a file that does not exist is made (with Size)") { text in
        text.hasPrefix("/") && text.count <= 4096 ? nil : "must be an absolute path"
    }
    /// `Size`: the disk's length.
    public static let sizeSetting = DriverSetting.integer(
        "Size", 0...(1 << 50), multipleOf: Disk.bytesPerSector, bytes: true, default: 0,
        help: "the disk's length in bytes: 0 for the file's own (rounded down to 512); a shorter file is extended (sparse)")
    /// `ReadOnly`: writes fail with STATUS_MEDIA_WRITE_PROTECTED (EROFS).
    public static let readOnlySetting = DriverSetting.boolean(
        "ReadOnly", default: false, help: "open the file read-only: writes fail with STATUS_MEDIA_WRITE_PROTECTED (EROFS)")
    public static let settings = [pathSetting, sizeSetting, readOnlySetting]

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = addDevice
        driver.ioctlNames = Disk.ioctlNames
        driver.majorFunction.succeed([.create, .cleanup, .close])
        driver.majorFunction[.pnp] = PnP.functionDispatch()
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = read
        driver.majorFunction[.write] = write
        driver.majorFunction[.flushBuffers] = { device, irp in
            let status: NTStatus = fsync(device.deviceExtension(as: Extension.self).fd) == 0 ? .success : .deviceDataError
            irp.complete(status)
            return status
        }
        driver.majorFunction[.deviceControl] = { device, irp in
            if let answered = Disk.answerQuery(irp, size: device.deviceExtension(as: Extension.self).size) { return answered }
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        driver.majorFunction[.queryInformation] = { device, irp in
            irp.completeQueryStandardInformation(size: Int64(device.deviceExtension(as: Extension.self).size))
        }
        return .success
    }

    static let addDevice: AddDeviceRoutine = { driver, pdo in
        let params = pdo.deviceNode?.parameters ?? [:]
        let log = driver.logger
        let who = pdo.deviceNode?.instanceName ?? "HostFile"
        do throws(NTStatus) {
            let path = try pathSetting.text(in: params)
            var size = try sizeSetting.integer(in: params)
            let readOnly = try readOnlySetting.boolean(in: params)
            guard path != "/" else {
                log.error("\(who): HostFile needs a Path (the host file or block device)")
                return .invalidParameter
            }
            let fd = open(path, (readOnly ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                log.error("\(who): cannot open \(path): \(String(cString: strerror(errno)))")
                return .noSuchDevice
            }
            let length = lseek(fd, 0, SEEK_END)
            if size == 0 {
                size = Int(max(length, 0)) / Disk.bytesPerSector * Disk.bytesPerSector
            } else if length < size {
                guard !readOnly, ftruncate(fd, off_t(size)) == 0 else {
                    log.error("\(who): \(path) is \(length) bytes, shorter than Size \(size), and cannot be extended")
                    close(fd)
                    return .invalidParameter
                }
            }
            let disk = Extension(fd: fd, size: size, readOnly: readOnly)
            log.debug("\(who): \(path), \(size) bytes\(readOnly ? ", read-only" : "")")
            let fdo = try driver.createFunctionDevice(for: pdo, deviceType: DeviceType.disk, flags: .directIO, extension: disk)
            fdo.publishedSize = Int64(size)
            return .success
        } catch {
            return error
        }
    }

    /// What a failed pread or pwrite completes with.
    static func status(forErrno e: Int32) -> NTStatus {
        switch e {
        case EIO: .deviceDataError
        case ENOSPC: .diskFull
        case EROFS, EPERM, EACCES: .mediaWriteProtected
        default: .unsuccessful
        }
    }

    static let read: DispatchRoutine = { device, irp in
        let disk = device.deviceExtension(as: Extension.self)
        let p = irp.parameters.read
        guard let n = Disk.clamp(p.byteOffset, p.length, size: disk.size) else {
            irp.complete(.invalidParameter)
            return .invalidParameter
        }
        guard n > 0, let buffer = irp.transferBuffer.baseAddress else {
            irp.complete(.success)
            return .success
        }
        var done = 0
        while done < n {
            let r = pread(disk.fd, buffer + done, n - done, off_t(p.byteOffset) + off_t(done))
            if r < 0, errno == EINTR { continue }
            if r < 0 {
                let status = status(forErrno: errno)
                irp.complete(status)
                return status
            }
            if r == 0 {
                // Past the file's end (a file shortened under us): the rest reads as zeros.
                (buffer + done).initializeMemory(as: UInt8.self, repeating: 0, count: n - done)
                break
            }
            done += r
        }
        irp.complete(.success, information: n)
        return .success
    }

    static let write: DispatchRoutine = { device, irp in
        let disk = device.deviceExtension(as: Extension.self)
        let p = irp.parameters.write
        guard !disk.readOnly else {
            irp.complete(.mediaWriteProtected)
            return .mediaWriteProtected
        }
        guard let n = Disk.clamp(p.byteOffset, p.length, size: disk.size) else {
            irp.complete(.invalidParameter)
            return .invalidParameter
        }
        if n == 0 && p.length > 0 {
            irp.complete(.diskFull)
            return .diskFull
        }
        guard let buffer = irp.transferBuffer.baseAddress else {
            irp.complete(.success)
            return .success
        }
        var done = 0
        while done < n {
            let r = pwrite(disk.fd, buffer + done, n - done, off_t(p.byteOffset) + off_t(done))
            if r < 0, errno == EINTR { continue }
            if r <= 0 {
                let status = r < 0 ? status(forErrno: errno) : .diskFull
                irp.complete(status)
                return status
            }
            done += r
        }
        irp.complete(.success, information: n)
        return .success
    }
}
