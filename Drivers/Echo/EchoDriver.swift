// EchoDriver: `echo`, a loopback device. Bytes written are read back in order.
// A read with nothing to read pends in a cancel-safe queue until a write
// arrives or the reader is interrupted; a write into a full buffer waits the
// same way. DO_BUFFERED_IO. Setting (device parameter): `BufferSize` (default
// 64 KiB, at most 16 MiB); see `settings`.

import Synchronization
import WDM

public enum EchoDriver {
    public static let name = "Echo"
    public static let defaultBufferSize = 64 << 10
    /// The largest buffer: it is allocated when the device is added.
    public static let maximumBufferSize = 16 << 20

    /// `BufferSize`: the loopback buffer's size in bytes.
    public static let bufferSizeSetting = DriverSetting.integer(
        "BufferSize", 1...maximumBufferSize, bytes: true, default: defaultBufferSize,
        help: "the bytes written and not yet read it holds (a write waits while it is full); allocated and held in memory from the start, hence at most 16 MiB (sixteen times the most a Linux pipe holds)")
    /// The settings an echo device takes.
    public static let settings = [bufferSizeSetting]

    /// The ring buffer. Only touched with `Extension.lock` held.
    struct Ring {
        var head = 0
        var count = 0
    }

    /// The echo device's extension.
    public final class Extension: @unchecked Sendable {
        let storage: PoolMemory
        let lock = HandoffMutex(Ring())
        /// Reads waiting for data.
        public let readers = CancelSafeQueue()
        /// Writes waiting for room.
        public let writers = CancelSafeQueue()

        /// Nil when the pool cannot hold the buffer.
        init?(capacity: Int, driver: DriverObject) {
            guard let storage = PoolMemory(byteCount: capacity, tag: "Echo", for: driver) else { return nil }
            self.storage = storage
        }
        deinit { storage.free() }

        /// Bytes buffered now.
        public var buffered: Int { lock.withLock { $0.count } }

        /// Moves up to `into.count` bytes out of the ring; called with the lock held.
        func take(_ ring: inout Ring, into: UnsafeMutableRawBufferPointer) -> Int {
            let n = min(ring.count, into.count)
            var done = 0
            while done < n {
                let chunk = min(n - done, storage.count - ring.head)
                (into.baseAddress! + done).copyMemory(from: storage.baseAddress + ring.head, byteCount: chunk)
                ring.head = (ring.head + chunk) % storage.count
                done += chunk
            }
            ring.count -= n
            return n
        }

        /// Moves up to the free room of `from` into the ring; called with the lock held.
        func put(_ ring: inout Ring, from: UnsafeMutableRawBufferPointer) -> Int {
            let n = min(storage.count - ring.count, from.count)
            var done = 0
            while done < n {
                let tail = (ring.head + ring.count) % storage.count
                let chunk = min(n - done, storage.count - tail)
                (storage.baseAddress + tail).copyMemory(from: from.baseAddress! + done, byteCount: chunk)
                ring.count += chunk
                done += chunk
            }
            return n
        }

        /// Completes waiting readers while there is data, and waiting writers while there is room.
        func service() {
            var progress = true
            while progress {
                progress = false
                let r: (IRP, Int)? = lock.withLock { ring in
                    guard ring.count > 0, let irp = readers.removeNext() else { return nil }
                    return (irp, take(&ring, into: irp.transferBuffer))
                }
                if let (irp, n) = r { irp.complete(.success, information: n); progress = true }
                let w: (IRP, Int)? = lock.withLock { ring in
                    guard ring.count < storage.count, let irp = writers.removeNext() else { return nil }
                    return (irp, put(&ring, from: irp.transferBuffer))
                }
                if let (irp, n) = w { irp.complete(.success, information: n); progress = true }
            }
        }
    }

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            let capacity: Int
            do throws(NTStatus) {
                capacity = try bufferSizeSetting.integer(in: pdo.deviceNode?.parameters ?? [:])
            } catch {
                return error  // not one of the setting's values: STATUS_INVALID_PARAMETER
            }
            guard let ext = Extension(capacity: capacity, driver: driver) else { return .insufficientResources }
            return driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: .bufferedIO, extension: ext)
        }
        driver.majorFunction.succeed([.create, .close, .flushBuffers])
        driver.majorFunction[.pnp] = PnP.functionDispatch(remove: { device in
            // The device goes: what waits in it will never be served.
            let ext = device.deviceExtension(as: Extension.self)
            ext.readers.completeAll(.noSuchDevice)
            ext.writers.completeAll(.noSuchDevice)
        })
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = read
        driver.majorFunction[.write] = write
        driver.majorFunction[.cleanup] = { device, irp in
            // The handle is gone: nobody is left to receive what its IRPs wait for.
            let ext = device.deviceExtension(as: Extension.self)
            if let file = irp.fileObject {
                ext.readers.cancelAll(for: file)
                ext.writers.cancelAll(for: file)
            }
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.queryInformation] = { _, irp in irp.completeQueryStandardInformation(size: 0) }
        driver.readiness = { device, _ in
            let ext = device.deviceExtension(as: Extension.self)
            return ext.lock.withLock { ring in
                var r: Readiness = []
                if ring.count > 0 { r.insert(.readable) }
                if ring.count < ext.storage.count { r.insert(.writable) }
                return r
            }
        }
        return .success
    }

    static let read: DispatchRoutine = { device, irp in transfer(device, irp, reading: true) }
    static let write: DispatchRoutine = { device, irp in transfer(device, irp, reading: false) }

    /// A read takes what is buffered, a write adds what fits; with nothing to
    /// take (or no room) the IRP waits in its queue until `service` can finish it.
    static func transfer(_ device: DeviceObject, _ irp: IRP, reading: Bool) -> NTStatus {
        let ext = device.deviceExtension(as: Extension.self)
        let buffer = irp.transferBuffer
        if buffer.count == 0 {
            irp.complete(.success)
            return .success
        }
        let queue = reading ? ext.readers : ext.writers
        // Moving data and queueing the IRP happen under one lock, so an IRP of the
        // other direction that lands in between cannot miss this one.
        let n: Int? = ext.lock.withLock { ring in
            let ready = reading ? ring.count > 0 : ring.count < ext.storage.count
            if ready, queue.count == 0 { return reading ? ext.take(&ring, into: buffer) : ext.put(&ring, from: buffer) }
            _ = queue.insert(irp)
            return nil
        }
        guard let n else {
            device.driverObject.logger.trace("\(reading ? "a read" : "a write") of \(buffer.count) bytes waits")
            ext.service()
            device.driverObject.ioManager.readinessChanged(device)
            return .pending
        }
        irp.complete(.success, information: n)
        ext.service()
        // Data arrived or room appeared: select and poll callers may go on.
        device.driverObject.ioManager.readinessChanged(device)
        return .success
    }
}
