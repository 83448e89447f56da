// The toaster bus's child PDOs (the sample's buspdo.c and interface.c): what a
// PDO must answer, the internal IOCTL that tells the function driver its serial
// number, and the TOASTER_INTERFACE_STANDARD it hands out.

import Synchronization
import ToasterPublic
import WDM

extension ToasterBus {
    /// A child PDO's extension (the sample's PDO_DEVICE_DATA). Changed under the bus's lock.
    final class Child: @unchecked Sendable {
        let serial: UInt32
        let hardwareIDs: [String]
        /// Plugged in (the sample's Present): reported in BusRelations. Unplugging or
        /// an IRP_MN_EJECT clears it.
        var present = true
        /// Included in a BusRelations answer at least once.
        var reported = false
        /// Left out of the latest BusRelations answer: its next REMOVE_DEVICE deletes it.
        var reportedMissing = false
        /// IOCTL_BUSENUM_DONT_DISPLAY_IN_UI_DEVICE was sent for it.
        var dontDisplay = false
        /// References on the GUID_TOASTER_INTERFACE_STANDARD it gave out: while
        /// there are any, it refuses QUERY_REMOVE (as the sample's PDO does).
        let interfaceReferences = Atomic<Int>(0)
        /// The crispiness level the interface sets and reads.
        let crispiness = Atomic<UInt8>(0)
        /// The bus that created it.
        weak var bus: Bus?
        init(serial: UInt32, hardwareIDs: [String]) {
            self.serial = serial
            self.hardwareIDs = hardwareIDs
        }
    }

    /// A child PDO: answers what a PDO must.
    static func childDispatch(_ device: DeviceObject, _ irp: IRP) -> NTStatus {
        let child = child(device)
        if irp.majorFunction == .power { return Power.pdoDispatch(device, irp) }
        if irp.majorFunction == .internalDeviceControl {
            // What the hardware would tell its function driver (only drivers can ask).
            let p = irp.parameters.deviceIoControl
            guard p.ioControlCode == internalGetSerial, p.outputBufferLength >= 4, let out = irp.userBuffer else {
                irp.complete(.invalidDeviceRequest)
                return .invalidDeviceRequest
            }
            out.storeBytes(of: child.serial.littleEndian, as: UInt32.self)
            irp.complete(.success, information: 4)
            return .success
        }
        guard irp.majorFunction == .pnp else {
            // Below the toaster's function device nothing else is there to do.
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        switch irp.pnpMinor {
        case .removeDevice:
            // Deleted only once it was left out of a BusRelations answer; until then
            // (an orderly removal, a failed start) the PDO stays for the next one.
            let delete = child.bus?.children.withLock { c -> Bool in
                guard child.reportedMissing else { return false }
                c.removeAll { $0 === device }
                return true
            } ?? true
            irp.complete(.success)
            if delete { device.driverObject.ioManager.deleteDevice(device) }
            return .success
        case .eject:
            // The hardware is gone: the next BusRelations answer leaves it out.
            child.bus?.children.withLock { _ in child.present = false }
            irp.complete(.success)
            return .success
        case .queryRemoveDevice where child.interfaceReferences.load(ordering: .acquiring) > 0:
            // Somebody still uses its interface: the removal must fail (the sample's words).
            irp.complete(.unsuccessful)
            return .unsuccessful
        case .queryDeviceText:
            // DeviceTextDescription, as the sample answers it; other text types are not answered.
            guard irp.pnp?.deviceTextType == 0 else { break }
            irp.pnp?.text = "Microsoft_Eliyas_Toaster_" + String(child.serial).leftPadded(to: 2)
            irp.complete(.success)
            return .success
        case .queryBusInformation:
            irp.pnp?.busInformation = BusInformation(busTypeGuid: busTypeGuid, legacyBusType: 15, busNumber: 0)
            irp.complete(.success)
            return .success
        case .deviceUsageNotification:
            irp.complete(.unsuccessful)  // as the sample: no paging, hibernation or dump files here
            return .unsuccessful
        case .queryPnpDeviceState:
            if let q = irp.pnp, child.bus?.children.withLock({ _ in child.dontDisplay }) == true { q.deviceState |= 0x2 }
            irp.complete(.success)
            return .success
        case .queryInterface where irp.pnp?.interfaceType == interfaceStandard:
            guard let q = irp.pnp, q.interfaceVersion >= 1 else {
                irp.complete(.invalidParameter)
                return .invalidParameter
            }
            let i = ChildInterface(child)
            i.interfaceReference()  // the provider references it before handing it out
            q.interface = i
            irp.complete(.success)
            return .success
        default:
            break
        }
        return PnP.completeAsPDO(device, irp, ids: { type in
            switch type {
            case .deviceID: [toasterHardwareID]
            case .instanceID: ["toaster" + String(child.serial)]
            case .hardwareIDs: child.hardwareIDs
            case .compatibleIDs: [toasterCompatibleID]
            }
        }, capabilities: { caps in
            // As the sample's PDO: Address and UINumber the serial number, ejectable,
            // S1 -> D1, S2..S5 -> D3, able to wake from D1.
            caps.removable = true
            caps.surpriseRemovalOK = true
            caps.uniqueID = false
            caps.ejectSupported = true
            caps.address = child.serial
            caps.uiNumber = child.serial
            caps.deviceState = [1, 2, 4, 4, 4, 4]
            caps.deviceWake = 2
        })
    }

    /// The bus's `ToasterInterfaceStandard` for one child.
    final class ChildInterface: ToasterInterfaceStandard {
        private let child: Child
        init(_ child: Child) { self.child = child }
        func interfaceReference() { child.interfaceReferences.add(1, ordering: .acquiringAndReleasing) }
        func interfaceDereference() { child.interfaceReferences.subtract(1, ordering: .acquiringAndReleasing) }
        func getCrispinessLevel() -> UInt8 { child.crispiness.load(ordering: .relaxed) }
        func setCrispinessLevel(_ level: UInt8) -> NTStatus {
            child.crispiness.store(level, ordering: .relaxed)
            return .success
        }
        func isSafetyLockEnabled() -> Bool { true }
    }
}

extension String {
    func leftPadded(to n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
