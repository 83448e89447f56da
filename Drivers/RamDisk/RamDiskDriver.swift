// RamDiskDriver: `ramdisk0`, a RAM disk. DO_DIRECT_IO by default, so reads and
// writes arrive as an MDL over the caller's memory. Answers the disk IOCTLs a
// Windows tool would send (length, geometry). Settings (device parameters):
// `Size` in bytes (default 64 MiB, at most 16 GiB) and `Buffering` (direct,
// buffered or neither); see `settings`. Written on the framework: one parallel
// queue takes reads, writes, flushes and the disk IOCTLs.

import WDF

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
        driver.ioctlNames = Disk.ioctlNames
        return onTheFramework(driver)
    }

    static let onTheFramework = Framework.functionDriver(deviceType: DeviceType.disk, initialize: { setup throws(NTStatus) in
        // A value that is not one of the setting's: STATUS_INVALID_PARAMETER.
        switch try bufferingSetting.text(in: setup.parameters) {
        case "buffered": setup.flags = .bufferedIO
        case "neither": setup.flags = []
        default: setup.flags = .directIO
        }
    }) { (device: Device<Extension>) throws(NTStatus) in
        let params = device.node?.parameters ?? [:]
        let size = try sizeSetting.integer(in: params), buffering = try bufferingSetting.text(in: params)
        guard let disk = Extension(size: size, driver: device.deviceObject.driverObject) else { throw .insufficientResources }
        device.deviceObject.publishedSize = Int64(size)  // what `ls -l` shows
        device.logger.debug("\(device.node?.instanceName ?? "disk"): \(size) bytes, \(buffering) I/O")
        device.queue(.parallel(), for: [.read, .write, .flushBuffers, .deviceControl]) { device, request in
            transfer(device.context, request)
        }
        return disk
    }

    static func transfer(_ disk: Extension, _ request: consuming Request) {
        switch request.major {
        case .read:
            // A read at or past the end returns no data, as end of file does.
            guard let n = Disk.clamp(request.offset, request.length, size: disk.size) else { return request.complete(.invalidParameter) }
            let offset = Int(request.offset)
            if n > 0, let out = try? request.output() { out.baseAddress!.copyMemory(from: disk.storage.baseAddress + offset, byteCount: n) }
            request.complete(.success, information: n)
        case .write:
            let length = request.length, offset = Int(request.offset)
            guard let n = Disk.clamp(request.offset, length, size: disk.size) else { return request.complete(.invalidParameter) }
            if n == 0 && length > 0 { return request.complete(.diskFull) }
            if n > 0, let data = try? request.input() { (disk.storage.baseAddress + offset).copyMemory(from: data.baseAddress!, byteCount: n) }
            request.complete(.success, information: n)
        case .deviceControl:
            guard let code = request.ioControlCode, let out = try? request.output(),
                  let (status, n) = Disk.answer(code, size: disk.size, into: out) else { return request.complete(.invalidDeviceRequest) }
            request.complete(status, information: n)
        default:
            request.complete(.success)  // a flush: the disk is its memory
        }
    }
}
