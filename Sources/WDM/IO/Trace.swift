// IRP tracing: every IRP event at the two choke points, as one line each,
// streamed to whoever reads the trace device (`.trace` under a mount). An IRP
// tracker in the spirit of Windows' IrpTracker and WPP's trace sessions: each
// handle is a reader with its own filter (devices, major functions) and its own
// bounded buffer; a reader that falls behind loses events (counted, and said in
// its stream), and the I/O path never waits for one. With no reader the tracer
// is not installed, so tracing off costs nothing.
//
// One line per event, fields separated by spaces:
//
//   SECONDS #IRP EVENT MAJOR[/MINOR] [LOCATION/COUNT DRIVER DEVICE] [STATUS] [KEY=VALUE...]
//
//   0.000120 #7 call IRP_MJ_READ 3/3 \Driver\ErrorFilter disk offset=0 length=4096
//   0.000131 #7 call IRP_MJ_READ 2/3 \Driver\HostFile disk
//   0.000190 #7 complete IRP_MJ_READ 2/3 \Driver\HostFile disk STATUS_SUCCESS information=4096
//   0.000192 #7 routine IRP_MJ_READ 3/3 \Driver\CorruptFilter disk STATUS_SUCCESS
//   0.000195 #7 done IRP_MJ_READ disk STATUS_SUCCESS information=4096 time=0.075ms
//   0.000197 #7 return IRP_MJ_READ 2/3 \Driver\HostFile disk STATUS_SUCCESS
//
// `call` is IoCallDriver reaching a location (1 is the bottom), `return` its
// dispatch routine returning (STATUS_PENDING when it pended), `complete`
// IoCompleteRequest (by the driver at that location), `routine` a completion
// routine's result, `done` the IRP going back to its requester, with the time
// since its first event, `cancel` IoCancelIrp; `lost N` says N events did not fit.

import Dispatch
import Synchronization

/// A reader of the trace: one handle of the trace device.
final class TraceReader: @unchecked Sendable {
    struct State {
        /// Lines not yet read, as bytes, from `head`.
        var bytes: [UInt8] = []
        var head = 0
        /// Events that did not fit since the last one that did.
        var lost = 0
        /// Reads parked in `waiting` (an upper bound: a cancel takes one out unseen).
        var waitingReads = 0
        var deliveryScheduled = false
        /// Only these device nodes' IRPs (instance names); empty: all.
        var devices: Set<String> = []
        /// Only these major functions; empty: all.
        var majors: Set<UInt8> = []
        var available: Int { bytes.count - head }
    }
    let state = HandoffMutex(State())
    let waiting = CancelSafeQueue()
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func accepts(_ s: State, node: String, major: UInt8) -> Bool {
        (s.devices.isEmpty || s.devices.contains(node)) && (s.majors.isEmpty || s.majors.contains(major))
    }
}

/// The observer that turns IRP events into trace lines for the readers.
final class IRPTracer: IRPObserver, @unchecked Sendable {
    unowned let io: IOManager
    /// The trace device's driver: its own IRPs are not traced.
    unowned let traceDriver: DriverObject
    let readers = HandoffMutex<[TraceReader]>([])
    let start = DispatchTime.now().uptimeNanoseconds
    let delivery = DispatchQueue(label: "wdmfs.trace.delivery")
    /// Events lost by any reader, ever.
    let lost = Atomic<Int>(0)

    /// What the tracer knows of an IRP in flight: its number in the trace, when
    /// it was first seen, its device node and major function, its words.
    struct Entry {
        let seq: Int
        let start: UInt64
        let node: String
        let major: UInt8
        let label: String
        var done = false
        /// Calls whose return is still to come.
        var depth = 0
    }
    struct Key: Hashable {
        let packet: ObjectIdentifier
        let generation: UInt32
    }
    let irps = HandoffMutex<(entries: [Key: Entry], next: Int)>(([:], 1))

    init(io: IOManager, traceDriver: DriverObject) {
        self.io = io
        self.traceDriver = traceDriver
    }

    // MARK: - Events

    func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {
        guard device.driverObject !== traceDriver else { return }
        // The parameters on the IRP's first line (the locations below hold the same, or what the driver above set).
        let first = irps.withLock { $0.entries[key(irp)] == nil }
        emit(irp, "call", location: location, device: device, depth: 1) { line in
            if first { Self.parameters(irp, device, into: &line) }
        }
    }

    func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus) {
        guard device.driverObject !== traceDriver else { return }
        // Only the arguments: the IRP may be someone else's by now.
        emit(irp, "return", location: location, device: device, depth: -1, creates: false) { $0.add(status) }
    }

    func completing(_ irp: IRP) {
        let p = irp.packet
        guard p.targetDevice?.driverObject !== traceDriver else { return }
        let location = p.currentLocation
        let device = location <= p.stackCount ? p.locations[location - 1].deviceObject : nil
        let io = p.ioStatus
        emit(irp, "complete", location: location, device: device) { line in
            line.add(io.status)
            line.add(" information=")
            line.add(io.information)
        }
    }

    func completionRoutineReturned(_ device: DeviceObject?, _ irp: IRP, pendingReturned: Bool, result: NTStatus) {
        guard irp.packet.targetDevice?.driverObject !== traceDriver else { return }
        emit(irp, "routine", location: irp.packet.currentLocation, device: device) { line in
            line.add(result)
            if pendingReturned { line.add(" pending_returned") }
        }
    }

    func completed(_ irp: IRP) {
        let p = irp.packet
        guard p.targetDevice?.driverObject !== traceDriver else { return }
        let io = p.ioStatus
        emit(irp, "done", location: nil, device: nil, done: true) { line in
            line.add(io.status)
            line.add(" information=")
            line.add(io.information)
        }
    }

    func cancelling(_ irp: IRP) {
        guard irp.packet.targetDevice?.driverObject !== traceDriver else { return }
        emit(irp, "cancel", location: nil, device: nil, creates: false) { _ in }
    }

    func key(_ irp: IRP) -> Key { Key(packet: ObjectIdentifier(irp.packet), generation: irp.generation) }

    /// The words after the major function on an IRP's first line.
    static func parameters(_ irp: IRP, _ device: DeviceObject, into line: inout TraceLine) {
        switch irp.majorFunction {
        case .read, .write:
            let r = irp.parameters.read
            line.add("offset=")
            line.add(Int(r.byteOffset))
            line.add(" length=")
            line.add(r.length)
        case .deviceControl, .internalDeviceControl:
            let d = irp.parameters.deviceIoControl
            line.add("ioctl=")
            line.add(ioctlName(d.ioControlCode, from: device))
            line.add(" in=")
            line.add(d.inputBufferLength)
            line.add(" out=")
            line.add(d.outputBufferLength)
        default:
            break  // no words (the space before them goes too)
        }
    }

    /// An IOCTL code by the name a driver of the stack gives it, else in hex.
    static func ioctlName(_ code: ControlCode, from top: DeviceObject) -> String {
        var d: DeviceObject? = top
        while let device = d {
            if let name = device.driverObject.ioctlNames[code.rawValue] { return name }
            d = device.lowerDevice
        }
        return "0x" + String(code.rawValue, radix: 16, uppercase: true).leftPadded(to: 8)
    }

    /// `IRP_MJ_PNP/IRP_MN_START_DEVICE`, `IRP_MJ_READ`: from the top location, which
    /// every IRP has (the current one is past the top once the walk ended).
    static func label(_ irp: IRP) -> String {
        let top = irp.packet.locations[irp.packet.stackCount - 1]
        let major = top.majorFunction, minor = top.minorFunction
        switch major {
        case .pnp: return major.wdmName + "/" + (PnPMinor(rawValue: minor)?.wdmName ?? "0x" + String(minor, radix: 16))
        case .power: return major.wdmName + "/" + (PowerMinor(rawValue: minor)?.wdmName ?? "0x" + String(minor, radix: 16))
        default: return major.wdmName
        }
    }

    /// Makes the event's line and hands it to every reader that wants it.
    func emit(_ irp: IRP, _ event: StaticString, location: Int?, device: DeviceObject?, done: Bool = false, depth: Int = 0,
              creates: Bool = true, tail: (inout TraceLine) -> Void) {
        let now = DispatchTime.now().uptimeNanoseconds
        let k = key(irp)
        let p = irp.packet
        // The IRP's words are read only when the tracer first sees it, on a thread
        // that owns it (a `return` of an IRP never seen has none to give).
        let first: Entry? = irps.withLock { t in
            if var e = t.entries[k] {
                if done { e.done = true }
                e.depth += depth
                // Forgotten once it is back with its requester and every dispatch routine returned.
                if e.done && e.depth <= 0 { t.entries[k] = nil } else { t.entries[k] = e }
                return e
            }
            // Only a thread that owns the IRP reads its words (not a return, not a cancel).
            guard creates else { return nil }
            let top = p.targetDevice ?? device
            let node = top?.deviceNode?.instanceName ?? top?.name ?? "-"
            let e = Entry(seq: t.next, start: now, node: node, major: p.locations[p.stackCount - 1].majorFunction.rawValue,
                          label: Self.label(irp), done: done, depth: depth)
            t.next += 1
            // An IRP whose dispatch return was never seen (the tracer came in between) is forgotten eventually.
            if t.entries.count > 16384 { t.entries = t.entries.filter { !$0.value.done } }
            if !(done && depth <= 0) { t.entries[k] = e }
            return e
        }
        guard let entry = first else { return }
        // One buffer per event, bytes appended in place: no string is built.
        var line = TraceLine()
        line.seconds(now - start)
        line.add(" #")
        line.add(entry.seq)
        line.add(" ")
        line.add(event)
        line.add(" ")
        line.add(entry.label)
        line.add(" ")
        if let location, let device {
            line.add(location)
            line.add("/")
            line.add(p.stackCount)
            line.add(" ")
            line.add(device.driverObject.name)
            line.add(" ")
            line.add(device.deviceNode?.instanceName ?? device.name ?? "-")
        } else {
            line.add(entry.node)
        }
        let before = line.bytes.count
        line.add(" ")
        tail(&line)
        if line.bytes.count == before + 1 { line.bytes.removeLast() }
        if done {
            line.add(" time=")
            line.milliseconds(now - entry.start)
            line.add("ms")
        }
        line.add("\n")
        for reader in readers.withLock({ $0 }) { append(line.bytes, to: reader, node: entry.node, major: entry.major, at: now) }
    }


    /// Appends a line to a reader's buffer, or counts it lost when it does not fit;
    /// a read waiting for data gets it from the delivery queue (never this thread).
    func append(_ line: [UInt8], to reader: TraceReader, node: String, major: UInt8, at now: UInt64) {
        let deliver: Bool = reader.state.withLock { s in
            guard reader.accepts(s, node: node, major: major) else { return false }
            var lostLine: [UInt8] = []
            if s.lost > 0 {
                var l = TraceLine()
                l.seconds(now - start)
                l.add(" lost ")
                l.add(s.lost)
                l.add("\n")
                lostLine = l.bytes
            }
            guard s.available + lostLine.count + line.count <= reader.capacity else {
                s.lost += 1
                lost.add(1, ordering: .relaxed)
                return false
            }
            if s.head > 0 && s.head * 2 > s.bytes.count {
                s.bytes.removeFirst(s.head)
                s.head = 0
            }
            s.bytes.append(contentsOf: lostLine)
            s.bytes.append(contentsOf: line)
            s.lost = 0
            guard s.waitingReads > 0, !s.deliveryScheduled else { return false }
            s.deliveryScheduled = true
            return true
        }
        if deliver { delivery.async { [self] in self.deliver(reader) } }
    }

    /// Completes the reader's waiting reads with what it has.
    func deliver(_ reader: TraceReader) {
        while true {
            let taken: (IRP, Int)? = reader.state.withLock { s in
                guard s.available > 0 else {
                    s.deliveryScheduled = false
                    return nil
                }
                guard let irp = reader.waiting.removeNext() else {
                    s.waitingReads = 0
                    s.deliveryScheduled = false
                    return nil
                }
                s.waitingReads = max(0, s.waitingReads - 1)
                return (irp, Self.take(&s, into: irp))
            }
            guard let (irp, n) = taken else { return }
            irp.complete(.success, information: n)
        }
    }

    /// Moves up to the read's length of the reader's bytes into its buffer.
    static func take(_ s: inout TraceReader.State, into irp: IRP) -> Int {
        let buffer = irp.transferBuffer
        let n = min(buffer.count, s.available)
        guard n > 0, let base = buffer.baseAddress else { return 0 }
        s.bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + s.head, byteCount: n) }
        s.head += n
        if s.head == s.bytes.count {
            s.bytes.removeAll(keepingCapacity: true)
            s.head = 0
        }
        return n
    }

    static func secondsText(_ ns: UInt64) -> String {
        let us = ns / 1000
        return "\(us / 1_000_000)." + String(us % 1_000_000).leftPadded(to: 6)
    }

    static func milliseconds(_ ns: UInt64) -> String {
        let us = ns / 1000
        return "\(us / 1000)." + String(us % 1000).leftPadded(to: 3)
    }
}

// MARK: - The trace device

/// The trace device: `\Device\Trace`, opened by its symbolic link `.trace`. Each
/// handle is a reader. A read returns the events since the last one (and waits,
/// cancellably, while there are none); a write sets the handle's filter, one
/// line each: `device NAME[,NAME...]`, `major IRP_MJ_READ[,...]` (or `read`,
/// `write`, `ioctl`, `pnp`, `power`, ...), `all` to trace everything again.
public enum TraceDevice {
    public static let link = ".trace"

    static let majorWords: [String: MajorFunction] = [
        "create": .create, "close": .close, "read": .read, "write": .write, "query_information": .queryInformation,
        "set_information": .setInformation, "flush": .flushBuffers, "ioctl": .deviceControl,
        "internal_ioctl": .internalDeviceControl, "shutdown": .shutdown, "cleanup": .cleanup, "power": .power,
        "system_control": .systemControl, "pnp": .pnp,
    ]

    /// Applies one filter line to `s`; false for a line it does not take.
    static func apply(_ line: Substring, to s: inout TraceReader.State) -> Bool {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let verb = words.first else { return true }
        switch (verb, words.count) {
        case ("all", 1):
            s.devices = []
            s.majors = []
        case ("device", 2):
            s.devices = Set(words[1].split(separator: ",").map(String.init))
        case ("major", 2):
            var majors: Set<UInt8> = []
            for w in words[1].split(separator: ",") {
                let name = String(w)
                guard let m = majorWords[name.lowercased()] ?? MajorFunction.allCases.first(where: { $0.wdmName == name }) else { return false }
                majors.insert(m.rawValue)
            }
            s.majors = majors
        default:
            return false
        }
        return true
    }
}

extension IOManager {
    /// Creates the trace device and its link `.trace` (once; the host calls it).
    @discardableResult
    public func createTraceDevice() throws(NTStatus) -> DeviceObject {
        if let existing = device(forLink: TraceDevice.link) { return existing }
        let driver = try loadDriver(name: "Trace") { driver in
            driver.majorFunction.succeed([.close])
            driver.unload = { driver in
                for device in driver.deviceObjects { driver.ioManager.deleteDevice(device) }
            }
            driver.majorFunction[.create] = { device, irp in
                let tracer = device.deviceExtension(as: IRPTracer.self)
                let reader = TraceReader(capacity: tracer.io.traceReaderCapacity)
                irp.fileObject?.fsContext = reader
                let first = tracer.readers.withLock { r in
                    r.append(reader)
                    return r.count == 1
                }
                if first { tracer.io.addObserver(tracer) }
                irp.complete(.success)
                return .success
            }
            driver.majorFunction[.cleanup] = { device, irp in
                let tracer = device.deviceExtension(as: IRPTracer.self)
                if let reader = irp.fileObject?.fsContext as? TraceReader {
                    let last = tracer.readers.withLock { r in
                        r.removeAll { $0 === reader }
                        return r.isEmpty
                    }
                    if last { tracer.io.removeObserver(tracer) }
                    reader.waiting.cancelAll(for: irp.fileObject!)
                }
                irp.complete(.success)
                return .success
            }
            driver.majorFunction[.read] = { device, irp in
                guard let reader = irp.fileObject?.fsContext as? TraceReader else {
                    irp.complete(.invalidDeviceRequest)
                    return .invalidDeviceRequest
                }
                // Under the reader's lock: an event that comes between the look and
                // the park finds the read parked, and has it delivered.
                let n: Int? = reader.state.withLock { s in
                    if s.available > 0 { return IRPTracer.take(&s, into: irp) }
                    s.waitingReads += 1
                    _ = reader.waiting.insert(irp)
                    return nil
                }
                guard let n else { return .pending }
                irp.complete(.success, information: n)
                return .success
            }
            driver.majorFunction[.write] = { device, irp in
                guard let reader = irp.fileObject?.fsContext as? TraceReader else {
                    irp.complete(.invalidDeviceRequest)
                    return .invalidDeviceRequest
                }
                let buffer = irp.transferBuffer
                let text = String(decoding: UnsafeRawBufferPointer(buffer), as: UTF8.self)
                let ok = reader.state.withLock { s in
                    var t = s
                    for line in text.split(whereSeparator: { $0 == "\n" || $0 == ";" }) where !TraceDevice.apply(line, to: &t) { return false }
                    s = t
                    return true
                }
                let status: NTStatus = ok ? .success : .invalidParameter
                irp.complete(status, information: ok ? buffer.count : 0)
                return status
            }
            return .success
        }
        let device = createDevice(driver: driver, deviceType: DeviceType.unknown, flags: .bufferedIO, name: "\\Device\\Trace")
        device.deviceExtension = IRPTracer(io: self, traceDriver: driver)
        try createSymbolicLink(TraceDevice.link, device: device)
        device.flags.remove(.deviceInitializing)
        return device
    }

    var tracer: IRPTracer? { device(forLink: TraceDevice.link)?.deviceExtension as? IRPTracer }

    /// The trace's readers now, and the events they lost so far (together).
    public var traceReaders: (count: Int, lost: Int) {
        guard let tracer else { return (0, 0) }
        return (tracer.readers.withLock { $0.count }, tracer.lost.load(ordering: .relaxed))
    }

    /// Whether the tracer is installed at the choke points (only while someone reads the trace).
    public var isTracing: Bool {
        guard let tracer, let chain = observers else { return false }
        return chain._withUnsafeGuaranteedRef { $0.list.contains { $0 === tracer } }
    }
}

/// A trace line as it is built: ASCII appended in place.
struct TraceLine {
    var bytes: [UInt8]
    init() {
        bytes = []
        bytes.reserveCapacity(160)
    }
    mutating func add(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }
    mutating func add(_ s: String) {
        bytes.append(contentsOf: s.utf8)
    }
    mutating func add(_ status: NTStatus) {
        if let name = status.name { add(name) } else { add(status.description) }
    }
    /// A decimal integer, without a String.
    mutating func add(_ n: Int) {
        if n < 0 { bytes.append(UInt8(ascii: "-")) }
        var v = n.magnitude
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[count] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                count += 1
            } while v > 0
            for i in stride(from: count - 1, through: 0, by: -1) { bytes.append(d[i]) }
        }
    }
    /// `n` with at least `width` digits (leading zeros).
    mutating func add(_ n: Int, width: Int) {
        var w = 1, v = n
        while v >= 10 { v /= 10; w += 1 }
        for _ in w..<max(w, width) { bytes.append(UInt8(ascii: "0")) }
        add(n)
    }
    /// Seconds with six decimals (`12.000345`).
    mutating func seconds(_ ns: UInt64) {
        let us = Int(ns / 1000)
        add(us / 1_000_000)
        bytes.append(UInt8(ascii: "."))
        add(us % 1_000_000, width: 6)
    }
    /// Milliseconds with three decimals.
    mutating func milliseconds(_ ns: UInt64) {
        let us = Int(ns / 1000)
        add(us / 1000)
        bytes.append(UInt8(ascii: "."))
        add(us % 1000, width: 3)
    }
}
