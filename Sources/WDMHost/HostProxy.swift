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
// again, up to 5 times (the count forgets restarts older than 30 minutes, as
// UMDF's does). Handles opened before a crash fail with that status from then on;
// new opens reach the new host.

import Dispatch
import Foundation
import Glibc
import Synchronization
import WDM

public enum HostProxy {
    public static let name = "DriverHost"
    /// UMDF's limits: restarts, and the window after which one is forgotten.
    public static let maxRestarts = 5
    /// Where the proxy waits for a host to exit, starts one again and times its
    /// cancels: a queue of its own, not the global pool, which a daemon whose
    /// global threads are all blocked in waits would leave these to starve.
    static let waits = DispatchQueue(label: "wdmfs.driver-host.proxy", attributes: .concurrent)
    public static let restartWindow: TimeInterval = 30 * 60

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
            return c.start()
        }, remove: { device in device.deviceExtension(as: Connection.self).stop() })
        driver.majorFunction[.power] = Power.functionDispatch
        let forward: DispatchRoutine = { device, irp in device.deviceExtension(as: Connection.self).forward(irp) }
        driver.majorFunction.set([.create, .close, .read, .write, .deviceControl, .internalDeviceControl], to: forward)
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

/// One device's host: its process, its channel and what is in flight.
final class Connection: @unchecked Sendable {
    let driver: String
    let instance: String
    let settings: [String: String]
    let timeout: TimeInterval
    unowned(unsafe) var device: DeviceObject?

    struct InFlight: @unchecked Sendable {
        let irp: IRP
        /// Where a read's answer goes (the caller's buffer, which a pending read keeps).
        let output: UnsafeMutableRawBufferPointer
        /// An IOCTL: its output is found when the answer comes (the I/O manager moved
        /// its borrowed buffers when it pended).
        let deviceControl: Bool
        let generation: Int
        /// A CREATE: the handle it opens.
        let opens: HostHandle?
    }
    private struct State: @unchecked Sendable {
        var process: Process?
        var channel: Channel?
        var generation = 0
        var inFlight: [UInt64: InFlight] = [:]
        /// The START in flight, and what the last one answered.
        var starting: (id: UInt64, done: DispatchSemaphore)?
        var startStatus = NTStatus.driverProcessTerminated
        var restarts: [Date] = []
        var stopping = false
        var failed = false
    }
    private let state = Mutex(State())
    private let nextID = Atomic<UInt64>(1)

    init(driver: String, instance: String, settings: [String: String], timeout: TimeInterval) {
        self.driver = driver
        self.instance = instance
        self.settings = settings
        self.timeout = timeout
    }

    // MARK: - The process

    /// Starts the host and its device; STATUS_SUCCESS once the host's START succeeded.
    func start() -> NTStatus {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { return .insufficientResources }
        if let exe = settings["HostExecutable"], let problem = HostProxy.executableCheck?(exe) {
            device?.driverObject.logger.error("\(problem)")
            return .driverProcessTerminated
        }
        let p = Process()
        // A driver package's own host executable, or wdmfs's (`driver-host`).
        let command = settings["HostExecutable"].map { [$0] } ?? HostProxy.hostCommand
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        p.standardInput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: false)
        do { try p.run() } catch {
            close(fds[0]); close(fds[1])
            return .driverProcessTerminated
        }
        close(fds[1])
        let channel = Channel(fd: fds[0])
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let done = DispatchSemaphore(value: 0)
        let generation = state.withLock { s -> Int in
            s.process = p
            s.channel = channel
            s.generation += 1
            s.failed = false
            s.starting = (id, done)
            s.startStatus = .driverProcessTerminated
            return s.generation
        }
        let reader = Thread { [self] in read(channel, generation) }
        reader.name = "wdmfs.host.\(instance)"
        reader.start()
        // START: driver NUL instance NUL key=value NUL ...
        var text = Array(driver.utf8) + [0] + Array(instance.utf8) + [0]
        for (k, v) in settings.sorted(by: { $0.key < $1.key }) where !k.hasPrefix("Host") && k != "SymbolicLinkName" {
            text += Array("\(k)=\(v)".utf8) + [0]
        }
        var h = RequestHeader(op: .start, id: id, handle: 0)
        h.dataLength = UInt32(text.count)
        _ = sendFrame(channel, h, text.withUnsafeBytes { UnsafeRawBufferPointer(start: $0.baseAddress, count: $0.count) }, keep: text)
        if done.wait(timeout: .now() + timeout) == .timedOut {
            kill(p)  // a host that does not answer START in time is hung
            _ = done.wait(timeout: .now() + timeout)
        }
        return state.withLock { $0.startStatus }
    }

    private func sendFrame(_ channel: Channel, _ h: RequestHeader, _ data: UnsafeRawBufferPointer, keep: [UInt8] = []) -> Bool {
        var bytes = [UInt8](repeating: 0, count: RequestHeader.size)
        bytes.withUnsafeMutableBytes { h.encode(into: $0.baseAddress!) }
        return withExtendedLifetime(keep) { bytes.withUnsafeBytes { channel.send($0, data) } }
    }

    private func kill(_ p: Process) {
        if p.isRunning { Glibc.kill(p.processIdentifier, SIGKILL) }
    }

    /// REMOVE_DEVICE: the host's channel closes (it removes its device and exits);
    /// one that does not exit in time is killed.
    func stop() {
        let (p, c) = state.withLock { s -> (Process?, Channel?) in
            s.stopping = true
            return (s.process, s.channel)
        }
        c?.shutDown()
        guard let p else { return }
        let exited = DispatchSemaphore(value: 0)
        HostProxy.waits.async {
            p.waitUntilExit()
            exited.signal()
        }
        if exited.wait(timeout: .now() + timeout) == .timedOut { kill(p) }
    }

    // MARK: - Answers

    private func read(_ channel: Channel, _ generation: Int) {
        let header = UnsafeMutableRawPointer.allocate(byteCount: ReplyHeader.size, alignment: 16)
        defer { header.deallocate() }
        while channel.receive(header, ReplyHeader.size) {
            let r = ReplyHeader.decode(header)
            let (entry, starting) = state.withLock { s -> (InFlight?, DispatchSemaphore?) in
                if let st = s.starting, st.id == r.id {
                    s.starting = nil
                    s.startStatus = r.status
                    return (nil, st.done)
                }
                return (s.inFlight.removeValue(forKey: r.id), nil)
            }
            if let starting {
                guard channel.skip(Int(r.dataLength)) else { break }
                starting.signal()
                continue
            }
            guard let entry else {
                guard channel.skip(Int(r.dataLength)) else { break }
                continue
            }
            if entry.deviceControl {
                // Read whole, then copied (counted) to wherever the IRP's output is now.
                let out = entry.irp.deviceControlOutput
                let n = min(Int(r.dataLength), out.count)
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(Int(r.dataLength), 1), alignment: 16)
                defer { scratch.deallocate() }
                guard channel.receive(scratch, Int(r.dataLength)) else {
                    entry.irp.complete(.driverProcessTerminated)
                    break
                }
                if n > 0, let base = out.baseAddress { entry.irp.ioManager.copyBytes(from: scratch, to: base, count: n) }
                entry.irp.complete(r.status, information: r.status.isError ? 0 : Int(r.information))
                continue
            }
            let n = min(Int(r.dataLength), entry.output.count)
            guard n == 0 || channel.receive(entry.output.baseAddress, n), channel.skip(Int(r.dataLength) - n) else {
                entry.irp.complete(.driverProcessTerminated)
                break
            }
            if let opens = entry.opens, r.status.isSuccess { entry.irp.fileObject?.fsContext = opens }
            entry.irp.complete(r.status, information: r.status.isError ? 0 : Int(r.information))
        }
        ended(generation)
    }

    /// The host of `generation` is gone: fail what was in flight, show the problem,
    /// start it again unless the limit is reached or the device is going.
    private func ended(_ generation: Int) {
        let (lost, starting, again) = state.withLock { s -> ([InFlight], DispatchSemaphore?, Bool) in
            guard s.generation == generation else { return ([], nil, false) }
            let lost = Array(s.inFlight.values)
            s.inFlight = [:]
            let st = s.starting?.done
            s.starting = nil
            s.channel = nil
            s.failed = true
            guard !s.stopping, st == nil else { return (lost, st, false) }
            let now = Date()
            s.restarts.removeAll { now.timeIntervalSince($0) > HostProxy.restartWindow }
            guard s.restarts.count < HostProxy.maxRestarts else { return (lost, nil, false) }
            s.restarts.append(now)
            return (lost, nil, true)
        }
        starting?.signal()
        // The problem first, then the callers: one told EIO sees the device failed.
        let stopping = state.withLock { $0.stopping }
        let pdo = device?.deviceNode?.pdo
        if let device, let pdo, starting == nil, !stopping {
            device.driverObject.ioManager.setDriverHostProblem(pdo, .driverProcessTerminated)
        }
        for e in lost { e.irp.complete(.driverProcessTerminated) }
        guard let device, let pdo, starting == nil, !stopping else { return }
        let io = device.driverObject.ioManager
        device.driverObject.logger.error("driver host of \(instance) ended: \(again ? "starting it again" : "not starting it again (\(HostProxy.maxRestarts) restarts)")")
        guard again else { return }
        HostProxy.waits.async { [self] in
            if start().isSuccess { io.setDriverHostProblem(pdo, nil) }
        }
    }

    // MARK: - Requests

    func forward(_ irp: IRP) -> NTStatus {
        let major = irp.majorFunction
        let handle = irp.fileObject?.fsContext as? HostHandle
        let (channel, generation) = state.withLock { ($0.failed ? nil : $0.channel, $0.generation) }
        if major == .close, handle == nil || handle?.generation != generation {
            irp.complete(.success)  // nothing of it is left in a host
            return .success
        }
        guard let channel, major == .create || handle?.generation == generation else {
            irp.complete(.driverProcessTerminated)
            return .driverProcessTerminated
        }
        let id = nextID.add(1, ordering: .relaxed).oldValue
        var h = RequestHeader(op: .io, id: id, handle: handle?.id ?? 0)
        h.major = major.rawValue
        var data = UnsafeRawBufferPointer(start: nil, count: 0)
        var output = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var opens: HostHandle?
        var deviceControl = false
        switch major {
        case .create:
            let hh = HostHandle(id: id, generation: generation)
            opens = hh
            h = RequestHeader(op: .open, id: id, handle: hh.id)
            h.length = irp.fileObject?.grantedAccess.rawValue ?? 0
        case .close:
            h = RequestHeader(op: .close, id: id, handle: handle!.id)
        case .read:
            h.length = UInt32(irp.parameters.read.length)
            h.offset = irp.parameters.read.byteOffset
            output = irp.transferBuffer
        case .write:
            h.length = UInt32(irp.parameters.write.length)
            h.offset = irp.parameters.write.byteOffset
            data = UnsafeRawBufferPointer(irp.transferBuffer)
        default:
            let p = irp.parameters.deviceIoControl
            h.code = p.ioControlCode.rawValue
            h.inputLength = UInt32(p.inputBufferLength)
            h.outputLength = UInt32(p.outputBufferLength)
            data = irp.deviceControlInput
            deviceControl = true
        }
        h.dataLength = UInt32(data.count)
        irp.markPending()
        state.withLock { $0.inFlight[id] = InFlight(irp: irp, output: output, deviceControl: deviceControl, generation: generation, opens: opens) }
        // A cancel goes to the host; a host that does not answer it in time is hung.
        if major != .create, major != .close {
            _ = irp.setCancelRoutine { [weak self] _, _ in self?.cancel(id) }
        }
        if !sendFrame(channel, h, data) {
            if let e = state.withLock({ $0.inFlight.removeValue(forKey: id) }) { e.irp.complete(.driverProcessTerminated) }
        }
        return .pending
    }

    private func cancel(_ id: UInt64) {
        let (channel, process) = state.withLock { ($0.channel, $0.process) }
        guard let channel else { return }
        _ = sendFrame(channel, RequestHeader(op: .cancel, id: id, handle: 0), UnsafeRawBufferPointer(start: nil, count: 0))
        HostProxy.waits.asyncAfter(deadline: .now() + timeout) { [weak self] in
            guard let self, state.withLock({ $0.inFlight[id] != nil }), let process else { return }
            kill(process)
        }
    }
}
