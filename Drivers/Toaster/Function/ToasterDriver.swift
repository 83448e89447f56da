// The toaster sample's function driver (its func/ folder). It knows the bus
// only through the public header (ToasterPublic): the internal IOCTL it sends its
// PDO and the interface it queries for.

import Synchronization
import ToasterPublic
import WDM

/// The toaster function driver: each write puts a slice of bread in; a read
/// says how many slices it toasted, and waits (pends) while there is no bread
/// yet. A toaster that goes away (surprise removal) fails the reads waiting in
/// it with STATUS_NO_SUCH_DEVICE; REMOVE_DEVICE waits for the I/O in flight
/// through the remove lock.
public enum ToasterDriver {
    public static let name = "Toaster"

    final class Toaster: @unchecked Sendable {
        let toasts = Atomic<Int>(0)
        var interface = ""
        /// The bus's GUID_TOASTER_INTERFACE_STANDARD while the toaster holds it.
        let busInterface = HandoffMutex<ToasterInterfaceStandard?>(nil)
        /// The serial number its PDO gave (an internal IOCTL), once started.
        let serial = Atomic<UInt32>(0)
        /// Reads waiting for bread.
        let waiting = CancelSafeQueue()
        /// Set at surprise removal: new reads fail instead of waiting.
        let gone = Atomic<Bool>(false)
    }

    static func answer(_ device: DeviceObject, _ irp: IRP) {
        let text = Array("\(device.deviceNode?.instanceName ?? "toaster"): \(device.deviceExtension(as: Toaster.self).toasts.load(ordering: .relaxed)) slices toasted\n".utf8)
        let buffer = irp.transferBuffer
        let offset = Int(irp.parameters.read.byteOffset)
        guard offset < text.count else {
            irp.complete(.endOfFile)
            return
        }
        let n = min(buffer.count, text.count - offset)
        buffer.copyBytes(from: text[offset..<offset + n])
        irp.complete(.success, information: n)
    }

    /// IRP_MN_QUERY_INTERFACE for GUID_TOASTER_INTERFACE_STANDARD to the device below.
    static func takeBusInterface(_ device: DeviceObject, _ toaster: Toaster) {
        guard let below = device.lowerDevice else { return }
        let (status, q) = device.driverObject.ioManager.callPnP(.queryInterface, to: below) { q in
            q.interfaceType = ToasterBus.interfaceStandard
            q.interfaceSize = 40
            q.interfaceVersion = 1
        }
        guard status.isSuccess, let i = q.interface as? ToasterInterfaceStandard else { return }
        toaster.busInterface.withLock { old in
            old?.interfaceDereference()
            old = i
        }
    }

    /// The bus's interface the toaster on `device` holds (tests, the toaster's own use).
    public static func busInterface(of device: DeviceObject) -> ToasterInterfaceStandard? {
        (device.deviceExtension as? Toaster)?.busInterface.withLock { $0 }
    }

    /// The serial number the toaster's PDO reported through the internal IOCTL.
    public static func serialNumber(of device: DeviceObject) -> UInt32? {
        (device.deviceExtension as? Toaster).map { $0.serial.load(ordering: .relaxed) }
    }

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            let toaster = Toaster()
            toaster.interface = driver.ioManager.registerDeviceInterface(pdo, classGUID: ToasterBus.toasterInterfaceClass)
            // As the sample's FDO: FILE_DEVICE_UNKNOWN, DO_BUFFERED_IO | DO_POWER_PAGABLE.
            return driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: [.bufferedIO, .powerPagable], extension: toaster)
        }
        driver.majorFunction.succeed([.flushBuffers, .create, .close])
        driver.majorFunction[.cleanup] = { device, irp in
            if let file = irp.fileObject { device.deviceExtension(as: Toaster.self).waiting.cancelAll(for: file) }
            irp.complete(.success)
            return .success
        }
        let pnp = PnP.functionDispatch(start: { device, _ in
            let toaster = device.deviceExtension(as: Toaster.self)
            let io = device.driverObject.ioManager
            // What the hardware says (an internal IOCTL to the PDO), and the bus's interface.
            if let below = device.lowerDevice {
                var serial: UInt32 = 0
                let r = withUnsafeMutableBytes(of: &serial) {
                    io.callDeviceIoControl(ToasterBus.internalGetSerial, to: below, internal: true, buffer: $0.baseAddress, outputLength: 4)
                }
                if r.status.isSuccess { toaster.serial.store(UInt32(littleEndian: serial), ordering: .relaxed) }
            }
            takeBusInterface(device, toaster)
            // The interface is enabled once the device works.
            io.setDeviceInterfaceState(toaster.interface, enabled: true)
            return .success
        })
        driver.majorFunction[.pnp] = { device, irp in
            let toaster = device.deviceExtension(as: Toaster.self)
            // Its QUERY_REMOVE and QUERY_STOP do not veto (as in the sample); a handle
            // still open vetoes a removal in the PnP manager (PNP_VetoOutstandingOpen).
            // The bus's interface is let go before the query reaches the PDO (a
            // referenced PDO refuses it), and taken again if the removal is off.
            if irp.pnpMinor == .queryRemoveDevice || irp.pnpMinor == .surpriseRemoval || irp.pnpMinor == .removeDevice {
                toaster.busInterface.withLock { i in
                    i?.interfaceDereference()
                    i = nil
                }
            }
            if irp.pnpMinor == .cancelRemoveDevice {
                let status = pnp(device, irp)
                takeBusInterface(device, toaster)
                return status
            }
            if irp.pnpMinor == .surpriseRemoval || irp.pnpMinor == .removeDevice {
                device.driverObject.ioManager.setDeviceInterfaceState(toaster.interface, enabled: false)
                // The toaster is gone: nobody will put bread in.
                toaster.gone.store(true, ordering: .releasing)
                while let r = toaster.waiting.removeNext() { r.complete(.noSuchDevice) }
            }
            return pnp(device, irp)
        }
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.read] = { device, irp in
            let toaster = device.deviceExtension(as: Toaster.self)
            // In flight: the remove lock makes REMOVE_DEVICE wait for this read.
            guard device.removeLock.acquire().isSuccess else {
                irp.complete(.noSuchDevice)
                return .noSuchDevice
            }
            defer { device.removeLock.release() }  // on every path, the refusal below included
            guard !toaster.gone.load(ordering: .acquiring) else {
                irp.complete(.noSuchDevice)
                return .noSuchDevice
            }
            if toaster.toasts.load(ordering: .acquiring) == 0 { return toaster.waiting.insert(irp) }
            answer(device, irp)
            return irp.ioStatus.status
        }
        driver.majorFunction[.write] = { device, irp in
            // Each write is a slice of bread; reads waiting for it are answered.
            let toaster = device.deviceExtension(as: Toaster.self)
            toaster.toasts.add(1, ordering: .releasing)
            irp.complete(.success, information: irp.parameters.write.length)
            while let r = toaster.waiting.removeNext() { answer(device, r) }
            return .success
        }
        return .success
    }
}
