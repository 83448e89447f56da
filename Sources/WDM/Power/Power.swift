// Power: system and device power states, IRP_MJ_POWER, the power policy
// owner's work (a system SET_POWER becomes a device SET_POWER for the state
// the device's capabilities map it to, and the system IRP completes when the
// device IRP did), and I/O that waits while its device is not in D0.

import Dispatch
import Synchronization

/// `SYSTEM_POWER_STATE`.
public enum SystemPowerState: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case working = 1, sleeping1 = 2, sleeping2 = 3, sleeping3 = 4, hibernate = 5, shutdown = 6
    /// `S0` ... `S5`.
    public var description: String { "S\(rawValue - 1)" }
    /// Parses `S0` ... `S5`.
    public init?(name: String) {
        guard name.count == 2, name.uppercased().hasPrefix("S"), let n = UInt32(name.dropFirst()), n <= 5 else { return nil }
        self.init(rawValue: n + 1)
    }
}

/// `DEVICE_POWER_STATE`.
public enum DevicePowerState: UInt32, Sendable, CustomStringConvertible {
    case d0 = 1, d1 = 2, d2 = 3, d3 = 4
    public var description: String { "D\(rawValue - 1)" }
}

/// `IRP_MN_*` for IRP_MJ_POWER.
public enum PowerMinor: UInt8, Sendable {
    case waitWake = 0x00, powerSequence = 0x01, setPower = 0x02, queryPower = 0x03

    /// The WDK's name (`IRP_MN_SET_POWER`).
    public var wdmName: String {
        switch self {
        case .waitWake: "IRP_MN_WAIT_WAKE"
        case .powerSequence: "IRP_MN_POWER_SEQUENCE"
        case .setPower: "IRP_MN_SET_POWER"
        case .queryPower: "IRP_MN_QUERY_POWER"
        }
    }
}

/// What a power IRP asks (`Parameters.Power`): a system or a device state.
public final class PowerRequest: @unchecked Sendable {
    public enum Target: Sendable, Equatable {
        case system(SystemPowerState)
        case device(DevicePowerState)
    }
    public let target: Target
    init(_ target: Target) { self.target = target }
}

extension IRP {
    /// An IRP_MJ_POWER IRP's parameters (nil for others).
    public var power: PowerRequest? { packet.power }
    /// The current location's minor function as a power minor.
    public var powerMinor: PowerMinor? { PowerMinor(rawValue: minorFunction) }

    /// A PnP or power IRP's minor function by its WDK name, with what a power IRP
    /// asks: `IRP_MN_START_DEVICE`, `IRP_MN_SET_POWER system S3`, `IRP_MN_0x42`.
    public var minorDescription: String {
        let known = majorFunction == .pnp ? pnpMinor?.wdmName : majorFunction == .power ? powerMinor?.wdmName : nil
        var s = known ?? "IRP_MN_0x" + String(minorFunction, radix: 16)
        switch power?.target {
        case .system(let state)?: s += " system \(state)"
        case .device(let state)?: s += " device \(state)"
        case nil: break
        }
        return s
    }
}

/// Why a stack holds its new requests at its top.
public struct HoldReason: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The power policy owner is not in D0.
    public static let power = HoldReason(rawValue: 1)
    /// The function driver is between QUERY_STOP and START or CANCEL_STOP.
    public static let stop = HoldReason(rawValue: 2)
}

/// The power dispatch routines drivers use.
public enum Power {
    /// A function driver's IRP_MJ_POWER, as the device's power policy owner:
    /// a system SET_POWER or QUERY_POWER goes down, then (in a completion routine)
    /// the driver requests the device IRP of the same minor for DeviceState[S]
    /// and completes the system IRP with its status. Device SET_POWER: going down,
    /// the driver records the new state before passing it on; going up, after the
    /// lower drivers finished (the bus powers up first). The rest goes down.
    public static let functionDispatch: DispatchRoutine = { device, irp in
        let io = device.driverObject.ioManager
        switch (irp.powerMinor, irp.power?.target) {
        case (let minor?, .system(let s)?) where minor == .setPower || minor == .queryPower:
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { device, irp, _ in
                guard let device, irp.ioStatus.status.isSuccess else { return .success }
                let mapped = device.capabilities.deviceState[Int(s.rawValue - 1)]
                let d = DevicePowerState(rawValue: UInt32(mapped)) ?? .d3
                // PoRequestPowerIrp: the device IRP for the mapped state; its
                // completion completes the system IRP.
                io.requestDevicePower(device, minor, d) { status in
                    irp.complete(status)
                }
                return .moreProcessingRequired
            }
            irp.markPending()
            _ = device.callLower(irp)
            return .pending
        case (.setPower?, .device(let d)?):
            if d.rawValue > DevicePowerState.d0.rawValue {
                io.setPowerState(device, d)
                irp.ioStatus.status = .success
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            var status = PnP.forwardAndWait(device, irp)
            if status == .notSupported { status = .success }
            if status.isSuccess { io.setPowerState(device, d) }
            irp.complete(status)
            return status
        default:
            if irp.powerMinor == .queryPower { irp.ioStatus.status = .success }
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
    }

    /// A filter's IRP_MJ_POWER: passed down untouched.
    public static let filterDispatch: DispatchRoutine = { device, irp in
        irp.skipCurrentStackLocation()
        return device.callLower(irp)
    }

    /// A PDO's IRP_MJ_POWER: the bus says yes, and records a device state.
    public static let pdoDispatch: DispatchRoutine = { device, irp in
        if irp.powerMinor == .setPower, case .device(let d)? = irp.power?.target {
            device.driverObject.ioManager.setPowerState(device, d)
        }
        let status: NTStatus = irp.powerMinor == .setPower || irp.powerMinor == .queryPower ? .success : irp.ioStatus.status
        irp.complete(status)
        return status
    }
}

extension IOManager {
    /// The system power state.
    public var systemPowerState: SystemPowerState { systemPower.withLock { $0 } }

    /// Moves the system to `state`, as one action of the PnP manager: before
    /// sleeping, QUERY_POWER (system) down every started stack, children first; a
    /// stack that refuses ends it, and every stack asked gets SET_POWER for the
    /// current state again (the query is "reaffirmed"). Then SET_POWER (system)
    /// down every stack, children first when going to sleep, parents first when
    /// waking. Each stack's power policy owner turns it into a device IRP.
    /// Returns the status of the stack that refused, or STATUS_SUCCESS.
    @discardableResult
    public func setSystemPower(_ state: SystemPowerState) -> NTStatus {
        pnp.perform { pnp.powerTransition(state) }
    }

    /// `PoRequestPowerIrp(device, minor, D)`: a device IRP sent to the top of
    /// `device`'s stack; `done` runs with its status when it completes. After a
    /// SET_POWER to D0 has completed, the requests that waited for D0 go down.
    public func requestDevicePower(_ device: DeviceObject, _ minor: PowerMinor = .setPower, _ state: DevicePowerState,
                                   done: @escaping @Sendable (NTStatus) -> Void) {
        let top = device.topOfStack
        DispatchQueue.global().async { [self] in
            let (status, _) = sendPower(minor, .device(state), to: top)
            if minor == .setPower, state == .d0, status.isSuccess { resumeWaitingIO(top) }
            done(status)
        }
    }

    func sendPower(_ minor: PowerMinor, _ target: PowerRequest.Target, to device: DeviceObject) -> (NTStatus, Bool) {
        let request = PowerRequest(target)
        return (sendSystemIrp(.power, minor.rawValue, to: device) { $0.power = request }, true)
    }

    /// Records a device's power state. The power policy owner's state decides
    /// whether I/O to the stack waits: not in D0, new requests wait (and can still
    /// be cancelled); the requests go down in the order they came once the D0 IRP
    /// has completed (`requestDevicePower`).
    /// A driver that holds its I/O itself while not in D0 (the framework's
    /// power-managed queues) passes `holdsIO: false`.
    public func setPowerState(_ device: DeviceObject, _ state: DevicePowerState, holdsIO: Bool = true) {
        device.powerStateWord.store(state.rawValue, ordering: .releasing)
        guard let node = device.deviceNode, node.pdo !== device else { return }  // the bus's PDO: recorded only
        node.powerWord.store(state.rawValue, ordering: .releasing)
        if state != .d0, holdsIO { hold(device, .power, true) }
    }

    /// The requests that waited for D0 go down, in the order they came (unless the
    /// stack still holds them for another reason).
    func resumeWaitingIO(_ top: DeviceObject) { hold(top, .power, false) }

    /// Holds (or stops holding) new requests at the top of `device`'s stack for
    /// `reason`; when no reason is left, what waited goes down in the order it came.
    /// The power helper holds while the policy owner is not in D0 (KMDF's
    /// power-managed queue); the PnP helper from QUERY_STOP to START or CANCEL_STOP.
    /// A driver that uses neither gets its I/O in any state, as on Windows.
    public func hold(_ device: DeviceObject, _ reason: HoldReason, _ on: Bool) {
        let top = device.topOfStack
        let before = on ? top.held.bitwiseOr(reason.rawValue, ordering: .acquiringAndReleasing).oldValue
                        : top.held.bitwiseAnd(~reason.rawValue, ordering: .acquiringAndReleasing).oldValue
        let after = on ? before | reason.rawValue : before & ~reason.rawValue
        if (before == 0) != (after == 0) {
            let n = heldStacks.add(after == 0 ? -1 : 1, ordering: .acquiringAndReleasing).newValue
            anyHeld.store(n > 0, ordering: .releasing)
        }
        if after == 0, before != 0 {
            while let irp = top.powerQueue.removeNext() { _ = callDriver(irp.packet.targetDevice!, irp) }
        }
    }

    /// A request to a stack that holds its I/O: it waits, pending, at the top.
    func park(_ irp: IRP, _ top: DeviceObject) -> NTStatus {
        let p = irp.packet
        counters.submitted.add(1, ordering: .relaxed)
        counters.pended.add(1, ordering: .relaxed)
        p.dispatchState.store(IRPPacket.Dispatch.returnedPending.rawValue, ordering: .releasing)
        if p.borrowed { relocateBorrowedMemory(p) }
        p.requester?.irpPending(irp)
        top.powerQueue.park(irp)
        // The stack may have stopped holding meanwhile.
        if top.held.load(ordering: .acquiring) == 0 {
            while let irp = top.powerQueue.removeNext() { _ = callDriver(irp.packet.targetDevice!, irp) }
        }
        return .pending
    }
}

extension PnPManager {
    /// See `IOManager.setSystemPower`. On the executor.
    func powerTransition(_ state: SystemPowerState) -> NTStatus {
        let current = io.systemPowerState
        var order = allNodes.filter { $0.state == .started && $0.pdo != nil }
        let sleeping = state != .working
        if sleeping { order.reverse() }
        if sleeping {
            for (i, node) in order.enumerated() {
                let (q, _) = io.sendPower(.queryPower, .system(state), to: node.pdo!.topOfStack)
                if !q.isSuccess && q != .notSupported {
                    io.log?("\(node.instanceName): refused \(state) (\(q)); \(current) is reaffirmed")
                    for asked in order[...i] {
                        if let pdo = asked.pdo { _ = io.sendPower(.setPower, .system(current), to: pdo.topOfStack) }
                    }
                    return q
                }
            }
        }
        for node in order {
            guard let pdo = node.pdo else { continue }
            _ = io.sendPower(.setPower, .system(state), to: pdo.topOfStack)
            if !sleeping, node.powerState == .d0 { io.resumeWaitingIO(pdo.topOfStack) }
            io.powerLog?("\(node.instanceName) \(state) \(node.powerState)")
        }
        io.systemPower.withLock { $0 = state }
        dirty = true
        return .success
    }
}

extension DeviceObject {
    /// The device's power state (`DEVICE_POWER_STATE`).
    public var powerState: DevicePowerState { DevicePowerState(rawValue: powerStateWord.load(ordering: .acquiring)) ?? .d0 }
    /// The capabilities its node reported (DeviceState[] maps S to D).
    public var capabilities: DeviceCapabilities { deviceNode?.capabilities ?? DeviceCapabilities() }
}
