// The toaster family, after the WDM toaster sample: a bus driver whose
// children are plugged in and unplugged by IOCTLs (the sample's codes and
// structures), and the toaster function driver. The bus FDO sits on a root
// PDO; its child PDOs are its own devices, enumerated by the PnP manager.

import Synchronization
import WDM

public enum ToasterBus {
    public static let name = "ToasterBus"
    public static let hardwareID = "Root\\ToasterBus"
    /// `IOCTL_BUSENUM_PLUGIN_HARDWARE`: CTL_CODE(FILE_DEVICE_BUS_EXTENDER, 0, METHOD_BUFFERED, FILE_READ_DATA).
    public static let plugIn = ControlCode(rawValue: 0x002A_4000)
    /// `IOCTL_BUSENUM_UNPLUG_HARDWARE`
    public static let unplug = ControlCode(rawValue: 0x002A_4004)
    /// `IOCTL_BUSENUM_EJECT_HARDWARE`
    public static let eject = ControlCode(rawValue: 0x002A_4008)
    /// The toaster's hardware and compatible IDs.
    public static let toasterHardwareID = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster"
    public static let toasterCompatibleID = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsCompatibleToaster"
    /// `GUID_DEVINTERFACE_BUSENUM_TOASTER`
    public static let interfaceClass = "{D35F7840-6A0C-11d2-B841-00C04FAD5171}"
    /// `GUID_DEVINTERFACE_TOASTER`
    public static let toasterInterfaceClass = "{781EF630-72B2-11d2-B852-00C04FAD5171}"

    /// BUSENUM_PLUGIN_HARDWARE { ULONG Size = 8; ULONG SerialNo; WCHAR HardwareIDs[] } with the
    /// IDs as a UTF-16LE multi-string (each ended by NUL, the list by a second NUL).
    /// `size` other than 8 builds a malformed request (for tests).
    public static func plugInRequest(serial: UInt32, hardwareIDs: [String] = [toasterHardwareID], size: UInt32 = 8) -> [UInt8] {
        var b = le(size) + le(serial)
        for id in hardwareIDs {
            for u in id.utf16 { b += [UInt8(u & 0xFF), UInt8(u >> 8)] }
            b += [0, 0]
        }
        return b + [0, 0]
    }

    /// BUSENUM_UNPLUG_HARDWARE / BUSENUM_EJECT_HARDWARE { ULONG Size = 16; ULONG SerialNo; ULONG Reserved[2] }.
    public static func unplugRequest(serial: UInt32) -> [UInt8] { le(16) + le(serial) + [UInt8](repeating: 0, count: 8) }

    static func le(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }

    /// A child PDO's extension.
    final class Child: @unchecked Sendable {
        let serial: UInt32
        let hardwareIDs: [String]
        /// Unplugged: no longer reported in BusRelations (and deleted at REMOVE).
        var unplugged = false
        /// The bus that created it.
        weak var bus: Bus?
        init(serial: UInt32, hardwareIDs: [String]) {
            self.serial = serial
            self.hardwareIDs = hardwareIDs
        }
    }

    /// The bus FDO's extension.
    final class Bus: @unchecked Sendable {
        var interface = ""
        let children = Mutex<[DeviceObject]>([])
        let opens = Atomic<Int>(0)
        weak var pdo: DeviceObject?
    }

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            let bus = Bus()
            bus.pdo = pdo
            bus.interface = driver.ioManager.registerDeviceInterface(pdo, classGUID: interfaceClass)
            return driver.addFunctionDevice(for: pdo, deviceType: 0x2A, flags: .bufferedIO, extension: bus)
        }
        driver.majorFunction.setAll { device, irp in
            if device.deviceExtension is Child { return childDispatch(device, irp) }
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        driver.majorFunction[.create] = { device, irp in
            guard let bus = device.deviceExtension as? Bus else { return childDispatch(device, irp) }
            // The bus device is exclusive, as in the sample.
            let (ok, _) = bus.opens.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing)
            let status: NTStatus = ok ? .success : .accessDenied
            irp.complete(status)
            return status
        }
        driver.majorFunction[.close] = { device, irp in
            if let bus = device.deviceExtension as? Bus { bus.opens.store(0, ordering: .releasing) }
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.cleanup] = { _, irp in
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.deviceControl] = { device, irp in
            guard let bus = device.deviceExtension as? Bus else { return childDispatch(device, irp) }
            let status = busControl(device, bus, irp)
            irp.complete(status)
            return status
        }
        driver.majorFunction[.power] = { device, irp in
            guard device.deviceExtension is Bus else { return childDispatch(device, irp) }
            return Power.functionDispatch(device, irp)
        }
        driver.majorFunction[.pnp] = { device, irp in
            guard let bus = device.deviceExtension as? Bus else { return childDispatch(device, irp) }
            switch irp.pnpMinor {
            case .queryDeviceRelations where irp.pnp?.relationType == .busRelations:
                irp.pnp?.relations = bus.children.withLock { $0.filter { !($0.deviceExtension as! Child).unplugged } }
                irp.ioStatus.status = .success
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            case .startDevice:
                return PnP.functionDispatch(start: { device, _ in
                    device.driverObject.ioManager.setDeviceInterfaceState(bus.interface, enabled: true)
                    return .success
                })(device, irp)
            case .surpriseRemoval:
                device.driverObject.ioManager.setDeviceInterfaceState(bus.interface, enabled: false)
                return PnP.functionDispatch()(device, irp)
            case .removeDevice:
                device.driverObject.ioManager.setDeviceInterfaceState(bus.interface, enabled: false)
                let children = bus.children.withLock { c in defer { c.removeAll() }; return c }
                for child in children { device.driverObject.ioManager.deleteDevice(child) }
                return PnP.functionDispatch()(device, irp)
            default:
                return PnP.functionDispatch()(device, irp)
            }
        }
        return .success
    }

    /// The plug-in, unplug and eject IOCTLs (METHOD_BUFFERED, input only).
    static func busControl(_ device: DeviceObject, _ bus: Bus, _ irp: IRP) -> NTStatus {
        let p = irp.parameters.deviceIoControl
        guard let buffer = irp.systemBuffer else { return .invalidParameter }
        let input = UnsafeRawBufferPointer(start: buffer, count: p.inputBufferLength)
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: input.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        switch p.ioControlCode {
        case plugIn:
            // BUSENUM_PLUGIN_HARDWARE { ULONG Size (= 8); ULONG SerialNo; WCHAR HardwareIDs[] }
            guard p.inputBufferLength >= 12, u32(0) == 8 else { return .invalidParameter }
            let serial = u32(4)
            guard serial != 0, let ids = multiString(input[8...]), !ids.isEmpty else { return .invalidParameter }
            let inUse = bus.children.withLock { c in c.contains { ($0.deviceExtension as! Child).serial == serial && !($0.deviceExtension as! Child).unplugged } }
            if inUse { return .invalidParameter }
            let io = device.driverObject.ioManager
            let child = Child(serial: serial, hardwareIDs: ids)
            child.bus = bus
            let pdo = io.createDevice(driver: device.driverObject, deviceType: 0x2A, characteristics: 0x1,  // FILE_AUTOGENERATED_DEVICE_NAME
                                      name: "\\Device\\Toaster" + String(serial), extension: child)
            pdo.flags.remove(.deviceInitializing)
            bus.children.withLock { $0.append(pdo) }
            if let busPDO = bus.pdo { io.invalidateDeviceRelations(busPDO) }
            return .success
        case unplug, eject:
            // BUSENUM_UNPLUG_HARDWARE / BUSENUM_EJECT_HARDWARE { ULONG Size (= 16); ULONG SerialNo; ULONG Reserved[2] }
            guard p.inputBufferLength == 16, u32(0) == 16 else { return .invalidParameter }
            let serial = u32(4)
            let found = bus.children.withLock { c -> Int in
                var n = 0
                for child in c {
                    let x = child.deviceExtension as! Child
                    if !x.unplugged, serial == 0 || x.serial == serial {
                        x.unplugged = true
                        n += 1
                    }
                }
                return n
            }
            let any = bus.children.withLock { !$0.isEmpty }
            guard found > 0 else { return any && serial != 0 ? .invalidParameter : .noSuchDevice }
            if let busPDO = bus.pdo { device.driverObject.ioManager.invalidateDeviceRelations(busPDO) }
            return .success
        default:
            return .invalidDeviceRequest
        }
    }

    /// A UTF-16LE multi-string (strings ended by NUL, the list by a second NUL).
    static func multiString(_ bytes: UnsafeRawBufferPointer.SubSequence) -> [String]? {
        let data = Array(bytes)
        guard data.count % 2 == 0, data.count >= 4 else { return nil }
        var units: [UInt16] = []
        for i in stride(from: 0, to: data.count, by: 2) { units.append(UInt16(data[i]) | UInt16(data[i + 1]) << 8) }
        guard units.count >= 2, units[units.count - 1] == 0, units[units.count - 2] == 0 else { return nil }
        var out: [String] = []
        var current: [UInt16] = []
        for u in units.dropLast() {
            if u == 0 {
                guard !current.isEmpty else { return nil }  // an empty string inside the list
                out.append(String(decoding: current, as: UTF16.self))
                current = []
            } else {
                current.append(u)
            }
        }
        return current.isEmpty ? out : nil
    }

    /// A child PDO: answers what a PDO must.
    static func childDispatch(_ device: DeviceObject, _ irp: IRP) -> NTStatus {
        let child = device.deviceExtension as! Child
        if irp.majorFunction == .power { return Power.pdoDispatch(device, irp) }
        guard irp.majorFunction == .pnp else {
            // Below the toaster's function device nothing else is there to do.
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        if irp.pnpMinor == .removeDevice, child.unplugged {
            // Reported missing: the bus forgets it and deletes the PDO now.
            irp.complete(.success)
            child.bus?.children.withLock { $0.removeAll { $0 === device } }
            device.driverObject.ioManager.deleteDevice(device)
            return .success
        }
        return PnP.completeAsPDO(device, irp, ids: { type in
            switch type {
            case .deviceID: [toasterHardwareID]
            case .instanceID: ["toaster" + String(child.serial)]
            case .hardwareIDs: child.hardwareIDs
            case .compatibleIDs: [toasterCompatibleID]
            }
        }, capabilities: { caps in
            caps.removable = true
            caps.surpriseRemovalOK = true
            caps.uniqueID = true
            caps.uiNumber = child.serial
        })
    }
}

/// The toaster function driver: each write puts a slice of bread in; a read
/// says how many slices it toasted, and waits (pends) while there is no bread
/// yet. A toaster that goes away (surprise removal) fails the reads waiting in
/// it with STATUS_NO_SUCH_DEVICE; REMOVE_DEVICE waits for the I/O in flight
/// through the remove lock.
public enum ToasterDriver {
    public static let name = "Toaster"

    final class Toaster: @unchecked Sendable {
        let toasts = Atomic<Int>(0)
        let opens = Atomic<Int>(0)
        var interface = ""
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

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            let toaster = Toaster()
            toaster.interface = driver.ioManager.registerDeviceInterface(pdo, classGUID: ToasterBus.toasterInterfaceClass)
            return driver.addFunctionDevice(for: pdo, deviceType: 0x2A, flags: .bufferedIO, extension: toaster)
        }
        driver.majorFunction.succeed([.flushBuffers])
        driver.majorFunction[.cleanup] = { device, irp in
            if let file = irp.fileObject { device.deviceExtension(as: Toaster.self).waiting.cancelAll(for: file) }
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.create] = { device, irp in
            device.deviceExtension(as: Toaster.self).opens.add(1, ordering: .relaxed)
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.close] = { device, irp in
            device.deviceExtension(as: Toaster.self).opens.subtract(1, ordering: .relaxed)
            irp.complete(.success)
            return .success
        }
        let pnp = PnP.functionDispatch(start: { device, _ in
            // The interface is enabled once the device works.
            device.driverObject.ioManager.setDeviceInterfaceState(device.deviceExtension(as: Toaster.self).interface, enabled: true)
            return .success
        })
        driver.majorFunction[.pnp] = { device, irp in
            let toaster = device.deviceExtension(as: Toaster.self)
            // A toaster in use says no to an orderly removal (devcon remove names it).
            if irp.pnpMinor == .queryRemoveDevice || irp.pnpMinor == .queryStopDevice, toaster.opens.load(ordering: .relaxed) > 0 {
                irp.complete(.deviceBusy)
                return .deviceBusy
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
            guard device.removeLock.acquire().isSuccess, !toaster.gone.load(ordering: .acquiring) else {
                irp.complete(.noSuchDevice)
                return .noSuchDevice
            }
            defer { device.removeLock.release() }
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

/// The toaster sample's filter: one source that serves all six positions (device,
/// class and bus filters, upper and lower). It passes everything down and logs
/// every PnP and power IRP it sees, with its position, to its device node's log
/// (`.devices/NODE/filter.log` under the mount).
public enum ToasterFilter {
    /// The six positions, as the service names that load this one source.
    public static let positions = ["DevUpperFilter", "DevLowerFilter", "ClassUpperFilter", "ClassLowerFilter", "BusUpperFilter", "BusLowerFilter"]

    public static func driverEntry(position: String) -> DriverEntry {
        { driver in
            driver.addDevice = { driver, pdo in
                driver.createFilterDevice(for: pdo)
                return .success
            }
            driver.majorFunction.setAll { device, irp in
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            driver.majorFunction[.pnp] = { device, irp in
                let node = device.deviceNode
                node?.appendLog("\(position) \(irp.pnpMinor?.wdmName ?? "IRP_MN_0x\(String(irp.minorFunction, radix: 16))")")
                return PnP.filterDispatch(device, irp)
            }
            driver.majorFunction[.power] = { device, irp in
                let what: String
                switch irp.power?.target {
                case .system(let s)?: what = "system \(s)"
                case .device(let d)?: what = "device \(d)"
                case nil: what = ""
                }
                device.deviceNode?.appendLog("\(position) IRP_MJ_POWER \(irp.powerMinor.map { String(describing: $0) } ?? "?") \(what)")
                return Power.filterDispatch(device, irp)
            }
            return .success
        }
    }
}
