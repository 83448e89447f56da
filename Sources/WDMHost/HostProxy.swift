// The daemon's side of a device isolated in a driver host (`isolation: host` in
// a tree file; UMDF's reflector). `\Driver\DriverHost` is the device's function
// driver in the daemon: it starts the host process at START, sends it the
// device's opens, reads, writes, IOCTLs, cancels and closes, and completes each
// IRP when the host answers. The FUSE session, the file objects and the rest of
// the tree stay in the daemon.
//
// A host that crashes (its end of the channel closes) or hangs (a START, a cancel
// or a stop not answered within HostTimeout seconds; it is killed) ends the same
// way: what was in flight completes with STATUS_DRIVER_PROCESS_TERMINATED (EIO),
// the device shows CM_PROB_FAILED_START with that status, and the host is started
// again, up to 5 times (the count starts again after 30 minutes of good
// service, as UMDF's does). Handles opened before a crash fail with that status from then on;
// new opens reach the new host.

import CWDMSys
import Dispatch
import Foundation
import Glibc
import Synchronization
import WDM

public enum HostProxy {
    public static let name = "DriverHost"
    /// UMDF's limits: restarts, and the good service after which the count starts again.
    public static let maxRestarts = 5
    /// Where the proxy waits for a host to exit, starts one again and times its
    /// cancels: a queue of its own, not the global pool, which a daemon whose
    /// global threads are all blocked in waits would leave these to starve.
    static let waits = DispatchQueue(label: "wdmfs.driver-host.proxy", attributes: .concurrent)
    public static let restartWindow: TimeInterval = 30 * 60

    /// How many times a host may be started again: `limit` restarts, and the count
    /// back to 0 once the host served `window` seconds since the last one (UMDF's
    /// policy: 5, and 30 minutes of good service).
    struct RestartBudget {
        let limit: Int, window: TimeInterval
        private(set) var used = 0
        private var last: Date?

        init(limit: Int = HostProxy.maxRestarts, window: TimeInterval = HostProxy.restartWindow) {
            self.limit = limit
            self.window = window
        }

        /// The host ended at `now`: true if it may be started again (counted).
        mutating func allowsRestart(at now: Date) -> Bool {
            if let last, now.timeIntervalSince(last) >= window { used = 0 }
            guard used < limit else { return false }
            used += 1
            last = now
            return true
        }
    }

    /// The command that runs a driver host (its channel on standard input):
    /// wdmfs's own binary with `driver-host`. Tests set it to the built `wdmfs`.
    public static var hostCommand: [String] {
        get { command.withLock { $0 } }
        set { command.withLock { $0 = newValue } }
    }
    private static let command = Mutex<[String]>([URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path, "driver-host"])

    /// Checks a driver package's host executable before each start (its signature):
    /// the reason it may not run, or nil. Set by the daemon; nil runs anything.
    public static var executableCheck: (@Sendable (String) -> String?)? {
        get { check.withLock { $0 } }
        set { check.withLock { $0 = newValue } }
    }
    private static let check = Mutex<(@Sendable (String) -> String?)?>(nil)

    /// What a device's settings name: the driver the host runs, and the deadline.
    public static let settings: [DriverSetting] = [
        DriverSetting.string("HostDriver", default: "", help: "the driver the host runs (set by `isolation: host`)"),
        DriverSetting.string("HostExecutable", maxLength: 4096, default: "", help: "a driver package's host executable (set by `driver_package:`)"),
        DriverSetting.integer("HostTimeout", 1...600, default: 5, help: "seconds a host may take to answer a START, a cancel or a stop before it is killed"),
        DriverSetting.integer("HostSpin", 0...10_000, default: 50, help: "microseconds the daemon and the host spin on an empty ring before they sleep (0: never spin)"),
    ]

    public static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            guard let node = pdo.deviceNode, let real = node.parameters["HostDriver"] else { return .noSuchDevice }
            let link = Connection(driver: real, instance: node.instanceName, settings: node.parameters,
                                  timeout: Double(node.parameters["HostTimeout"].flatMap(Int.init) ?? 5))
            return driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: [.bufferedIO], extension: link)
        }
        driver.majorFunction[.pnp] = PnP.functionDispatch(start: { device, _ in
            let c = device.deviceExtension(as: Connection.self)
            c.device = device
            // The stack's buffers come from the memory the host maps.
            var d: DeviceObject? = device.deviceNode?.pdo
            while let x = d {
                x.stackMemory = c.memory
                d = x.attachedDevice
            }
            device.stackMemory = c.memory
            return c.start()
        }, remove: { device in device.deviceExtension(as: Connection.self).stop() })
        driver.majorFunction[.power] = { device, irp in
            // The host's stack hears of its device's power: before the daemon's stack
            // when it powers down (or is asked), after it when it powers up.
            let c = device.deviceExtension(as: Connection.self)
            guard let minor = irp.powerMinor, minor == .setPower || minor == .queryPower, case .device(let d)? = irp.power?.target else {
                return Power.functionDispatch(device, irp)
            }
            if minor == .queryPower || d != .d0 {
                let status = c.power(minor, d)
                if minor == .queryPower, status.isError {
                    irp.complete(status)
                    return status
                }
                return Power.functionDispatch(device, irp)
            }
            let status = Power.functionDispatch(device, irp)
            _ = c.power(.setPower, .d0)
            return status
        }
        let forward: DispatchRoutine = { device, irp in device.deviceExtension(as: Connection.self).forward(irp) }
        driver.majorFunction.set([.create, .close, .read, .write, .flushBuffers, .deviceControl, .internalDeviceControl], to: forward)
        driver.majorFunction[.cleanup] = { _, irp in
            irp.complete(.success)  // the host's own CLEANUP comes with its close
            return .success
        }
        return .success
    }
}

/// A handle's name in the host, and the host it was opened in.
final class HostHandle: @unchecked Sendable {
    let id: UInt64
    let generation: Int
    init(id: UInt64, generation: Int) {
        self.id = id
        self.generation = generation
    }
}

/// A host process, named by a pidfd: signalled and waited for without the risk of
/// reaching another process that reused its pid once Foundation reaped it.
final class HostProcess: @unchecked Sendable {
    let process: Process
    let pidfd: Int32

    init(_ process: Process) {
        self.process = process
        pidfd = cwdmsys_pidfd_open(process.processIdentifier)
    }
    deinit { if pidfd >= 0 { close(pidfd) } }

    func kill() { if pidfd >= 0 { _ = cwdmsys_pidfd_kill(pidfd, SIGKILL) } }

    /// Waits until the process has ended (true), or `seconds` passed (false).
    func waitForExit(seconds: Double) -> Bool {
        guard pidfd >= 0 else { return true }
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let deadline = nanoseconds() &+ UInt64(seconds * 1e9)
        while true {
            let left = Int64(deadline) - Int64(nanoseconds())
            if left <= 0 { return false }
            let n = poll(&p, 1, Int32(min(left / 1_000_000 + 1, Int64(Int32.max))))
            if n > 0 { return true }
            if n < 0, errno != EINTR { return true }
        }
    }
}

/// Whether this thread is completing answers (`Connection.drain`): a request sent
/// down from a completion routine there does not wait on the ring itself.
private let drainingKey: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
}()

/// One device's host: its process, its channel, the memory both map and what is in flight.
final class Connection: @unchecked Sendable {
    let driver: String
    let instance: String
    let settings: [String: String]
    let timeout: TimeInterval
    /// How long a side spins on an empty ring before it sleeps (µs).
    let spin: Int
    unowned(unsafe) var device: DeviceObject?
    /// Kept across the host's restarts: the stack's read buffers live in it.
    let arena: Arena?
    let memory: ArenaMemory?

    /// A request the host has.
    final class InFlight: @unchecked Sendable {
        let irp: IRP
        let generation: Int
        /// A CREATE: the handle it opens.
        let opens: HostHandle?
        /// A block of the arena the request's data was copied into, because its own
        /// buffer lies elsewhere (a filter's, or a bounce buffer): copied back from
        /// `scratch + outputAt` to `output` when the answer comes.
        var scratch: (block: UnsafeMutableRawPointer, size: Int, outputAt: Int, output: UnsafeMutableRawBufferPointer)?
        let done = Atomic<Bool>(false)
        /// 0: not in the ring yet; 1: in it; 2: cancelled before it got there (the
        /// CANCEL is sent after the request, so the host finds what it cancels).
        let sent = Atomic<UInt8>(0)
        /// The most Information the answer may give (the transfer or output length).
        var limit = 0
        init(irp: IRP, generation: Int, opens: HostHandle?) {
            self.irp = irp
            self.generation = generation
            self.opens = opens
        }
    }
    private struct State: @unchecked Sendable {
        var process: HostProcess?
        var channel: Channel?
        var generation = 0
        var inFlight: [UInt64: InFlight] = [:]
        /// The START in flight, and what the last one answered.
        var starting: (id: UInt64, done: DispatchSemaphore)?
        var startStatus = NTStatus.driverProcessTerminated
        /// The size the host's stack published, as its START answer said.
        var publishedSize: Int64?
        var restarts = HostProxy.RestartBudget()
        var stopping = false
        var failed = false
        var toHost: Doorbell?
        /// Power requests waiting for the host's answer.
        var calls: [UInt64: (done: DispatchSemaphore, status: NTStatus)] = [:]
    }
    private let state = Mutex(State())
    private let nextID = Atomic<UInt64>(1)
    /// The daemon's request producers take turns here (with the number of times the
    /// rings were reset: see `forward`'s watch), its answer consumers there.
    private let producing = Mutex(0)
    private let consuming = Mutex(())

    init(driver: String, instance: String, settings: [String: String], timeout: TimeInterval) {
        self.driver = driver
        self.instance = instance
        self.settings = settings
        self.timeout = timeout
        spin = settings["HostSpin"].flatMap(Int.init) ?? 50
        arena = Arena.create()
        memory = arena.map { ArenaMemory(arena: $0) }
    }

    // MARK: - The process

    /// Starts the host and its device; STATUS_SUCCESS once the host's START succeeded.
    func start() -> NTStatus {
        guard let arena else { return .insufficientResources }
        if let exe = settings["HostExecutable"], let problem = HostProxy.executableCheck?(exe) {
            device?.driverObject.logger.error("\(problem)")
            return .driverProcessTerminated
        }
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { return .insufficientResources }
        guard let toHost = Doorbell.make(), let toDaemon = Doorbell.make() else {
            for fd in fds { close(fd) }
            return .insufficientResources
        }
        // The last host has ended (`ended` waited for it): nobody else writes the rings.
        consuming.withLock { _ in
            producing.withLock { epoch in
                arena.reset()
                arena.daemonWatching.pointee.store(0, ordering: .sequentiallyConsistent)
                epoch += 1
            }
        }
        let p = Process()
        // A driver package's own host executable, or wdmfs's (`driver-host`).
        let command = settings["HostExecutable"].map { [$0] } ?? HostProxy.hostCommand
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        p.standardInput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: false)
        // What the host prints (a crashing driver's message and backtrace) goes to the
        // daemon's log. Swift's backtracer would spend most of a second symbolicating
        // a crash before the process ends and its device can come back: addresses only,
        // unless the daemon's environment asks otherwise.
        var environment = ProcessInfo.processInfo.environment
        if environment["SWIFT_BACKTRACE"] == nil { environment["SWIFT_BACKTRACE"] = "enable=yes,interactive=no,symbolicate=off" }
        p.environment = environment
        let errors = Pipe()
        p.standardError = errors
        do { try p.run() } catch {
            for fd in fds { close(fd) }
            return .driverProcessTerminated
        }
        close(fds[1])
        let host = HostProcess(p)
        let printed = Thread { [instance, weak device] in
            let h = errors.fileHandleForReading
            var pending = Data()
            while true {
                let chunk = h.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 10) {
                    let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                    pending.removeSubrange(pending.startIndex...nl)
                    if !line.isEmpty { device?.driverObject.logger.error("driver host of \(instance): \(line)") }
                }
            }
            if !pending.isEmpty { device?.driverObject.logger.error("driver host of \(instance): \(String(decoding: pending, as: UTF8.self))") }
        }
        printed.name = "wdmfs.host.\(instance).stderr"
        printed.start()
        let channel = Channel(fd: fds[0])
        // The shared memory and the doorbells, then START.
        let sent = [arena.fd, toHost.fd, toDaemon.fd]
        _ = cwdmsys_send_fds(channel.fd, sent, 3)
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let done = DispatchSemaphore(value: 0)
        let generation = state.withLock { s -> Int in
            s.toHost = toHost
            s.process = host
            s.channel = channel
            s.generation += 1
            s.failed = false
            s.starting = (id, done)
            s.startStatus = .driverProcessTerminated
            return s.generation
        }
        let reader = Thread { [self] in read(channel, toDaemon, generation) }
        reader.name = "wdmfs.host.\(instance)"
        reader.start()
        // START: driver NUL instance NUL key=value NUL ...; `length`: the host's spin in µs.
        var text = Array(driver.utf8) + [0] + Array(instance.utf8) + [0]
        for (k, v) in settings.sorted(by: { $0.key < $1.key }) where !k.hasPrefix("Host") && k != "SymbolicLinkName" {
            text += Array("\(k)=\(v)".utf8) + [0]
        }
        var h = RequestHeader(op: .start, id: id, handle: 0)
        h.dataLength = UInt32(text.count)
        h.length = UInt32(spin)
        var bytes = [UInt8](repeating: 0, count: RequestHeader.size)
        bytes.withUnsafeMutableBytes { h.encode(into: $0.baseAddress!) }
        _ = bytes.withUnsafeBytes { hb in text.withUnsafeBytes { channel.send(hb, $0) } }
        if done.wait(timeout: .now() + timeout) == .timedOut {
            // A host that does not answer START in time is hung.
            device?.driverObject.logger.error("driver host of \(instance) did not answer IRP_MN_START_DEVICE within \(Int(timeout)) s: killed")
            host.kill()
            _ = done.wait(timeout: .now() + timeout)
        }
        let (status, size) = state.withLock { ($0.startStatus, $0.publishedSize) }
        // The device's size for `ls -l` and fstat (a disk's, for losetup and fio).
        if status.isSuccess { device?.publishedSize = size }
        return status
    }

    /// REMOVE_DEVICE: the host's channel closes (it removes its device and exits);
    /// one that does not exit in time is killed.
    func stop() {
        let (p, c) = state.withLock { s -> (HostProcess?, Channel?) in
            s.stopping = true
            return (s.process, s.channel)
        }
        c?.shutDown()
        guard let p else { return }
        if !p.waitForExit(seconds: timeout) { p.kill() }
    }

    // MARK: - Answers

    /// The reader of one host: START's answer on the socket, then the answer ring,
    /// sleeping on the doorbell when it is empty, until the socket's end of file.
    private func read(_ channel: Channel, _ bell: Doorbell, _ generation: Int) {
        defer { ended(generation) }
        let header = UnsafeMutableRawPointer.allocate(byteCount: ReplyHeader.size, alignment: 16)
        defer { header.deallocate() }
        guard channel.receive(header, ReplyHeader.size) else { return }
        let r = ReplyHeader.decode(header)
        let starting = state.withLock { s -> DispatchSemaphore? in
            guard let st = s.starting, st.id == r.id else { return nil }
            s.starting = nil
            s.startStatus = r.status
            s.publishedSize = r.information >= 0 ? r.information : nil
            return st.done
        }
        guard let starting else { return }
        starting.signal()
        guard r.status.isSuccess, let arena else { return }
        while true {
            guard drain() else { return kill(generation) }
            arena.daemonSleeping.pointee.store(1, ordering: .sequentiallyConsistent)
            if arena.hasReply {
                arena.daemonSleeping.pointee.store(0, ordering: .sequentiallyConsistent)
                continue
            }
            let alive = bell.wait(orEndOf: channel.fd)
            arena.daemonSleeping.pointee.store(0, ordering: .sequentiallyConsistent)
            guard alive else { return }
        }
    }

    private func kill(_ generation: Int) {
        state.withLock { $0.generation == generation ? $0.process : nil }?.kill()
    }

    /// Completes the answers in the ring (at most `limit`); false if the host broke
    /// the ring.
    @discardableResult
    private func drain(limit: Int = .max) -> Bool {
        guard let arena else { return true }
        let outer = pthread_getspecific(drainingKey) == nil
        if outer { pthread_setspecific(drainingKey, UnsafeRawPointer(bitPattern: 1)) }
        defer { if outer { pthread_setspecific(drainingKey, nil) } }
        var left = limit
        while left > 0 {
            left -= 1
            let next = consuming.withLock { _ in arena.popReply() }
            switch next {
            case .none: return true
            case .broken: return false
            case .reply(let r):
                let (e, call) = state.withLock { s -> (InFlight?, DispatchSemaphore?) in
                    if let e = s.inFlight.removeValue(forKey: r.id) { return (e, nil) }
                    guard s.calls[r.id] != nil else { return (nil, nil) }
                    s.calls[r.id]!.status = r.status
                    return (nil, s.calls[r.id]!.done)
                }
                call?.signal()
                if let e { finish(e, r.status, Int(r.information)) }
            }
        }
        return true
    }

    private func finish(_ e: InFlight, _ status: NTStatus, _ information: Int) {
        let irp = e.irp
        _ = irp.setCancelRoutine(nil)  // a cancel routine left set on completion is a bug (0xC9/0x23C)
        // The host's Information, within what the request allows (a broken host's is
        // not believed past the buffer).
        var info = status.isError ? 0 : min(max(0, information), e.limit)
        if let s = e.scratch {
            let n = min(info, s.output.count)  // a write's scratch has nothing to copy back
            if n > 0, let out = s.output.baseAddress { irp.ioManager.copyBytes(from: s.block + s.outputAt, to: out, count: n) }
            memory?.deallocate(s.block, byteCount: s.size)
        }
        if let opens = e.opens, status.isSuccess { irp.fileObject?.fsContext = opens }
        e.done.store(true, ordering: .releasing)
        irp.complete(status, information: info)
    }

    /// The host of `generation` is gone: fail what was in flight, show the problem,
    /// start it again unless the limit is reached or the device is going.
    private func ended(_ generation: Int) {
        // Gone for good before anything it could still write is given back or reused:
        // a host that closed its end (or whose reader saw a broken ring) may still run.
        if let p = state.withLock({ $0.generation == generation ? $0.process : nil }) {
            p.kill()
            _ = p.waitForExit(seconds: 60)
        }
        let (lost, starting, again) = state.withLock { s -> ([InFlight], DispatchSemaphore?, Bool) in
            guard s.generation == generation else { return ([], nil, false) }
            let lost = Array(s.inFlight.values)
            s.inFlight = [:]
            for (_, c) in s.calls { c.done.signal() }  // their status stays STATUS_DRIVER_PROCESS_TERMINATED
            let st = s.starting?.done
            s.starting = nil
            s.channel = nil
            s.failed = true
            guard !s.stopping, st == nil else { return (lost, st, false) }
            return (lost, nil, s.restarts.allowsRestart(at: Date()))
        }
        starting?.signal()
        // The problem first, then the callers: one told EIO sees the device failed.
        let stopping = state.withLock { $0.stopping }
        let pdo = device?.deviceNode?.pdo
        if let device, let pdo, starting == nil, !stopping {
            device.driverObject.ioManager.setDriverHostProblem(pdo, .driverProcessTerminated)
        }
        for e in lost { finish(e, .driverProcessTerminated, 0) }
        guard let device, let pdo, starting == nil, !stopping else { return }
        let io = device.driverObject.ioManager
        device.driverObject.logger.error("driver host of \(instance) ended: \(again ? "starting it again" : "not starting it again (\(HostProxy.maxRestarts) restarts)")")
        guard again else { return }
        HostProxy.waits.async { [self] in
            if start().isSuccess { io.setDriverHostProblem(pdo, nil) }
        }
    }

    // MARK: - Requests

    /// Puts a request in the ring and rings the host's bell if it sleeps; false if
    /// the host is gone.
    private func push(_ h: RequestHeader, _ generation: Int) -> Bool {
        guard let arena else { return false }
        var fullSince: UInt64?
        while true {
            let (pushed, bell) = producing.withLock { _ -> (Arena.Pushed, Doorbell?) in
                let s = state.withLock { ($0.generation, $0.failed, $0.toHost) }
                guard s.0 == generation, !s.1 else { return (.broken, nil) }
                return (arena.pushRequest(h), s.2)
            }
            guard let bell else { return false }
            switch pushed {
            case .done:
                if arena.hostSleeping.pointee.load(ordering: .sequentiallyConsistent) != 0 { bell.ring() }
                return true
            case .broken:
                device?.driverObject.logger.error("driver host of \(instance) broke its request ring: killed")
                kill(generation)
                return false
            case .full:
                // The host is behind; one that takes no request for HostTimeout is hung.
                let now = nanoseconds()
                if let since = fullSince, now &- since > UInt64(timeout * 1e9) {
                    device?.driverObject.logger.error("driver host of \(instance) took no request within \(Int(timeout)) s: killed")
                    kill(generation)
                    return false
                }
                if fullSince == nil { fullSince = now }
                // The host may be waiting for room for its answers: take them.
                if arena.hasReply, !drain(limit: Int(Arena.entries)) { kill(generation) }
                sched_yield()
            }
        }
    }

    /// Where a request's buffer is in the arena (in place, or a scratch block the
    /// data is copied into): the offset, the capacity, and the scratch if any.
    /// `outputIn`: the output region holds data for the driver too (the direct
    /// methods' MDL: METHOD_IN_DIRECT's is the caller's data).
    private func place(_ entry: InFlight, base: UnsafeMutableRawPointer?, capacity: Int, input: UnsafeRawBufferPointer,
                       outputAt: Int, output: UnsafeMutableRawBufferPointer, inPlace: Bool, outputIn: Bool = false) -> (UInt64, Int)? {
        guard capacity > 0 else { return (0, 0) }
        if inPlace, let o = arena?.offset(of: base, count: capacity) { return (o, capacity) }
        guard let memory, let arena, let block = memory.allocate(byteCount: capacity, zeroed: true) else { return nil }
        if input.count > 0, let i = input.baseAddress { entry.irp.ioManager.copyBytes(from: i, to: block, count: input.count) }
        if outputIn, output.count > 0, let o = output.baseAddress { entry.irp.ioManager.copyBytes(from: o, to: block + outputAt, count: output.count) }
        entry.scratch = (block, capacity, outputAt, output)
        return (UInt64(block - arena.base), capacity)
    }

    func forward(_ irp: IRP) -> NTStatus {
        let major = irp.majorFunction
        let handle = irp.fileObject?.fsContext as? HostHandle
        let (alive, generation) = state.withLock { (!$0.failed && $0.channel != nil, $0.generation) }
        if major == .close, handle == nil || handle?.generation != generation {
            irp.complete(.success)  // nothing of it is left in a host
            return .success
        }
        guard alive, major == .create || handle?.generation == generation else {
            irp.complete(.driverProcessTerminated)
            return .driverProcessTerminated
        }
        // Pended first: memory the IRP borrows moves into the arena (the stack's memory) here.
        irp.markPending()
        let id = nextID.add(1, ordering: .relaxed).oldValue
        var h = RequestHeader(op: .io, id: id, handle: handle?.id ?? 0)
        h.major = major.rawValue
        var opens: HostHandle?
        if major == .create { opens = HostHandle(id: id, generation: generation) }
        let entry = InFlight(irp: irp, generation: generation, opens: opens)
        let placed: (UInt64, Int)?
        switch major {
        case .create:
            h = RequestHeader(op: .open, id: id, handle: id)
            h.length = irp.fileObject?.grantedAccess.rawValue ?? 0
            placed = (0, 0)
        case .close:
            h = RequestHeader(op: .close, id: id, handle: handle!.id)
            placed = (0, 0)
        case .flushBuffers:
            placed = (0, 0)  // fsync: the host's driver writes back what it buffers
        case .read:
            h.length = UInt32(irp.parameters.read.length)
            entry.limit = Int(h.length)
            h.offset = irp.parameters.read.byteOffset
            let b = irp.transferBuffer
            placed = place(entry, base: b.baseAddress, capacity: b.count, input: UnsafeRawBufferPointer(start: nil, count: 0),
                           outputAt: 0, output: b, inPlace: true)
        case .write:
            h.length = UInt32(irp.parameters.write.length)
            entry.limit = Int(h.length)
            h.offset = irp.parameters.write.byteOffset
            let b = irp.transferBuffer
            placed = place(entry, base: b.baseAddress, capacity: b.count, input: UnsafeRawBufferPointer(b),
                           outputAt: 0, output: UnsafeMutableRawBufferPointer(start: nil, count: 0), inPlace: true)
        default:
            let p = irp.parameters.deviceIoControl
            h.code = p.ioControlCode.rawValue
            h.inputLength = UInt32(p.inputBufferLength)
            h.outputLength = UInt32(p.outputBufferLength)
            entry.limit = p.outputBufferLength
            let input = irp.deviceControlInput, output = irp.deviceControlOutput
            let direct = p.ioControlCode.method == .inDirect || p.ioControlCode.method == .outDirect
            let capacity = direct ? DirectLayout.capacity(inputLength: input.count, outputLength: output.count) : max(input.count, output.count)
            let outputAt = direct ? DirectLayout.outputOffset(inputLength: input.count) : 0
            // In place when the buffers lie in the arena the way the host lays them out.
            let base = UnsafeMutableRawPointer(mutating: input.baseAddress) ?? output.baseAddress.map { $0 - outputAt }
            let laidOut = (input.count == 0 || input.baseAddress == UnsafeRawPointer(base))
                && (output.count == 0 || output.baseAddress == base.map { $0 + outputAt })
            placed = place(entry, base: base, capacity: capacity, input: input, outputAt: outputAt, output: output,
                           inPlace: laidOut, outputIn: direct)
        }
        guard let (offset, capacity) = placed else {
            irp.complete(.insufficientResources)
            return .pending
        }
        h.data = offset
        h.capacity = UInt32(capacity)
        // A cancel goes to the host (after the request: `cancel`); a host that does not
        // answer it in time is hung. One that came before the routine was set is seen here.
        if major != .create, major != .close {
            let set = irp.setCancelRoutineUnlessCancelled { [weak self, weak entry] _, _ in
                if let self, let entry { self.cancel(entry, id, generation) }
            }
            guard set else {
                finish(entry, .cancelled, 0)
                return .pending
            }
        }
        state.withLock { $0.inFlight[id] = entry }
        guard push(h, generation) else {
            if let e = state.withLock({ $0.inFlight.removeValue(forKey: id) }) { finish(e, .driverProcessTerminated, 0) }
            return .pending
        }
        // Cancelled while it was on its way: the CANCEL follows it now.
        if !entry.sent.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged {
            sendCancel(id, generation)
        }
        // Most answers come within microseconds: wait for this one on the ring
        // (completing whatever else arrives) before leaving it to the reader.
        // Not on a thread that is completing answers already (a completion routine
        // there that sent this): that thread takes this answer too when it comes.
        if spin > 0, let arena, pthread_getspecific(drainingKey) == nil {
            // Counted as watching in this reset of the rings only (a restart resets the
            // count: a count left by a thread of the last host would silence the bell).
            let epoch = producing.withLock { e -> Int in
                arena.daemonWatching.pointee.add(1, ordering: .sequentiallyConsistent)
                return e
            }
            let deadline = nanoseconds() &+ UInt64(spin) * 1000
            var turns = 0
            while !entry.done.load(ordering: .acquiring), nanoseconds() < deadline {
                if arena.hasReply {
                    if !drain(limit: Int(Arena.entries)) {
                        kill(generation)
                        break
                    }
                    continue
                }
                // Mostly a busy wait (a yield costs a system call); now and then a yield,
                // so a thread that shares this core runs.
                turns += 1
                if turns & 63 == 0 { sched_yield() }
            }
            producing.withLock { e in
                if e == epoch { arena.daemonWatching.pointee.subtract(1, ordering: .sequentiallyConsistent) }
            }
            // An answer the host put in as this thread stopped watching (it saw a
            // watcher and rang no bell): a sequentially consistent look, then take it.
            if arena.hasReply, !drain(limit: Int(Arena.entries)) { kill(generation) }
        }
        return .pending
    }

    /// Sends a device power IRP to the host's stack and waits for its answer; a host
    /// that does not answer within the deadline is hung and killed. A host that is
    /// gone has nothing to power: SET_POWER succeeds (it may not fail), QUERY_POWER too.
    func power(_ minor: PowerMinor, _ d: DevicePowerState) -> NTStatus {
        let (alive, generation) = state.withLock { (!$0.failed && $0.channel != nil, $0.generation) }
        guard alive else { return .success }
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let done = DispatchSemaphore(value: 0)
        state.withLock { $0.calls[id] = (done, .driverProcessTerminated) }
        var h = RequestHeader(op: .power, id: id, handle: 0)
        h.code = UInt32(minor.rawValue)
        h.length = d.rawValue
        if push(h, generation), done.wait(timeout: .now() + timeout) == .timedOut {
            device?.driverObject.logger.error("driver host of \(instance) did not answer \(minor.wdmName) \(d) within \(Int(timeout)) s: killed")
            kill(generation)
        }
        let status = state.withLock { $0.calls.removeValue(forKey: id)?.status } ?? .driverProcessTerminated
        return status == .driverProcessTerminated ? .success : status
    }

    /// The IRP's cancel routine: the CANCEL goes to the host once the request is in
    /// the ring (before, `forward` sends it when it has put the request there).
    private func cancel(_ entry: InFlight, _ id: UInt64, _ generation: Int) {
        guard entry.sent.compareExchange(expected: 0, desired: 2, ordering: .acquiringAndReleasing).original == 1 else { return }
        sendCancel(id, generation)
    }

    private func sendCancel(_ id: UInt64, _ generation: Int) {
        guard push(RequestHeader(op: .cancel, id: nextID.add(1, ordering: .relaxed).oldValue, handle: id), generation) else { return }
        HostProxy.waits.asyncAfter(deadline: .now() + timeout) { [weak self] in
            guard let self, state.withLock({ $0.inFlight[id] != nil }) else { return }
            device?.driverObject.logger.error("driver host of \(instance) did not answer a cancel within \(Int(timeout)) s: killed")
            kill(generation)
        }
    }
}
