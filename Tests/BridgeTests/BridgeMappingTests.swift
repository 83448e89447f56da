// The bridge's mapping from FUSE operations to requests, and from NTSTATUS and
// request kind to replies, tested with no mount: a fake ReplySink records every
// reply, and fake request handles stand for fuse_req_t.

import CFuse
import DefaultTree
import Dispatch
import Foundation
import Glibc
import IoctlDemoDriver
import MisbehaveDriver
import Synchronization
import Testing
import WDM
import WDMClient
@testable import WDMFuse
import WDMTesting

/// Records what the bridge answers, per request.
final class FakeSink: ReplySink, @unchecked Sendable {
    enum Reply: Equatable {
        case error(Int32), data([UInt8]), written(Int), ioctl([UInt8]), open, poll(UInt32), attr(stat_size: Int, mode: UInt32), entry
    }
    private let state = HandoffMutex<(replies: [Int: [Reply]], armed: [Int: PendingFuseRequest], dropped: Int, invalidated: [String])>(([:], [:], 0, []))
    private let arrived = DispatchSemaphore(value: 0)

    static func id(_ req: FuseRequestHandle) -> Int { Int(bitPattern: UnsafeRawPointer(req)) }
    func record(_ req: FuseRequestHandle, _ r: Reply) {
        state.withLock { $0.replies[Self.id(req), default: []].append(r) }
        arrived.signal()
    }

    func replyError(_ req: FuseRequestHandle, _ errno: Int32) { record(req, .error(errno)) }
    func replyData(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int) {
        record(req, .data(data.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []))
    }
    func replyWrite(_ req: FuseRequestHandle, _ count: Int) { record(req, .written(count)) }
    func replyIoctl(_ req: FuseRequestHandle, _ data: UnsafeRawPointer?, _ count: Int) {
        record(req, .ioctl(data.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []))
    }
    func replyOpen(_ req: FuseRequestHandle, _ fi: UnsafeMutablePointer<fuse_file_info>) { record(req, .open) }
    func replyPoll(_ req: FuseRequestHandle, _ events: UInt32) { record(req, .poll(events)) }
    func replyAttr(_ req: FuseRequestHandle, _ attr: UnsafePointer<stat>, timeout: Double) {
        record(req, .attr(stat_size: attr.pointee.st_size, mode: attr.pointee.st_mode))
    }
    func replyEntry(_ req: FuseRequestHandle, _ entry: UnsafePointer<fuse_entry_param>) { record(req, .entry) }
    func replyLink(_ req: FuseRequestHandle, _ target: String) { record(req, .data(Array(target.utf8))) }
    func armInterrupt(_ req: FuseRequestHandle, _ request: PendingFuseRequest) {
        state.withLock { $0.armed[Self.id(req)] = request }
    }
    func disarmInterrupt(_ req: FuseRequestHandle) {}
    func notifyPoll(_ handle: OpaquePointer) {}
    func destroyPollHandle(_ handle: OpaquePointer) {}
    func dropped(_ req: FuseRequestHandle, _ what: String) { state.withLock { $0.dropped += 1 } }
    func invalidateEntry(parent: UInt64, name: String) { state.withLock { $0.invalidated.append(name) } }
    func invalidateInode(_ ino: UInt64) {}
    var invalidated: [String] { state.withLock { $0.invalidated } }

    func replies(_ req: Int) -> [Reply] { state.withLock { $0.replies[req] ?? [] } }
    func armed(_ req: Int) -> PendingFuseRequest? { state.withLock { $0.armed[req] } }
    var droppedCount: Int { state.withLock { $0.dropped } }

    /// Waits until `req` has a reply (or `seconds` pass).
    func waitForReply(_ req: Int, seconds: Double = 5) -> [Reply] {
        let deadline = Date().addingTimeInterval(seconds)
        while replies(req).isEmpty, Date() < deadline { _ = arrived.wait(timeout: .now() + 0.05) }
        return replies(req)
    }
}

/// A bridge over the test tree, with fake requests.
final class Rig {
    let io: IOManager
    let sink = FakeSink()
    let bridge: FuseBridge
    private var next = 0x1000
    private var infos: [(ino: fuse_ino_t, fi: UnsafeMutablePointer<fuse_file_info>)] = []

    init(checked: Bool = false) throws {
        io = IOManager(checkedBuffers: checked)
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20, test: true))
        bridge = FuseBridge(io: io, sink: sink)
        bridge.cancelGrace = 0.2
        io.shutdownGrace = 0.2
        baseline = io.verifier.count  // lazy-null's filter is reported as the tree is built
    }

    private var baseline = 0
    /// The rules reported since the tree was built.
    var rules: [Verifier.Rule] { Array(io.verifier.violations.dropFirst(baseline)).map(\.rule) }

    deinit {
        // Requests a driver never completes stay busy; the rest must be done before
        // the bridge and the I/O manager go.
        bridge.waitUntilIdle(seconds: 1)
        // The kernel releases every handle it opened; so does the rig.
        for (ino, fi) in infos {
            let (r, _) = req()
            bridge.release(r, ino, fi)
            fi.deallocate()
        }
    }

    /// A fresh request handle and its number.
    func req() -> (FuseRequestHandle, Int) {
        next += 16
        return (OpaquePointer(bitPattern: next), next)
    }

    func ino(_ name: String) -> fuse_ino_t {
        bridge.inode(of: name)!
    }

    /// The inode a handle was opened on.
    func ino(of fi: UnsafeMutablePointer<fuse_file_info>) -> fuse_ino_t {
        infos.first { $0.fi == fi }?.ino ?? 100
    }

    func open(_ name: String, flags: Int32 = O_RDWR) -> UnsafeMutablePointer<fuse_file_info> {
        let fi = UnsafeMutablePointer<fuse_file_info>.allocate(capacity: 1)
        fi.initialize(to: fuse_file_info())
        fi.pointee.flags = flags
        infos.append((ino(name), fi))
        let (r, n) = req()
        bridge.open(r, ino(name), fi)
        #expect(sink.replies(n) == [.open])
        return fi
    }

    /// The kernel's release of a handle (its last descriptor closed).
    func close(_ fi: UnsafeMutablePointer<fuse_file_info>) {
        guard let i = infos.firstIndex(where: { $0.fi == fi }) else { return }
        let (r, _) = req()
        bridge.release(r, infos[i].ino, fi)
        infos.remove(at: i)
        fi.deallocate()
    }

    func read(_ name: String, _ fi: UnsafeMutablePointer<fuse_file_info>, size: Int, offset: Int = 0) -> Int {
        let (r, n) = req()
        bridge.read(r, ino(name), size, offset, fi)
        return n
    }

    func write(_ fi: UnsafeMutablePointer<fuse_file_info>, _ data: [UInt8], offset: Int = 0) -> Int {
        let (r, n) = req()
        data.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { bridge.write(r, 100, $0.baseAddress, data.count, offset, fi) }
        }
        return n
    }

    /// An ioctl through the envelope; returns the request number and the envelope.
    func ioctl(_ fi: UnsafeMutablePointer<fuse_file_info>, code: UInt32, input: [UInt8] = [], outputLength: Int = 0, capacity: Int? = nil) -> Int {
        let cap = capacity ?? IoctlEnvelope.capacity(code: code, inputLength: input.count, outputLength: outputLength)
        var env = [UInt8](repeating: 0, count: IoctlEnvelope.headerSize + cap)
        env.withUnsafeMutableBytes { IoctlEnvelope.Header(code: code, inputLength: input.count, outputLength: outputLength).write(to: $0.baseAddress!) }
        env.replaceSubrange(IoctlEnvelope.headerSize..<IoctlEnvelope.headerSize + input.count, with: input)
        let (r, n) = req()
        env.withUnsafeBytes { b in
            bridge.ioctl(r, ino(of: fi), UInt32(truncatingIfNeeded: IoctlEnvelope.request(capacity: cap)), fi, 0, b.baseAddress, b.count, b.count)
        }
        env.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0xEE) }  // the request's memory is gone
        return n
    }
}

func header(_ reply: FakeSink.Reply?) -> IoctlEnvelope.Header? {
    guard case .ioctl(let bytes)? = reply, bytes.count >= 24 else { return nil }
    return bytes.withUnsafeBytes { IoctlEnvelope.Header(from: $0.baseAddress!) }
}

@Suite struct BridgeMappingTests {
    @Test func readsAnswerWithTheDriversDataAndEndOfFileWithNothing() throws {
        let rig = try Rig()
        let ram = rig.open("ramdisk0")
        #expect(rig.sink.replies(rig.write(ram, [1, 2, 3], offset: 10)) == [.written(3)])
        #expect(rig.sink.replies(rig.read("ramdisk0", ram, size: 4, offset: 9)) == [.data([0, 1, 2, 3])])
        #expect(rig.sink.replies(rig.read("ramdisk0", ram, size: 4, offset: 1 << 20)) == [.data([])])
        let null = rig.open("null")
        #expect(rig.sink.replies(rig.read("null", null, size: 4)) == [.data([])])  // STATUS_END_OF_FILE
        #expect(rig.sink.replies(rig.write(ram, [9], offset: 1 << 20)) == [.error(ENOSPC)])  // STATUS_DISK_FULL
        #expect(rig.io.statistics.bytesCopied == 0)
    }

    @Test func ioctlsCarryTheStatusAndAWarningKeepsItsPartialData() throws {
        let rig = try Rig()
        let demo = rig.open("ioctl-demo")
        let ok = rig.sink.replies(rig.ioctl(demo, code: 0x0022_2000, input: Array("abc".utf8), outputLength: 3))
        #expect(header(ok.first)?.status == .success)
        if case .ioctl(let bytes)? = ok.first { #expect(Array(bytes.dropFirst(24)) == Array("ABC".utf8)) } else { Issue.record("\(ok)") }
        // Output shorter than the input: STATUS_BUFFER_OVERFLOW with the part that fits.
        let warn = rig.sink.replies(rig.ioctl(demo, code: 0x0022_2000, input: Array("hello".utf8), outputLength: 2, capacity: 5))
        let h = try #require(header(warn.first))
        #expect(h.status == .bufferOverflow && h.information == 2)
        if case .ioctl(let bytes)? = warn.first { #expect(Array(bytes.dropFirst(24)) == Array("HE".utf8)) }
        // An unknown code: the status travels, no data.
        let bad = rig.sink.replies(rig.ioctl(demo, code: 0x0022_2100, outputLength: 4))
        #expect(header(bad.first)?.status == .invalidDeviceRequest)
        if case .ioctl(let bytes)? = bad.first { #expect(bytes.count == 24) }
    }

    @Test func aDirectMethodsOutputFollowsItsInput() throws {
        let rig = try Rig()
        let demo = rig.open("ioctl-demo")
        let r = rig.sink.replies(rig.ioctl(demo, code: 0x0022_200A, input: Array("abc".utf8), outputLength: 3))
        guard case .ioctl(let bytes)? = r.first else { Issue.record("no ioctl reply: \(r)"); return }
        #expect(Array(bytes[24..<27]) == Array("abc".utf8))  // the input, untouched
        #expect(Array(bytes[32..<35]) == Array("ABC".utf8))  // the output at align8(3)
    }

    @Test func foreignAndMalformedRequestsNeverReachADriver() throws {
        let rig = try Rig()
        let ram = rig.open("ramdisk0")
        let before = rig.io.statistics.irpsSubmitted
        var buf = [UInt8](repeating: 0, count: 64)
        let cases: [(UInt32, Int32)] = [(0x5401, ENOTTY), (0x8008_6601, ENOTTY), (0xC058_5700, ENOTTY), (0xC00A_5701, EINVAL)]
        for (cmd, expected) in cases {
            let (r, n) = rig.req()
            let size = Int((cmd >> 16) & 0x3FFF)
            buf.withUnsafeBytes { rig.bridge.ioctl(r, rig.ino(of: ram), cmd, ram, 0, $0.baseAddress, size, size) }
            #expect(rig.sink.replies(n) == [.error(expected)], "cmd 0x\(String(cmd, radix: 16))")
        }
        let lengths = rig.ioctl(ram, code: 0x0007_405C, input: [], outputLength: 100, capacity: 8)
        #expect(rig.sink.replies(lengths) == [.error(EINVAL)])
        #expect(rig.io.statistics.irpsSubmitted == before)
    }

    @Test func aPendingReadIsAnsweredEINTRWhenItsCallerIsInterrupted() throws {
        let rig = try Rig()
        let echo = rig.open("echo")
        let n = rig.read("echo", echo, size: 8)
        #expect(rig.sink.replies(n).isEmpty)
        let pending = try #require(rig.sink.armed(n))
        pending.interrupted()  // FUSE_INTERRUPT
        #expect(rig.sink.waitForReply(n) == [.error(EINTR)])
        #expect(rig.rules.isEmpty)
    }

    @Test func aNonBlockingReadThatWouldWaitIsEAGAIN() throws {
        let rig = try Rig()
        let echo = rig.open("echo", flags: O_RDWR | O_NONBLOCK)
        #expect(rig.sink.waitForReply(rig.read("echo", echo, size: 8)) == [.error(EAGAIN)])
    }

    @Test func aPendingWriteDoesNotHoldTheRequestsMemory() throws {
        let rig = try Rig()
        let demo = rig.open("ioctl-demo")
        // An inverted call: the IOCTL pends; its envelope is overwritten when the callback returns.
        let waiter = rig.ioctl(demo, code: IoctlDemoDriver.waitForSignal.rawValue, input: Array("wait".utf8), outputLength: 5)
        #expect(rig.sink.replies(waiter).isEmpty)
        let signal = rig.ioctl(demo, code: IoctlDemoDriver.signalWaiters.rawValue, input: Array("hello".utf8), outputLength: 4)
        #expect(header(rig.sink.replies(signal).first)?.information == 4)
        let r = rig.sink.waitForReply(waiter)
        let h = try #require(header(r.first))
        #expect(h.status == .success && h.information == 5 && h.code == IoctlDemoDriver.waitForSignal.rawValue)
        if case .ioctl(let bytes)? = r.first { #expect(Array(bytes.dropFirst(24)) == Array("hello".utf8)) }
        #expect(rig.io.statistics.bytesCopied == 24 + 5)  // the waiter's envelope, copied once when it pended
    }

    @Test func aDriverThatNeverCompletesStillLetsTheCallerGoOnASignal() throws {
        let rig = try Rig()
        let bad = rig.open("misbehave")
        for bug in [MisbehaveDriver.Bug.pendForever, .returnWithoutCompleting] {
            let n = rig.ioctl(bad, code: bug.code.rawValue)
            #expect(rig.sink.replies(n).isEmpty)
            try #require(rig.sink.armed(n)).interrupted()
            #expect(rig.sink.waitForReply(n) == [.error(EINTR)])  // after the grace period
        }
        let rules = rig.rules
        #expect(rules == [.neverCompleted, .returnedWithoutCompleting, .neverCompleted])
    }

    @Test func shutdownAnswersEveryRequestTheDriversStillHold() throws {
        let rig = try Rig()
        let bad = rig.open("misbehave")
        let echo = rig.open("echo")
        let stuck = rig.ioctl(bad, code: MisbehaveDriver.Bug.pendForever.code.rawValue)
        let reader = rig.read("echo", echo, size: 4)
        rig.bridge.drain()
        #expect(rig.sink.replies(reader) == [.error(ENODEV)])  // echo honoured the cancel: not EINTR, which callers retry
        #expect(rig.sink.replies(stuck) == [.error(ENODEV)])  // answered for the driver
        #expect(rig.rules == [.neverCompleted])
    }

    @Test func getattrSendsNoIrpAndTakesThePublishedSize() throws {
        let rig = try Rig()
        let before = rig.io.statistics.irpsSubmitted
        for (name, size) in [("ramdisk0", 1 << 20), ("zero", 0), ("echo", 0)] {
            let (r, n) = rig.req()
            rig.bridge.getattr(r, rig.ino(name))
            #expect(rig.sink.replies(n) == [.attr(stat_size: size, mode: S_IFREG | 0o666)])
        }
        #expect(rig.io.statistics.irpsSubmitted == before)
    }

    @Test func chmodChownAndTouchAreRefusedAndTruncationIsIgnored() throws {
        let rig = try Rig()
        for toSet in [FUSE_SET_ATTR_MODE, FUSE_SET_ATTR_UID, FUSE_SET_ATTR_GID, FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME] {
            let (r, n) = rig.req()
            rig.bridge.setattr(r, rig.ino("zero"), Int32(toSet))
            #expect(rig.sink.replies(n) == [.error(EPERM)])
        }
        let (r, n) = rig.req()
        rig.bridge.setattr(r, rig.ino("ramdisk0"), Int32(FUSE_SET_ATTR_SIZE))
        #expect(rig.sink.replies(n) == [.attr(stat_size: 1 << 20, mode: S_IFREG | 0o666)])
    }

    @Test func statsIsOneSnapshotPerOpenServedByOffset() throws {
        let rig = try Rig()
        let stats = rig.open(".stats", flags: O_RDONLY)
        var text: [UInt8] = []
        var offset = 0
        let zero = rig.open("zero")
        while true {
            _ = rig.read("zero", zero, size: 1)  // the counters move between the pieces
            let n = rig.read(".stats", stats, size: 7, offset: offset)
            guard case .data(let piece)? = rig.sink.replies(n).first, !piece.isEmpty else { break }
            text += piece
            offset += piece.count
        }
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 10)  // six counters, fuse_polls, poll_connection_files, trace_readers, trace_events_lost
        #expect(lines.allSatisfy { $0.split(separator: " ").count == 2 })
        #expect(lines.first == "irps_submitted \(lines.first!.split(separator: " ")[1])")
    }

    @Test func aReplyDroppedUnansweredIsAnsweredEIOAndReported() throws {
        let rig = try Rig()
        let (r, n) = rig.req()
        do { _ = FuseReply(r, rig.sink) }
        #expect(rig.sink.replies(n) == [.error(EIO)])
        #expect(rig.sink.droppedCount == 1)
    }

    @Test func checkedModeCatchesADriverThatWritesIntoAReadBufferAfterCompleting() throws {
        let rig = try Rig(checked: true)
        let bad = rig.open("misbehave")
        let device = try #require(FuseBridge.file(rig.ino("misbehave"), bad)).deviceObject
        #expect(rig.sink.replies(rig.read("misbehave", bad, size: 4096)) == [.data([0x4D])])
        // The driver writes into the buffer 20 ms after completing (this rig's device:
        // other tests' late writes run side by side).
        #expect(waitUntil { MisbehaveDriver.lateWrites(on: device) == 1 })
        let zero = rig.open("zero")
        _ = rig.read("zero", zero, size: 4096)  // its own buffers: nothing to see
        #expect(rig.rules == [])
        _ = rig.read("misbehave", bad, size: 4096)  // takes the same pooled buffer again
        #expect(rig.rules == [.bufferWrittenAfterCompletion])
    }

    /// Checked mode or not, a buffer a driver wrote into after completing never
    /// reaches another device's read: each device's reads are answered from a
    /// pool of its own (before, zero could read back misbehave's late bytes).
    @Test func aReadBufferNeverPassesFromOneDeviceToAnother() throws {
        let rig = try Rig()
        let bad = rig.open("misbehave"), zero = rig.open("zero")
        #expect(rig.sink.replies(rig.read("misbehave", bad, size: 4096)) == [.data([0x4D])])
        let badFile = try #require(FuseBridge.file(rig.ino("misbehave"), bad))
        let zeroFile = try #require(FuseBridge.file(rig.ino("zero"), zero))
        let badPool = rig.bridge.replyBuffers(of: badFile.deviceObject)
        let used = rig.bridge.replyBuffers(of: badFile).kept
        #expect(used.count == 1)  // the read's buffer came back to the handle, which keeps it
        for _ in 0..<4 { #expect(rig.sink.replies(rig.read("zero", zero, size: 4096)) == [.data([UInt8](repeating: 0, count: 4096))]) }
        let zeroPool = rig.bridge.replyBuffers(of: zeroFile.deviceObject)
        #expect(zeroPool !== badPool)
        let zeroKept = rig.bridge.replyBuffers(of: zeroFile).kept
        #expect(zeroKept.count == 1)
        #expect(zeroKept.isDisjoint(with: used) && zeroPool.freeBuffers.isDisjoint(with: used))
        #expect(rig.bridge.replyBuffers(of: badFile).kept == used && badPool.freeBuffers.isEmpty)
        // Wait for the driver's late write while the device lives (it skips a device that is gone).
        let writes = MisbehaveDriver.lateWrites(on: badFile.deviceObject)
        _ = rig.read("misbehave", bad, size: 4096)
        #expect(waitUntil { MisbehaveDriver.lateWrites(on: badFile.deviceObject) > writes })
    }

    /// A driver that reports more Information than it wrote returns what the buffer
    /// held: with pooled buffers, another caller's data. Each handle reuses only its
    /// own buffers, and a buffer goes from one handle to another only zeroed.
    @Test func aDriverThatReportsBytesItNeverWroteNeverLeaksAnotherCallersData() throws {
        let rig = try Rig()
        let secret = [UInt8](repeating: 0x53, count: 4096), nothing = [UInt8](repeating: 0, count: 4096)
        let a = rig.open("misbehave")
        #expect(rig.sink.replies(rig.read("misbehave", a, size: 4096, offset: Int(MisbehaveDriver.secretOffset))) == [.data(secret)])
        // The same handle may see its own data again (its buffer, reused as it is) ...
        #expect(rig.sink.replies(rig.read("misbehave", a, size: 4096, offset: Int(MisbehaveDriver.secretOffset))) == [.data(secret)])
        #expect(rig.sink.replies(rig.read("misbehave", a, size: 4096, offset: Int(MisbehaveDriver.unwrittenOffset))) == [.data(secret)])
        // ... another handle never: while A is open, and after A closed and gave its buffers back.
        let b = rig.open("misbehave")
        #expect(rig.sink.replies(rig.read("misbehave", b, size: 4096, offset: Int(MisbehaveDriver.unwrittenOffset))) == [.data(nothing)])
        rig.close(a)
        let c = rig.open("misbehave")
        for _ in 0..<3 {
            #expect(rig.sink.replies(rig.read("misbehave", c, size: 4096, offset: Int(MisbehaveDriver.unwrittenOffset))) == [.data(nothing)])
        }
        #expect(rig.sink.replies(rig.read("misbehave", c, size: 2048, offset: Int(MisbehaveDriver.unwrittenOffset))) == [.data(Array(nothing.prefix(2048)))])
    }

    @Test func informationLargerThanTheOutputIsClampedAndReported() throws {
        let rig = try Rig()
        let bad = rig.open("misbehave")
        let r = rig.sink.replies(rig.ioctl(bad, code: MisbehaveDriver.Bug.informationTooLarge.code.rawValue, outputLength: 4))
        guard case .ioctl(let bytes)? = r.first else { Issue.record("\(r)"); return }
        #expect(bytes.count == 28)  // header + the 4 bytes the buffer has, not 104
        #expect(rig.rules == [.informationExceedsBuffer])
    }
}

@Suite struct LivingNamespaceTests {
    @Test func aToasterThatGoesIsInvalidatedInTheKernelEverywhereItWasSeen() throws {
        let rig = try Rig()
        let bus = rig.open("toaster-bus", flags: O_RDONLY)
        var input: [UInt8] = [8, 0, 0, 0, 1, 0, 0, 0]
        for u in "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster".utf16 { input += [UInt8(u & 0xFF), UInt8(u >> 8)] }
        input += [0, 0, 0, 0]
        let n = rig.ioctl(bus, code: 0x002A_4000, input: input)
        #expect(header(rig.sink.replies(n).first)?.status == .success)
        rig.io.waitForPnP()
        // A script looked at the toaster's node and its interface.
        let file = try #require(rig.bridge.inode(of: "toaster1"))
        let node = try #require(rig.bridge.treeInode(".devices/toaster-bus/toaster1"))
        let status = try #require(rig.bridge.treeInode(".devices/toaster-bus/toaster1/status"))
        let iface = try #require(rig.bridge.treeInode(".interfaces/{781EF630-72B2-11d2-B852-00C04FAD5171}/toaster1"))
        #expect(Set([file, node, status, iface]).count == 4)
        let before = rig.sink.invalidated.count
        let u = rig.ioctl(bus, code: 0x002A_4004, input: [16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(header(rig.sink.replies(u).first)?.status == .success)
        rig.io.waitForPnP()
        let invalidated = Array(rig.sink.invalidated.dropFirst(before))
        #expect(invalidated.contains("toaster1"))  // the device file, the node directory, the interface link
        // The node's files go with their directory (the kernel drops a directory's
        // dentries with it; their inodes derive from the directory's and resolve no more).
        #expect(rig.bridge.node(node) == nil && rig.bridge.node(iface) == nil && rig.bridge.node(file) == nil)
        #expect(rig.bridge.node(status) == nil)
        // Plugged in again, it is a new file and a new directory.
        _ = rig.ioctl(bus, code: 0x002A_4000, input: input)
        rig.io.waitForPnP()
        #expect(rig.bridge.inode(of: "toaster1") != file)
        #expect(rig.bridge.treeInode(".devices/toaster-bus/toaster1") != node)
    }
}

@Suite struct InodeKindTests {
    /// The one place inode ranges are read: every number has one kind, and only
    /// the bridge's own files are virtual (a device's file holds a file object).
    @Test func everyInodeNumberHasOneKind() {
        let cases: [(fuse_ino_t, InodeKind)] = [
            (1, .root), (2, .stats), (3, .power), (4, .verifier), (5, .deviceFile), (FuseBridge.treeBase - 1, .deviceFile),
            (FuseBridge.treeBase, .treeEntry), (FuseBridge.fileBase - 1, .treeEntry),
            (FuseBridge.fileBase, .nodeFile), (FuseBridge.fileBase + (7 << 5) + 3, .nodeFile),
        ]
        for (ino, kind) in cases { #expect(InodeKind(ino) == kind, "\(ino)") }
        #expect(cases.filter { InodeKind($0.0).isVirtual }.map(\.1) == [.stats, .power, .verifier, .treeEntry, .treeEntry, .nodeFile, .nodeFile])
        #expect(!InodeKind(1).isVirtual && !InodeKind(5).isVirtual)
    }
}
