// The root bus (the PnP manager's own PDOs for root-enumerated devices) and
// the sender of the IRPs the PnP and power managers build themselves.

import Dispatch

extension IOManager {
    /// Sends a PnP IRP to `device` (the top of a stack, or a PDO during enumeration)
    /// and waits for it. It starts with STATUS_NOT_SUPPORTED, as every PnP IRP does.
    func sendPnP(_ minor: PnPMinor, to device: DeviceObject, _ configure: (PnPRequest) -> Void = { _ in }) -> (NTStatus, PnPRequest) {
        let request = PnPRequest()
        configure(request)
        let status = sendSystemIrp(.pnp, minor.rawValue, to: device) { $0.pnp = request }
        return (status, request)
    }

    /// An IRP the PnP or power manager builds (no file object), sent to `device` and
    /// waited for; it starts with STATUS_NOT_SUPPORTED.
    func sendSystemIrp(_ major: MajorFunction, _ minor: UInt8, to device: DeviceObject, _ attach: (IRPPacket) -> Void) -> NTStatus {
        let irp = allocateIrp(stackSize: device.stackSize)
        let p = irp.packet
        p.targetDevice = device
        attach(p)
        p.ioStatus = IOStatusBlock(status: .notSupported)
        p.locations[p.currentLocation - 2].majorFunction = major
        p.locations[p.currentLocation - 2].minorFunction = minor
        let (status, completed) = callSynchronously(irp)
        if completed { freeIrp(irp) }
        return status
    }

    /// A filter must copy what the device below it has (Verifier 0x244, 0x246
    /// and 0x23F, as Microsoft numbers them). Characteristics it should copy too, but Verifier has no code for it.
    func checkFilterCopied(_ filter: DeviceObject, from lower: DeviceObject) {
        guard verifier.verifies(filter.driverObject) else { return }
        let buffering: DeviceFlags = [.bufferedIO, .directIO]
        if filter.flags.intersection(buffering) != lower.flags.intersection(buffering) {
            verifier.report(.filterBufferingNotCopied, device: filter, detail: "Flags \(filter.flags.intersection(buffering)), below: \(lower.flags.intersection(buffering))")
        }
        if filter.deviceType != lower.deviceType {
            verifier.report(.filterDeviceTypeNotCopied, device: filter, detail: "DeviceType \(DeviceType.name(of: filter.deviceType)), below: \(DeviceType.name(of: lower.deviceType))")
        }
        if filter.flags.contains(.powerPagable) != lower.flags.contains(.powerPagable) {
            verifier.report(.filterPowerPagableNotCopied, device: filter, detail: "Flags \(filter.flags.intersection(.powerPagable)), below: \(lower.flags.intersection(.powerPagable))")
        }
    }

    func makeRootBus() -> DriverObject {
        let bus = DriverObject(name: "\\Driver\\PnpManager", ioManager: self)
        // A root-enumerated PDO has no hardware behind it: it answers the PnP IRPs a
        // PDO must, leaves the others with the status they carry, and fails the rest.
        bus.majorFunction.setAll { _, irp in
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        bus.majorFunction[.power] = Power.pdoDispatch
        bus.majorFunction[.pnp] = { device, irp in
            let node = device.deviceNode
            return PnP.completeAsPDO(device, irp, ids: { type in
                guard let node else { return nil }
                switch type {
                case .deviceID: return [node.hardwareIDs.first ?? "ROOT\\" + node.instanceName.uppercased()]
                case .instanceID: return [node.instanceName]
                case .hardwareIDs: return node.hardwareIDs
                case .compatibleIDs: return node.compatibleIDs
                }
            })
        }
        return bus
    }

}
