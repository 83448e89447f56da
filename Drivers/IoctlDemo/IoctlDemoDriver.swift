// IoctlDemoDriver: `ioctl-demo`, the four IOCTL buffering methods side by side.
// The same exchange (output = input in upper case) is offered through
// METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT and METHOD_NEITHER, so
// the only difference between the four handlers is where each method puts the
// input and the output. Two more codes show RequiredAccess: one needs read
// access, one write access. Written on the framework: the request finds each
// method's buffers, and the waiting IOCTLs of the inverted call wait in a
// manual queue.

import Synchronization
import WDF

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

    final class Counts: Sendable {
        /// IOCTLs waiting for a signal (a manual queue: cancelled with their handle, purged when the device goes).
        let waiters: Queue
        /// Exchanges done per method.
        let buffered = Atomic<UInt64>(0), inDirect = Atomic<UInt64>(0), outDirect = Atomic<UInt64>(0), neither = Atomic<UInt64>(0)
        init(waiters: Queue) { self.waiters = waiters }

        /// `f` on the counter of `method`.
        func counter<R>(_ method: TransferMethod, _ f: (borrowing Atomic<UInt64>) -> R) -> R {
            switch method {
            case .buffered: f(buffered)
            case .inDirect: f(inDirect)
            case .outDirect: f(outDirect)
            case .neither: f(neither)
            }
        }
    }

    /// `DriverEntry`
    public static let driverEntry = Framework.functionDriver(flags: []) { (device: Device<Counts>) in
        // Not power-managed: a signal being answered while the device goes to sleep still finds its waiters.
        let waiters = device.manualQueue(powerManaged: false)
        // Unplugged, a waiter hears the device is gone (at a remove the framework cancels them, as KMDF does).
        device.onSurpriseRemoval { _ in waiters.purge(.noSuchDevice) }
        device.queue(.parallel(), for: [.deviceControl]) { device, request in deviceControl(device.context, request) }
        return Counts(waiters: waiters)
    }

    static func deviceControl(_ counts: Counts, _ request: consuming Request) {
        guard let code = request.ioControlCode else { return request.complete(.invalidDeviceRequest) }
        switch code {
        case queryCounts:
            guard let out = try? request.output(minimumLength: 32) else { return request.complete(.bufferTooSmall) }
            for m in TransferMethod.allCases {
                out.storeBytes(of: counts.counter(m) { $0.load(ordering: .relaxed) }.littleEndian, toByteOffset: Int(m.rawValue) * 8, as: UInt64.self)
            }
            request.complete(.success, information: 32)
        case resetCounts:
            for m in TransferMethod.allCases { counts.counter(m) { $0.store(0, ordering: .relaxed) } }
            request.complete(.success)
        case waitForSignal:
            request.forward(to: counts.waiters)
        case signalWaiters:
            let input = (try? request.input()) ?? UnsafeRawBufferPointer(start: nil, count: 0)
            var released: UInt32 = 0
            while let waiter = counts.waiters.next() {
                let out = (try? waiter.output()) ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
                let n = min(out.count, input.count)
                if n > 0 { out.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: n) }
                waiter.complete(.success, information: n)
                released += 1
            }
            guard let out = try? request.output(minimumLength: 4) else { return request.complete(.success) }
            out.storeBytes(of: released.littleEndian, as: UInt32.self)
            request.complete(.success, information: 4)
        default:
            // The four methods' exchange: the request knows where each put the buffers.
            guard code.deviceType == DeviceType.unknown, code.function == 0x800 + code.method.rawValue,
                  let input = try? request.input(), let output = try? request.output()
            else { return request.complete(.invalidDeviceRequest) }
            if input.count > 0, output.count == 0 { return request.complete(.bufferTooSmall) }
            let n = min(input.count, output.count)
            if n > 0 { upperCase(from: input.baseAddress!, to: output.baseAddress!, count: n) }
            counts.counter(code.method) { _ = $0.add(1, ordering: .relaxed) }
            // Output shorter than the input: the part that fits is valid, as STATUS_BUFFER_OVERFLOW says.
            request.complete(output.count < input.count ? .bufferOverflow : .success, information: n)
        }
    }

    /// ASCII upper case, eight bytes at a time. Each word is read before it is
    /// written, so input and output may be the same memory (they are, in the envelope).
    public static func upperCase(from input: UnsafeRawPointer, to output: UnsafeMutableRawPointer, count: Int) {
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
