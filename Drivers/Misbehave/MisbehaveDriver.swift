// MisbehaveDriver: `misbehave`, a deliberately wrong driver for testing the
// verifier and the I/O manager's promise that no request is lost. Each IOCTL
// breaks one rule; reads keep their buffer after completing (a read at
// `unwrittenOffset` reports bytes it never wrote). Only the `test`
// tree mounts it. LazyFilter is a filter that forgets to copy the flags of the
// device below (Verifier 0x244, DeviceType 0x246, DO_POWER_PAGABLE 0x23F).

import Dispatch
import Synchronization
import WDM

public enum MisbehaveDriver {
    public static let name = "Misbehave"
    /// How many times a read's buffer was written after its request completed, on
    /// `device` (tests that run side by side each watch their own device).
    public static func lateWrites(on device: DeviceObject) -> Int {
        device.deviceExtension(as: Extension.self).lateWrites.load(ordering: .acquiring)
    }
    /// A read at this offset fills the caller's whole buffer with 'S' (someone's data).
    public static let secretOffset: Int64 = 8192
    /// A read at this offset claims the whole buffer and writes none of it.
    public static let unwrittenOffset: Int64 = 4096

    /// Not a bug: answers the device's count of late writes (`lateWrites`) as a
    /// little-endian UInt64, so a test on a mount can wait for one to have happened.
    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x920, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
    public static let lateWritesCode = ControlCode(deviceType: DeviceType.unknown, function: 0x920, method: .buffered, access: [])

    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900 + n, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
    public enum Bug: UInt32, CaseIterable, Sendable {
        /// IoCompleteRequest twice (bug check 0x44).
        case completeTwice = 0
        /// Completes, then returns STATUS_PENDING without IoMarkIrpPending (0x23D).
        case pendingWithoutMark = 1
        /// Returns STATUS_SUCCESS without completing (0x226): the IRP stays with the driver.
        case returnWithoutCompleting = 2
        /// Marks pending and keeps the IRP with no cancel routine: it never completes.
        case pendForever = 3
        /// Completes with Information larger than the output buffer (0x312).
        case informationTooLarge = 4
        /// Completes, then completes the same IRP again 50 ms later, when it has been reused.
        case completeAfterReuse = 5
        /// Marks the IRP pending and returns another status (0x23E).
        case markedButNotPending = 6
        /// Completes; from then on the device's CLOSEs pend forever (no cancel
        /// routine): the last close of a handle never finishes.
        case keepCloses = 7
        /// Ends the process (a driver that crashes: run it with `isolation: host`,
        /// and only its driver host goes).
        case crash = 8
        /// Completes; from then on the device's device SET_POWER IRPs pend forever
        /// (a driver that hangs on a power request: with `isolation: host` its host
        /// is killed at the deadline).
        case hangOnPower = 9

        public var code: ControlCode {
            ControlCode(deviceType: DeviceType.unknown, function: 0x900 + rawValue, method: .buffered, access: [])
        }
    }

    final class Extension: @unchecked Sendable {
        /// IRPs the driver holds on to forever (`pendForever`, `returnWithoutCompleting`).
        let kept = HandoffMutex<[IRP]>([])
        /// Set by `keepCloses`.
        let keepCloses = Atomic<Bool>(false)
        /// Set by `hangOnPower`.
        let hangOnPower = Atomic<Bool>(false)
        /// Late writes into read buffers so far.
        let lateWrites = Atomic<Int>(0)
    }

    /// `HangAtStart`: 1 makes IRP_MN_START_DEVICE never return (for driver hosts' deadline).
    public static let settings = [DriverSetting.integer("HangAtStart", 0...1, default: 0, help: "1: START never returns (only with isolation: host)")]

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, extension: Extension()) }
        driver.majorFunction.succeed([.create, .cleanup, .close])
        driver.majorFunction[.close] = { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            guard ext.keepCloses.load(ordering: .acquiring) else {
                irp.complete(.success)
                return .success
            }
            irp.markPending()
            ext.kept.withLock { $0.append(irp) }
            return .pending
        }
        driver.majorFunction[.pnp] = PnP.functionDispatch(start: { device, _ in
            // `HangAtStart: 1`: START never returns (run it with `isolation: host`, whose
            // deadline kills the host; in the daemon it would stop the PnP manager).
            if device.deviceNode?.parameters["HangAtStart"] == "1" { DispatchSemaphore(value: 0).wait() }
            return .success
        })
        driver.majorFunction[.power] = { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            guard ext.hangOnPower.load(ordering: .acquiring), irp.powerMinor == .setPower, case .device? = irp.power?.target else {
                return Power.functionDispatch(device, irp)
            }
            irp.markPending()
            ext.kept.withLock { $0.append(irp) }
            return .pending
        }
        driver.majorFunction[.read] = { device, irp in
            let buffer = irp.transferBuffer
            switch irp.parameters.read.byteOffset {
            case secretOffset:
                // A caller's data: the whole buffer, 'S'.
                buffer.initializeMemory(as: UInt8.self, repeating: 0x53)
                irp.complete(.success, information: buffer.count)
                return .success
            case unwrittenOffset:
                // Reports the whole buffer read while writing none of it (0x312's
                // cousin): whatever the buffer held goes to the caller.
                irp.complete(.success, information: buffer.count)
                return .success
            default: break
            }
            // Completes, then keeps writing into the buffer it was given (checked mode sees it).
            if buffer.count > 0 { buffer[0] = 0x4D }
            irp.complete(.success, information: min(buffer.count, 1))
            if let base = buffer.baseAddress, buffer.count > 0 {
                let address = UInt(bitPattern: base)
                // The buffer is a host's, kept per device (the bridge's pools): once the
                // device is gone so may be the memory, and the test process with it.
                // Wrong as the driver is, it scribbles only while its device lives.
                DispatchQueue.global().asyncAfter(deadline: .now() + 0.02) { [weak device] in
                    guard let device else { return }
                    withExtendedLifetime(device) {
                        UnsafeMutableRawPointer(bitPattern: address)!.storeBytes(of: 0x42, as: UInt8.self)
                        device.deviceExtension(as: Extension.self).lateWrites.add(1, ordering: .releasing)
                    }
                }
            }
            return .success
        }
        driver.majorFunction[.deviceControl] = { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            let code = irp.parameters.deviceIoControl.ioControlCode
            if code == lateWritesCode {
                let out = irp.systemBuffer
                guard irp.parameters.deviceIoControl.outputBufferLength >= 8, let out else {
                    irp.complete(.bufferTooSmall)
                    return .bufferTooSmall
                }
                out.storeBytes(of: UInt64(ext.lateWrites.load(ordering: .acquiring)).littleEndian, as: UInt64.self)
                irp.complete(.success, information: 8)
                return .success
            }
            guard let bug = Bug.allCases.first(where: { $0.code == code }) else {
                irp.complete(.invalidDeviceRequest)
                return .invalidDeviceRequest
            }
            switch bug {
            case .completeTwice:
                irp.complete(.success)
                irp.complete(.unsuccessful)
                return .success
            case .pendingWithoutMark:
                irp.complete(.success)
                return .pending
            case .returnWithoutCompleting:
                ext.kept.withLock { $0.append(irp) }
                return .success
            case .pendForever:
                irp.markPending()
                ext.kept.withLock { $0.append(irp) }
                return .pending
            case .informationTooLarge:
                irp.complete(.success, information: irp.parameters.deviceIoControl.outputBufferLength + 100)
                return .success
            case .completeAfterReuse:
                irp.complete(.success)
                DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { irp.complete(.unsuccessful) }
                return .success
            case .markedButNotPending:
                irp.markPending()
                irp.complete(.success)
                return .success
            case .keepCloses:
                ext.keepCloses.store(true, ordering: .releasing)
                irp.complete(.success)
                return .success
            case .hangOnPower:
                ext.hangOnPower.store(true, ordering: .releasing)
                irp.complete(.success)
                return .success
            case .crash:
                fatalError("Misbehave: IOCTL 0x\(String(code.rawValue, radix: 16)) ends the process, as asked")
            }
        }
        return .success
    }
}

/// A filter that attaches and passes everything down, but copies nothing from
/// the device below: the verifier reports it when the stack is built.
public enum LazyFilter {
    public static let name = "LazyFilter"

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            let d = driver.ioManager.createDevice(driver: driver, deviceType: DeviceType.unknown)
            driver.ioManager.attachDeviceToDeviceStack(d, to: pdo)
            d.flags.remove(.deviceInitializing)
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = Power.filterDispatch
        return .success
    }
}
