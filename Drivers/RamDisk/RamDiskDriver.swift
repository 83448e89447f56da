// RamDiskDriver: `ramdisk0`, a RAM disk. DO_DIRECT_IO by default, so reads and
// writes arrive as an MDL over the caller's memory. Answers the disk IOCTLs a
// Windows tool would send (length, geometry). Settings (device parameters):
// `Size` in bytes (default 64 MiB, at most 16 GiB) and `Buffering` (direct,
// buffered or neither); see `settings`.

import WDM

public enum RamDiskDriver {
    public static let name = "RamDisk"
    public static let defaultSize = 64 << 20
    /// The largest disk: the whole disk is allocated, zeroed and resident when its
    /// device is added, so a size is memory the daemon holds.
    public static let maximumSize = 16 << 30

    /// The RAM disk's device extension: its storage.
    public final class Extension: Sendable {
        public let storage: PoolMemory
        public var size: Int { storage.count }
        /// Nil when the pool cannot hold the disk.
        init?(size: Int, driver: DriverObject) {
            guard let storage = PoolMemory(byteCount: size, tag: "RamD", for: driver) else { return nil }
            self.storage = storage
        }
        deinit { storage.free() }
    }

    /// `Size`: the disk's length in bytes.
    public static let sizeSetting = DriverSetting.integer(
        "Size", Disk.bytesPerSector...maximumSize, multipleOf: Disk.bytesPerSector, bytes: true, default: defaultSize,
        help: "the disk's length in bytes. All of it is allocated and held in memory from the start, hence at most 16 GiB; and a disk that does not fit in the pool (half of physical memory, for all the mount's disks) fails to start with STATUS_INSUFFICIENT_RESOURCES")
    /// `Buffering`: how reads and writes reach the driver.
    public static let bufferingSetting = DriverSetting.choice(
        "Buffering", ["direct", "buffered", "neither"], default: "direct",
        help: "how reads and writes reach the driver: direct (DO_DIRECT_IO, an MDL over the caller's memory), buffered (DO_BUFFERED_IO), neither (the caller's buffer as it is)")
    /// The settings a RAM disk takes.
    public static let settings = [sizeSetting, bufferingSetting]

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = addDevice
        driver.ioctlNames = Disk.ioctlNames
        driver.majorFunction.succeed([.create, .cleanup, .close, .flushBuffers])
        driver.majorFunction[.pnp] = PnP.functionDispatch()
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = read
        driver.majorFunction[.write] = write
        driver.majorFunction[.deviceControl] = deviceControl
        driver.majorFunction[.queryInformation] = { device, irp in
            irp.completeQueryStandardInformation(size: Int64(device.deviceExtension(as: Extension.self).size))
        }
        return .success
    }

    static let addDevice: AddDeviceRoutine = { driver, pdo in
        let params = pdo.deviceNode?.parameters ?? [:]
        do throws(NTStatus) {
            // A value that is not one of the setting's: STATUS_INVALID_PARAMETER.
            let size = try sizeSetting.integer(in: params)
            let flags: DeviceFlags
            let buffering = try bufferingSetting.text(in: params)
            switch buffering {
            case "buffered": flags = .bufferedIO
            case "neither": flags = []
            default: flags = .directIO
            }
            guard let disk = Extension(size: size, driver: driver) else { return .insufficientResources }
            let fdo = try driver.createFunctionDevice(for: pdo, deviceType: DeviceType.disk, flags: flags, extension: disk)
            fdo.publishedSize = Int64(size)  // what `ls -l` shows
            driver.logger.debug("\(pdo.deviceNode?.instanceName ?? "disk"): \(size) bytes, \(buffering) I/O")
            return .success
        } catch {
            return error
        }
    }

    static let read: DispatchRoutine = { device, irp in
        let disk = device.deviceExtension(as: Extension.self)
        let p = irp.parameters.read
        guard let n = Disk.clamp(p.byteOffset, p.length, size: disk.size) else {
            irp.complete(.invalidParameter)
            return .invalidParameter
        }
        // A read at or past the end returns no data, as end of file does.
        if n > 0 {
            irp.transferBuffer.baseAddress!.copyMemory(from: disk.storage.baseAddress + Int(p.byteOffset), byteCount: n)
        }
        irp.complete(.success, information: n)
        return .success
    }

    static let write: DispatchRoutine = { device, irp in
        let disk = device.deviceExtension(as: Extension.self)
        let p = irp.parameters.write
        guard let n = Disk.clamp(p.byteOffset, p.length, size: disk.size) else {
            irp.complete(.invalidParameter)
            return .invalidParameter
        }
        if n == 0 && p.length > 0 {
            irp.complete(.diskFull)
            return .diskFull
        }
        if n > 0 {
            (disk.storage.baseAddress + Int(p.byteOffset)).copyMemory(from: irp.transferBuffer.baseAddress!, byteCount: n)
        }
        irp.complete(.success, information: n)
        return .success
    }

    static let deviceControl: DispatchRoutine = { device, irp in
        if let answered = Disk.answerQuery(irp, size: device.deviceExtension(as: Extension.self).size) { return answered }
        irp.complete(.invalidDeviceRequest)
        return .invalidDeviceRequest
    }
}
