// The driver host: a process of its own that runs one device's stack (UMDF's
// WUDFHost). The daemon starts it with the channel as its standard input, sends
// START (the driver, the device's name and settings), then the handles' opens,
// I/O, cancels and closes; the host runs each through its own I/O manager and
// answers. If it crashes or hangs, only it goes: the daemon fails what was in
// flight and starts it again.

import Dispatch
import Glibc
import Synchronization
import WDM

public enum DriverHost {
    /// The `main` of a driver package's host executable: serves the daemon on
    /// standard input with `drivers` (by name, as a tree file's `driver:` names
    /// them) and exits when the daemon closes the channel.
    ///
    ///     DriverHost.main(drivers: ["Hello": Hello.driverEntry])
    public static func main(drivers: [String: DriverEntry]) -> Never {
        exit(run(fd: 0) { drivers[$0] })
    }

    /// Serves the channel on `fd` until the daemon closes it; returns the exit status.
    /// `resolve` gives the entry of a driver by name (the host's own catalog).
    public static func run(fd: Int32, resolve: @escaping (String) -> DriverEntry?) -> Int32 {
        let host = Host(channel: Channel(fd: fd), resolve: resolve)
        return host.serve()
    }
}

final class Host: @unchecked Sendable {
    let channel: Channel
    let resolve: (String) -> DriverEntry?
    let io = IOManager()
    var instance = ""
    let files = Mutex<[UInt64: FileObject]>([:])
    let inFlight = Mutex<[UInt64: HostRequest]>([:])
    let work = DispatchQueue(label: "wdmfs.driver-host.io", attributes: .concurrent)

    init(channel: Channel, resolve: @escaping (String) -> DriverEntry?) {
        self.channel = channel
        self.resolve = resolve
    }

    func reply(_ id: UInt64, _ status: NTStatus, information: Int = 0, data: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        var h = [UInt8](repeating: 0, count: ReplyHeader.size)
        h.withUnsafeMutableBytes { ReplyHeader(id: id, status: status, information: Int64(information), dataLength: UInt32(data.count)).encode(into: $0.baseAddress!) }
        h.withUnsafeBytes { _ = channel.send($0, data) }
    }

    func serve() -> Int32 {
        let header = UnsafeMutableRawPointer.allocate(byteCount: RequestHeader.size, alignment: 16)
        defer { header.deallocate() }
        while channel.receive(header, RequestHeader.size) {
            guard let h = RequestHeader.decode(header) else { return 2 }
            switch h.op {
            case .start:
                var text = [UInt8](repeating: 0, count: Int(h.dataLength))
                guard text.withUnsafeMutableBytes({ channel.receive($0.baseAddress, $0.count) }) else { return 1 }
                reply(h.id, start(text))
            case .open:
                let id = h.id, handle = h.handle, access = AccessMask(rawValue: h.length)
                work.async { [self] in
                    do throws(NTStatus) {
                        let f = try io.open(instance, access: access)
                        files.withLock { $0[handle] = f }
                        reply(id, .success)
                    } catch {
                        reply(id, error)
                    }
                }
            case .io:
                let r = HostRequest(self, h)
                guard r.buffer == nil || channel.receive(r.buffer, Int(h.dataLength)) else { return 1 }
                guard let file = files.withLock({ $0[h.handle] }) else {
                    reply(h.id, .invalidHandle)
                    continue
                }
                inFlight.withLock { $0[h.id] = r }
                // Sent from this thread: a driver that pends returns at once, and a thread
                // hop per request would double the cost of isolation.
                _ = io.send(r.hostRequest(), on: file, requester: r)
            case .cancel:
                _ = inFlight.withLock { $0[h.id] }?.cancel()
            case .close:
                let id = h.id
                guard let f = files.withLock({ $0.removeValue(forKey: h.handle) }) else {
                    reply(id, .invalidHandle)
                    continue
                }
                work.async { [self] in
                    io.close(f)
                    reply(id, .success)
                }
            }
        }
        // The daemon closed the channel: the device goes.
        for n in io.deviceNodes { _ = io.remove(n) }
        return 0
    }

    /// START: `driver NUL instance NUL key=value NUL ...`.
    func start(_ text: [UInt8]) -> NTStatus {
        let parts = text.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard parts.count >= 2, let entry = resolve(parts[0]) else { return .noSuchDevice }
        instance = parts[1]
        var settings: [String: String] = [:]
        for kv in parts.dropFirst(2) where !kv.isEmpty {
            guard let eq = kv.firstIndex(of: "=") else { continue }
            settings[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
        }
        settings["SymbolicLinkName"] = instance
        do throws(NTStatus) {
            let driver = try io.loadDriver(name: parts[0], entry: entry)
            try io.addRootDevice(instanceName: instance, hardwareIDs: ["Root\\\\" + parts[0]], parameters: settings, functionDriver: driver)
            io.waitForPnP()
            return io.device(forLink: instance) == nil ? .noSuchDevice : .success
        } catch {
            return error
        }
    }
}

/// One request the host runs: its buffer (the data the daemon sent, room for the
/// answer), and what to send back when it completes.
final class HostRequest: IRPRequester, @unchecked Sendable {
    unowned let host: Host
    let header: RequestHeader
    let buffer: UnsafeMutableRawPointer?
    let capacity: Int
    let outputAt: Int
    /// The IRP while it pends, and whether a cancel came before it did.
    private let irp = Mutex<(irp: IRP?, cancelAsked: Bool)>((nil, false))

    init(_ host: Host, _ h: RequestHeader) {
        self.host = host
        header = h
        let major = MajorFunction(rawValue: h.major)
        switch major {
        case .deviceControl?, .internalDeviceControl?:
            let method = ControlCode(rawValue: h.code).method
            let direct = method == .inDirect || method == .outDirect
            let (i, o) = (Int(h.inputLength), Int(h.outputLength))
            capacity = direct ? DirectLayout.capacity(inputLength: i, outputLength: o) : max(i, o)
            outputAt = direct ? DirectLayout.outputOffset(inputLength: i) : 0
        default:
            capacity = Int(h.length)
            outputAt = 0
        }
        buffer = capacity > 0 ? .allocate(byteCount: capacity, alignment: 16) : nil
        buffer?.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
    }

    deinit { buffer?.deallocate() }

    func hostRequest() -> IORequest {
        let h = header
        switch MajorFunction(rawValue: h.major) {
        case .read?: return .read(buffer: buffer ?? UnsafeMutableRawPointer(bitPattern: 8)!, length: Int(h.length), offset: h.offset)
        case .write?: return .write(buffer: buffer ?? UnsafeMutableRawPointer(bitPattern: 8)!, length: Int(h.length), offset: h.offset, borrowedFrom: nil)
        default:
            return .deviceControl(code: ControlCode(rawValue: h.code), buffer: buffer, capacity: capacity,
                                  inputLength: Int(h.inputLength), outputLength: Int(h.outputLength), borrowedFrom: nil)
        }
    }

    func cancel() -> Bool {
        let pending = irp.withLock { s -> IRP? in
            if s.irp == nil { s.cancelAsked = true }
            return s.irp
        }
        return pending?.cancelIrp(reportingStale: false) ?? false
    }

    func irpPending(_ irp: IRP) {
        let asked = self.irp.withLock { s -> Bool in
            s.irp = irp
            return s.cancelAsked
        }
        if asked { _ = irp.cancelIrp(reportingStale: false) }
    }

    func irpCompleted(_ irp: IRP) {
        self.irp.withLock { $0.irp = nil }
        let status = irp.ioStatus.status, info = irp.ioStatus.information
        let major = MajorFunction(rawValue: header.major)
        let returnsData = major == .read || major == .deviceControl || major == .internalDeviceControl
        let limit = major == .read ? Int(header.length) : Int(header.outputLength)
        let n = returnsData && !status.isError ? max(0, min(info, limit)) : 0
        let base = (irp.hostBuffer ?? buffer).map { $0 + outputAt }
        _ = host.inFlight.withLock { $0.removeValue(forKey: header.id) }
        host.reply(header.id, status, information: info, data: UnsafeRawBufferPointer(start: base, count: n))
    }
}
