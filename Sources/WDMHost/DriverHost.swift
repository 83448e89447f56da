// The driver host: a process of its own that runs one device's stack (UMDF's
// WUDFHost). The daemon starts it with the channel as its standard input, sends
// START (the driver, the device's name and settings), then the handles' opens,
// I/O, cancels and closes; the host runs each through its own I/O manager and
// answers. If it crashes or hangs, only it goes: the daemon fails what was in
// flight and starts it again.

import CWDMSys
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
    /// Set up before START: the shared memory and the two doorbells.
    var arena: Arena!
    var toHost = Doorbell(fd: -1), toDaemon = Doorbell(fd: -1)
    /// How long the reader spins on an empty ring before it sleeps (ns).
    var spin: UInt64 = 50_000
    /// The host's answer producers take turns here.
    private let replies = Mutex(())

    init(channel: Channel, resolve: @escaping (String) -> DriverEntry?) {
        self.channel = channel
        self.resolve = resolve
    }

    /// Answers request `id` in its ring (its data is already in place); rings the
    /// daemon's bell only when no daemon thread watches the ring.
    func reply(_ id: UInt64, _ status: NTStatus, information: Int = 0) {
        let r = ReplyHeader(id: id, status: status, information: Int64(information), dataLength: 0)
        while !replies.withLock({ _ in arena.pushReply(r) }) {
            // Full: the daemon is behind (or gone: then this process is about to end).
            sched_yield()
        }
        if arena.daemonWatching.pointee.load(ordering: .sequentiallyConsistent) == 0,
           arena.daemonSleeping.pointee.load(ordering: .sequentiallyConsistent) != 0 {
            toDaemon.ring()
        }
    }

    func serve() -> Int32 {
        var fds: [Int32] = [-1, -1, -1]
        guard cwdmsys_receive_fds(channel.fd, &fds, 3) == 3, let a = Arena(fd: fds[0]) else { return 1 }
        arena = a
        toHost = Doorbell(fd: fds[1])
        toDaemon = Doorbell(fd: fds[2])
        // START, over the socket.
        let header = UnsafeMutableRawPointer.allocate(byteCount: RequestHeader.size, alignment: 16)
        defer { header.deallocate() }
        guard channel.receive(header, RequestHeader.size), let h = RequestHeader.decode(header), h.op == .start else { return 2 }
        var text = [UInt8](repeating: 0, count: Int(h.dataLength))
        guard text.withUnsafeMutableBytes({ channel.receive($0.baseAddress, $0.count) }) else { return 1 }
        spin = UInt64(h.length) * 1000
        let status = start(text)
        // START's answer carries the size the stack publishes (what `ls -l` shows), or -1.
        var size: Int64 = -1
        var d = io.device(forLink: instance)?.topOfStack
        while let x = d, status.isSuccess {
            if let s = x.publishedSize {
                size = s
                break
            }
            d = x.lowerDevice
        }
        var r = [UInt8](repeating: 0, count: ReplyHeader.size)
        r.withUnsafeMutableBytes { ReplyHeader(id: h.id, status: status, information: size, dataLength: 0).encode(into: $0.baseAddress!) }
        guard r.withUnsafeBytes({ channel.send($0, UnsafeRawBufferPointer(start: nil, count: 0)) }) else { return 1 }
        // Then the ring, until the daemon closes the socket.
        var idleSince = nanoseconds()
        var turns = 0
        while true {
            switch arena.popRequest() {
            case .some(let h?):
                handle(h)
                idleSince = nanoseconds()
                continue
            case .some(nil):
                return 2
            case .none:
                break
            }
            if nanoseconds() &- idleSince < spin {
                turns += 1
                if turns & 63 == 0 { sched_yield() }  // mostly busy: see the daemon's wait
                continue
            }
            arena.hostSleeping.pointee.store(1, ordering: .sequentiallyConsistent)
            if arena.hasRequest {
                arena.hostSleeping.pointee.store(0, ordering: .sequentiallyConsistent)
                continue
            }
            let alive = toHost.wait(orEndOf: channel.fd)
            arena.hostSleeping.pointee.store(0, ordering: .sequentiallyConsistent)
            guard alive else { break }
            idleSince = nanoseconds()
        }
        // The daemon closed the channel: the device goes.
        for n in io.deviceNodes { _ = io.remove(n) }
        return 0
    }

    private func handle(_ h: RequestHeader) {
        switch h.op {
        case .start:
            reply(h.id, .invalidDeviceRequest)
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
            guard let r = HostRequest(self, h) else {
                reply(h.id, .invalidParameter)
                return
            }
            guard let file = files.withLock({ $0[h.handle] }) else {
                reply(h.id, .invalidHandle)
                return
            }
            inFlight.withLock { $0[h.id] = r }
            // Sent from this thread: a driver that pends returns at once, and a thread
            // hop per request would double the cost of isolation.
            _ = io.send(r.hostRequest(), on: file, requester: r)
        case .cancel:
            _ = inFlight.withLock { $0[h.handle] }?.cancel()
        case .power:
            // PoRequestPowerIrp to the top of the host's stack; answered when it completes.
            let id = h.id
            guard let minor = PowerMinor(rawValue: UInt8(truncatingIfNeeded: h.code)), minor == .setPower || minor == .queryPower,
                  let state = DevicePowerState(rawValue: h.length), let device = io.device(forLink: instance) else {
                reply(id, .invalidParameter)
                return
            }
            io.requestDevicePower(device, minor, state) { [self] status in reply(id, status) }
        case .close:
            let id = h.id
            guard let f = files.withLock({ $0.removeValue(forKey: h.handle) }) else {
                reply(id, .invalidHandle)
                return
            }
            work.async { [self] in
                io.close(f)
                reply(id, .success)
            }
        }
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

/// One request the host runs: its buffer (in the shared memory, where the daemon
/// put the data and the answer is read from), and what to send back when it
/// completes.
final class HostRequest: IRPRequester, @unchecked Sendable {
    unowned let host: Host
    let header: RequestHeader
    let buffer: UnsafeMutableRawPointer?
    let capacity: Int
    /// The IRP while it pends, and whether a cancel came before it did.
    private let irp = Mutex<(irp: IRP?, cancelAsked: Bool)>((nil, false))

    /// nil when the header names memory outside the heap or too little of it.
    init?(_ host: Host, _ h: RequestHeader) {
        self.host = host
        header = h
        let major = MajorFunction(rawValue: h.major)
        let needed: Int
        switch major {
        case .deviceControl?, .internalDeviceControl?:
            let method = ControlCode(rawValue: h.code).method
            let direct = method == .inDirect || method == .outDirect
            let (i, o) = (Int(h.inputLength), Int(h.outputLength))
            needed = direct ? DirectLayout.capacity(inputLength: i, outputLength: o) : max(i, o)
        case .read?, .write?:
            needed = Int(h.length)
        case .flushBuffers?:
            needed = 0
        default:
            return nil
        }
        capacity = Int(h.capacity)
        guard capacity >= needed else { return nil }
        if capacity == 0 {
            buffer = nil
        } else {
            guard host.arena.isHeap(h.data, capacity) else { return nil }
            buffer = host.arena.base + Int(h.data)
        }
    }

    func hostRequest() -> IORequest {
        let h = header
        switch MajorFunction(rawValue: h.major) {
        case .read?: return .read(buffer: buffer ?? UnsafeMutableRawPointer(bitPattern: 8)!, length: Int(h.length), offset: h.offset)
        case .write?: return .write(buffer: buffer ?? UnsafeMutableRawPointer(bitPattern: 8)!, length: Int(h.length), offset: h.offset, borrowedFrom: nil)
        case .flushBuffers?: return .flush
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
        _ = host.inFlight.withLock { $0.removeValue(forKey: header.id) }
        // The data is where the driver wrote it: the shared buffer.
        host.reply(header.id, status, information: info)
    }
}
