// IoctlDemoDriver: `ioctl-demo`, the four IOCTL buffering methods side by side.
// The same exchange (output = input in upper case) is offered through
// METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT and METHOD_NEITHER, so
// the only difference between the four handlers is where each method puts the
// input and the output. Two more codes show RequiredAccess: one needs read
// access, one write access.

import Synchronization
import WDM

public enum IoctlDemoDriver {
    public static let name = "IoctlDemo"

    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800 + method, method, FILE_ANY_ACCESS)`:
    /// 0x00222000, 0x00222005, 0x0022200A, 0x0022200F.
    public static func upperCode(_ method: TransferMethod) -> ControlCode {
        ControlCode(deviceType: DeviceType.unknown, function: 0x800 + method.rawValue, method: method, access: [])
    }
    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x810, METHOD_BUFFERED, FILE_READ_ACCESS)` = 0x00226040:
    /// four little-endian UInt64, the exchanges done per method.
    public static let queryCounts = ControlCode(deviceType: DeviceType.unknown, function: 0x810, method: .buffered, access: .readData)
    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x811, METHOD_BUFFERED, FILE_WRITE_ACCESS)` = 0x0022A044:
    /// sets the counts back to zero.
    public static let resetCounts = ControlCode(deviceType: DeviceType.unknown, function: 0x811, method: .buffered, access: .writeData)

    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x820, METHOD_BUFFERED, FILE_ANY_ACCESS)` = 0x00222080:
    /// the inverted call. The IRP pends until someone sends `signalWaiters`; its
    /// output is then the signaller's input (up to the output length).
    public static let waitForSignal = ControlCode(deviceType: DeviceType.unknown, function: 0x820, method: .buffered, access: [])
    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x821, METHOD_BUFFERED, FILE_ANY_ACCESS)` = 0x00222084:
    /// completes every waiting `waitForSignal` IRP with this IRP's input; Information
    /// (and a 4-byte output, if asked) is how many waiters it released.
    public static let signalWaiters = ControlCode(deviceType: DeviceType.unknown, function: 0x821, method: .buffered, access: [])

    public final class Extension: Sendable {
        /// IRPs waiting for a signal.
        public let waiters = CancelSafeQueue()
        /// Exchanges done per method, indexed by METHOD_* value.
        let buffered = Atomic<UInt64>(0), inDirect = Atomic<UInt64>(0)
        let outDirect = Atomic<UInt64>(0), neither = Atomic<UInt64>(0)

        func count(_ method: TransferMethod) {
            switch method {
            case .buffered: buffered.add(1, ordering: .relaxed)
            case .inDirect: inDirect.add(1, ordering: .relaxed)
            case .outDirect: outDirect.add(1, ordering: .relaxed)
            case .neither: neither.add(1, ordering: .relaxed)
            }
        }

        var counts: [UInt64] {
            [buffered.load(ordering: .relaxed), inDirect.load(ordering: .relaxed),
             outDirect.load(ordering: .relaxed), neither.load(ordering: .relaxed)]
        }

        func reset() {
            buffered.store(0, ordering: .relaxed)
            inDirect.store(0, ordering: .relaxed)
            outDirect.store(0, ordering: .relaxed)
            neither.store(0, ordering: .relaxed)
        }
    }

    /// `DriverEntry`
    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, extension: Extension())
        }
        driver.majorFunction.succeed([.create, .close])
        driver.majorFunction[.pnp] = PnP.functionDispatch(remove: { device in
            device.deviceExtension(as: Extension.self).waiters.completeAll(.noSuchDevice)
        })
        driver.majorFunction[.power] = Power.functionDispatch
        driver.majorFunction[.cleanup] = { device, irp in
            if let file = irp.fileObject { device.deviceExtension(as: Extension.self).waiters.cancelAll(for: file) }
            irp.complete(.success)
            return .success
        }
        driver.majorFunction[.deviceControl] = deviceControl
        return .success
    }

    static let deviceControl: DispatchRoutine = { device, irp in
        let ext = device.deviceExtension(as: Extension.self)
        let p = irp.parameters.deviceIoControl
        let code = p.ioControlCode
        if code == queryCounts {
            guard p.outputBufferLength >= 32, let out = irp.systemBuffer else {
                irp.complete(.bufferTooSmall)
                return .bufferTooSmall
            }
            let counts = ext.counts
            for (i, c) in counts.enumerated() { out.storeBytes(of: c.littleEndian, toByteOffset: i * 8, as: UInt64.self) }
            irp.complete(.success, information: 32)
            return .success
        }
        if code == waitForSignal {
            return ext.waiters.insert(irp)
        }
        if code == signalWaiters {
            let input = irp.systemBuffer.map { UnsafeRawBufferPointer(start: $0, count: p.inputBufferLength) }
            var released = 0
            while let waiter = ext.waiters.removeNext() {
                let wanted = waiter.parameters.deviceIoControl.outputBufferLength
                let n = min(wanted, input?.count ?? 0)
                if n > 0, let out = waiter.systemBuffer, let input { out.copyMemory(from: input.baseAddress!, byteCount: n) }
                waiter.complete(.success, information: n)
                released += 1
            }
            if p.outputBufferLength >= 4, let out = irp.systemBuffer {
                out.storeBytes(of: UInt32(released).littleEndian, as: UInt32.self)
                irp.complete(.success, information: 4)
            } else {
                irp.complete(.success, information: 0)
            }
            return .success
        }
        if code == resetCounts {
            ext.reset()
            irp.complete(.success)
            return .success
        }
        guard code.deviceType == DeviceType.unknown, code.function == 0x800 + code.method.rawValue else {
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        // Where each method puts the caller's buffers.
        let input: UnsafeMutableRawPointer?
        let output: UnsafeMutableRawPointer?
        switch code.method {
        case .buffered:
            input = irp.systemBuffer
            output = irp.systemBuffer
        case .inDirect, .outDirect:
            input = irp.systemBuffer
            output = irp.mdlAddress?.address
        case .neither:
            input = p.type3InputBuffer
            output = irp.userBuffer
        }
        let inLen = p.inputBufferLength, outLen = p.outputBufferLength
        if inLen > 0, outLen == 0 {
            irp.complete(.bufferTooSmall)
            return .bufferTooSmall
        }
        let n = min(inLen, outLen)
        if n > 0, let input, let output { upperCase(from: input, to: output, count: n) }
        ext.count(code.method)
        // Output shorter than the input: the part that fits is valid, as STATUS_BUFFER_OVERFLOW says.
        let status: NTStatus = outLen < inLen ? .bufferOverflow : .success
        irp.complete(status, information: n)
        return status
    }

    /// ASCII upper case, eight bytes at a time. Each word is read before it is
    /// written, so input and output may be the same memory (they are, in the envelope).
    public static func upperCase(from input: UnsafeMutableRawPointer, to output: UnsafeMutableRawPointer, count: Int) {
        var i = 0
        while i + 8 <= count {
            let w = input.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            // 0x80 in each byte that is 'a'...'z': (b + 0x1F) crosses 0x80 from 'a' on,
            // (b + 0x05) crosses it from '{' on; bytes with the top bit set are left alone.
            let low = w & 0x7F7F_7F7F_7F7F_7F7F
            let lower = (low &+ 0x1F1F_1F1F_1F1F_1F1F) & ~(low &+ 0x0505_0505_0505_0505) & ~w & 0x8080_8080_8080_8080
            output.storeBytes(of: w ^ (lower >> 2), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count {
            let b = input.load(fromByteOffset: i, as: UInt8.self)
            output.storeBytes(of: (b >= 0x61 && b <= 0x7A) ? b - 0x20 : b, toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }
}
