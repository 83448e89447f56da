// The framework's own promises, each on a small driver written for it: KMDF's
// callback order through start, sleep, wake, stop and removal; sequential,
// parallel and manual queues; a cancel while a request waits; forwarding to
// another queue and to the lower device; purge at surprise removal and drain at
// remove; buffers wherever the method put them; a dropped request completed and
// reported; objects deleted with their device.

import DefaultTree
import Foundation
import Synchronization
import Testing
import ToasterPublic
import WDF
import WDMTesting

/// What a test driver's callbacks and handlers saw, and the requests it holds
/// (marked cancellable: a held request is a class the test may keep).
final class FxProbe: @unchecked Sendable {
    let log = Recorder()
    let held = Mutex<[CancellableRequest]>([])
    /// Framework objects a test keeps a reference to (past their device, if it likes).
    let kept = Mutex<[FrameworkObject]>([])
    var heldCount: Int { held.withLock { $0.count } }

    /// Completes the oldest held request with `status`.
    func completeOldest(_ status: NTStatus = .success, information: Int = 0) {
        let c = held.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        c?.unmark()?.complete(status, information: information)
    }

    func hold(_ request: consuming Request) {
        let c = request.markCancellable { $0.complete(.cancelled) }
        held.withLock { $0.append(c) }
    }
}

final class FxContext: Sendable {
    let probe: FxProbe
    let second: Queue?
    init(_ probe: FxProbe, second: Queue? = nil) {
        self.probe = probe
        self.second = second
    }
}

@Suite struct FrameworkTests {
    /// A root device `fx` whose framework driver logs every callback and gives its
    /// reads and writes to a queue of `dispatch` that holds each request.
    func rig(_ dispatch: Queue.Dispatch = .sequential, configure: (@Sendable (Device<FxContext>, FxProbe) -> Void)? = nil)
        throws -> (IOManager, EmbeddedHost, FxProbe, DeviceNode) {
        let io = IOManager()
        io.verifier.scope = .all
        let probe = FxProbe()
        let driver = try io.loadDriver(name: "FxProbe", entry: Framework.functionDriver { (device: Device<FxContext>) in
            let log = probe.log
            device.onPrepareHardware { _ in log.add("prepare hardware"); return .success }
            device.onReleaseHardware { _ in log.add("release hardware") }
            device.onD0Entry { _, from in log.add("D0 entry from \(from)"); return .success }
            device.onD0Exit { _, to in log.add("D0 exit to \(to)") }
            device.onSelfManagedIO(initialize: { _ in log.add("self-managed init") }, suspend: { _ in log.add("self-managed suspend") },
                                   restart: { _ in log.add("self-managed restart") }, cleanup: { _ in log.add("self-managed cleanup") })
            device.onSurpriseRemoval { _ in log.add("surprise removal") }
            device.onCleanup { log.add("device deleted") }
            if let configure {
                configure(device, probe)
            } else {
                device.queue(dispatch, for: [.read, .write]) { device, request in
                    device.context.probe.log.add("presented \(request.major.wdmName)")
                    device.context.probe.hold(request)
                }
            }
            return FxContext(probe)
        })
        let pdo = try io.addRootDevice(instanceName: "fx", functionDriver: driver)
        io.waitForPnP()
        return (io, EmbeddedHost(io), probe, try #require(pdo.deviceNode))
    }

    @Test func theCallbacksRunInKMDFsOrderThroughStartSleepWakeStopAndRemove() throws {
        let (io, _, probe, node) = try rig()
        #expect(probe.log.all == ["prepare hardware", "D0 entry from D3", "self-managed init"])
        var mark = probe.log.all.count
        io.setSystemPower(.sleeping3)
        #expect(Array(probe.log.all.dropFirst(mark)) == ["self-managed suspend", "D0 exit to D3"])
        mark = probe.log.all.count
        io.setSystemPower(.working)
        #expect(Array(probe.log.all.dropFirst(mark)) == ["D0 entry from D3", "self-managed restart"])
        mark = probe.log.all.count
        #expect(io.rebalance(node).isSuccess)  // QUERY_STOP, STOP, START
        #expect(Array(probe.log.all.dropFirst(mark)) == [
            "self-managed suspend", "D0 exit to D3", "release hardware",
            "prepare hardware", "D0 entry from D3", "self-managed restart",
        ])
        mark = probe.log.all.count
        #expect(io.remove(node).isSuccess)
        #expect(Array(probe.log.all.dropFirst(mark)) == [
            "self-managed suspend", "D0 exit to D3", "release hardware", "self-managed cleanup", "device deleted",
        ])
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aSequentialQueuePresentsOneRequestAtATime() throws {
        let (io, host, probe, _) = try rig(.sequential)
        let f = try host.open("fx")
        let writes = (0..<3).map { host.beginWrite(f, [UInt8($0)]) }
        #expect(waitUntil { probe.heldCount == 1 })
        #expect(!waitUntil(seconds: 0.1) { probe.heldCount > 1 })
        for i in 0..<3 {
            probe.completeOldest(.success, information: 1)
            #expect(writes[i].wait() && writes[i].status == .success)
            if i < 2 { #expect(waitUntil { probe.heldCount == 1 }) }
        }
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aParallelQueuePresentsUpToItsLimit() throws {
        let (io, host, probe, _) = try rig(.parallel(limit: 2))
        let f = try host.open("fx")
        let writes = (0..<5).map { host.beginWrite(f, [UInt8($0)]) }
        #expect(waitUntil { probe.heldCount == 2 })
        #expect(!waitUntil(seconds: 0.1) { probe.heldCount > 2 })
        probe.completeOldest()
        #expect(waitUntil { probe.heldCount == 2 && probe.log.all.filter { $0.hasPrefix("presented") }.count == 3 })
        while probe.heldCount > 0 || probe.log.all.filter({ $0.hasPrefix("presented") }).count < 5 {
            probe.completeOldest()
            _ = waitUntil { probe.heldCount > 0 || probe.log.all.filter { $0.hasPrefix("presented") }.count == 5 }
        }
        #expect(writes.allSatisfy { $0.wait() && $0.status == .success })
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aManualQueueHoldsRequestsUntilTakenAndACancelledOneIsCompletedByTheFramework() throws {
        let manual = Mutex<Queue?>(nil)
        let (io, host, _, _) = try rig(configure: { device, _ in
            let q = device.manualQueue()
            manual.withLock { $0 = q }
            // Reads wait in the manual queue; a write takes the oldest one and answers it.
            device.queue(.sequential, for: [.read, .write]) { device, request in
                if request.major == .read { return request.forward(to: q) }
                let n = request.length
                request.complete(.success, information: n)
                if let r = q.next() {
                    let out = try? r.output()
                    out?.storeBytes(of: 0x41, as: UInt8.self)
                    r.complete(.success, information: 1)
                }
            }
        })
        let q = try #require(manual.withLock { $0 })
        let f = try host.open("fx")
        let first = host.beginRead(f, count: 4)
        let second = host.beginRead(f, count: 4)
        #expect(waitUntil { q.count == 2 })
        #expect(second.cancel())
        #expect(second.wait() && second.status == .cancelled)  // completed by the framework
        #expect(q.count == 1)
        #expect(host.write(f, [1]).status == .success)
        #expect(first.wait() && first.status == .success && first.data == [0x41])
        #expect(q.count == 0 && q.next() == nil)
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aRequestForwardedToAnotherQueueIsPresentedByIt() throws {
        let (io, host, probe, _) = try rig(configure: { device, probe in
            let other = device.queue(.parallel()) { device, request in
                device.context.probe.log.add("second queue \(request.major.wdmName)")
                let n = request.length
                request.complete(.success, information: n)
            }
            device.queue(.sequential, for: [.write]) { _, request in
                probe.log.add("first queue")
                request.forward(to: other)
            }
        })
        let f = try host.open("fx")
        #expect(host.write(f, [1, 2, 3]).information == 3)
        #expect(probe.log.all.suffix(2) == ["first queue", "second queue IRP_MJ_WRITE"])
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aDroppedRequestIsCompletedWithAnErrorAndReported() throws {
        let (io, host, _, _) = try rig(configure: { device, _ in
            device.queue(.parallel(), for: [.write]) { _, request in
                _ = request.length  // looked at, then let go: neither completed nor forwarded
            }
        })
        let f = try host.open("fx")
        #expect(host.write(f, [1]).status == .driverInternalError)
        #expect(io.verifier.violations.map(\.rule) == [.requestDropped])
        #expect(io.verifier.violations.first?.driver == "\\Driver\\FxProbe")
        host.close(f)
    }

    /// Inline presentation: a request the handler completes at once never pends,
    /// so the host's borrowed data is not copied; one it keeps pends at that
    /// moment and its data is copied once, before the host's buffer is reused.
    @Test func aRequestCompletedInItsHandlerIsNotPendedNorCopiedAndOneKeptIsCopiedOnce() throws {
        let code = ControlCode(deviceType: DeviceType.unknown, function: 0x900, method: .buffered, access: [])
        let (io, host, probe, _) = try rig(.parallel(), configure: { device, probe in
            device.queue(.parallel(), for: [.write, .deviceControl]) { _, request in
                // A request whose first byte is 0xFF is kept; the others are completed here.
                guard let input = try? request.input(minimumLength: 1), input[0] != 0xFF else { return probe.hold(request) }
                let n = request.major == .write ? input.count : 0
                request.complete(.success, information: n)
            }
        })
        let f = try host.open("fx")
        let now = [host.beginWrite(f, [1, 2, 3, 4]), host.beginDeviceIoControl(f, code, input: [1, 2, 3, 4])]
        #expect(now.allSatisfy { !$0.pended && $0.wait() && $0.status == .success })
        #expect(now[0].information == 4)
        #expect(io.statistics.bytesCopied == 0 && io.statistics.irpsPended == 0, "\(io.statistics)")

        let kept = [host.beginWrite(f, [0xFF, 2, 3, 4]), host.beginDeviceIoControl(f, code, input: [0xFF, 2, 3, 4])]
        #expect(kept.allSatisfy(\.pended) && probe.heldCount == 2)
        #expect(io.statistics.bytesCopied == 8 && io.statistics.irpsPended == 2, "\(io.statistics)")
        // The driver reads the kept data from the I/O manager's copy (the host's buffer is 0xEE now).
        let held = probe.held.withLock { h in defer { h = [] }; return h }
        for c in held {
            guard let r = c.unmark() else {
                Issue.record("a kept request was taken by a cancel")
                continue
            }
            let first = (try? r.input(minimumLength: 1))?[0]
            r.complete(first == 0xFF ? .success : .unsuccessful)
        }
        #expect(kept.allSatisfy { $0.wait() && $0.status == .success })
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    /// A request that finds its queue busy (a sequential queue presenting another)
    /// waits, pending, and is presented once the first is finished.
    @Test func aRequestThatFindsItsQueueBusyWaitsPendingAndIsPresentedLater() throws {
        let (io, host, probe, _) = try rig(.sequential)
        let f = try host.open("fx")
        let first = host.beginWrite(f, [1])
        #expect(first.pended && probe.heldCount == 1)
        let second = host.beginWrite(f, [2, 3])
        #expect(second.pended && probe.heldCount == 1)
        #expect(io.statistics.bytesCopied == 3, "\(io.statistics)")
        probe.completeOldest(.success, information: 1)
        #expect(first.wait() && waitUntil { probe.heldCount == 1 })
        probe.completeOldest(.success, information: 2)
        #expect(second.wait() && second.status == .success && second.information == 2)
        #expect(probe.log.all.filter { $0.hasPrefix("presented") }.count == 2)
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test(arguments: TransferMethod.allCases)
    func inputAndOutputAreWhereverTheMethodPutThem(_ method: TransferMethod) throws {
        let (_, host, _, _) = try rig(configure: { device, _ in
            device.queue(.parallel(), for: [.deviceControl]) { _, request in
                do throws(NTStatus) {
                    let input = try request.input(minimumLength: 1)
                    let output = try request.output(minimumLength: input.count)
                    for i in 0..<input.count { output[i] = input[i] ^ 0x20 }
                    request.complete(.success, information: input.count)
                } catch {
                    request.complete(error)
                }
            }
        })
        let f = try host.open("fx")
        let code = ControlCode(deviceType: DeviceType.unknown, function: 0x900, method: method, access: [])
        let r = host.deviceIoControl(f, code, input: Array("abc".utf8), outputLength: 8)
        #expect(r.status == .success && r.output == Array("ABC".utf8), "\(method): \(r)")
        #expect(host.deviceIoControl(f, code, input: Array("abc".utf8), outputLength: 2).status == .bufferTooSmall)
        #expect(host.deviceIoControl(f, code, input: [], outputLength: 8).status == .bufferTooSmall)
        host.close(f)
    }

    @Test func aFilterForwardsToTheLowerDeviceAndSeesTheCompletion() throws {
        let io = IOManager()
        io.verifier.scope = .all
        let seen = Recorder()
        let function = try io.loadDriver(name: "Below") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: [.bufferedIO]) }
            d.majorFunction.succeed([.create, .cleanup, .close])
            d.majorFunction[.pnp] = PnP.functionDispatch()
            d.majorFunction[.power] = Power.functionDispatch
            d.majorFunction[.read] = { _, irp in
                irp.transferBuffer.initializeMemory(as: UInt8.self, repeating: 7)
                irp.complete(.success, information: irp.parameters.read.length)
                return .success
            }
            return .success
        }
        let filter = try io.loadDriver(name: "FxAbove", entry: Framework.filterDriver { (device: Device<NoContext>) in
            device.queue(.parallel(), for: [.read]) { _, request in
                request.forwardToLower { request in
                    seen.add("completed below with \(request.status), \(request.information) bytes")
                    let out = try? request.output()
                    out?.storeBytes(of: 9, as: UInt8.self)  // the filter changes the first byte on the way up
                    let (status, n) = (request.status, request.information)
                    request.complete(status, information: n)
                }
            }
            return NoContext()
        })
        _ = try io.addRootDevice(instanceName: "pair", functionDriver: function, upperFilters: [filter])
        io.waitForPnP()
        let host = EmbeddedHost(io)
        let f = try host.open("pair")
        let r = host.read(f, count: 3)
        #expect(r.status == .success && r.data == [9, 7, 7])
        #expect(seen.all == ["completed below with STATUS_SUCCESS, 3 bytes"])
        // Without a queue for it, a filter sends a request down untouched.
        #expect(host.write(f, [1]).status == .invalidDeviceRequest)  // the function driver has no write
        host.close(f)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }
}

/// Purge and drain need a device that can be surprise-removed: a toaster-bus
/// child with a framework driver of the test's own.
@Suite struct FrameworkRemovalTests {
    static let hardwareID = "Test\\FxQueues"

    func rig(purgeAtSurpriseRemoval status: NTStatus? = nil) throws -> (IOManager, EmbeddedHost, FileObject, FxProbe) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        io.verifier.scope = .all
        let probe = FxProbe()
        let driver = try io.loadDriver(name: "FxQueues", entry: Framework.functionDriver { (device: Device<FxContext>) in
            // Writes are held (in flight); reads wait in a second queue that is stopped for good.
            let waiting = device.manualQueue()
            probe.kept.withLock { $0.append(waiting) }
            if let status { device.onSurpriseRemoval { _ in waiting.purge(status) } }
            device.queue(.parallel(), for: [.write]) { _, request in probe.hold(request) }
            device.queue(.sequential, for: [.read]) { _, request in request.forward(to: waiting) }
            device.onCleanup { probe.log.add("device deleted") }
            return FxContext(probe, second: waiting)
        })
        let matcher = io.driverMatcher!
        io.driverMatcher = { bus, hw, compat in hw == [Self.hardwareID] ? ([], driver, []) : matcher(bus, hw, compat) }
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: 1, hardwareIDs: [Self.hardwareID])).status == .success)
        io.waitForPnP()
        return (io, host, bus, probe)
    }

    @Test func surpriseRemovalPurgesWhatWaitsAndRemoveDrainsWhatIsInFlight() throws {
        let (io, host, bus, probe) = try rig()
        let node = try #require(io.allDeviceNodes.first { $0.instanceName == "toaster1" })
        let f = try host.open("toaster1")
        let read = host.beginRead(f, count: 4)  // waits in the manual queue
        let write = host.beginWrite(f, [1])  // presented and held: in flight
        #expect(waitUntil { probe.heldCount == 1 })
        #expect(read.pended && !read.wait(seconds: 0.05))
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        io.waitForPnP()
        #expect(node.state == .surpriseRemoved)
        #expect(read.wait() && read.status == .cancelled)  // purged
        #expect(!write.wait(seconds: 0.05))  // in flight: the driver's to finish
        // The last handle closes: REMOVE_DEVICE drains, waiting for the write in flight.
        let closed = Event()
        DispatchQueue.global().async {
            host.close(f)
            closed.signal()
        }
        // (The node's fields are the executor's: the test watches the driver's log, and
        // reads the node only once the PnP manager is idle.)
        #expect(!waitUntil(seconds: 0.2) { probe.log.all.contains("device deleted") })
        probe.completeOldest(.success, information: 1)
        #expect(write.wait() && write.status == .success)
        #expect(waitUntil { probe.log.all.contains("device deleted") })
        closed.wait()
        io.waitForPnP()
        #expect(node.state == .removed)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aQueueGoesWithItsDeviceAndOneKeptPastItLosesItsParent() throws {
        let (io, host, bus, probe) = try rig()
        let queue = try #require(probe.kept.withLock { $0.first })
        #expect(queue.parent is AnyDevice && !queue.isDeleted)
        #expect(queue.parent?.children.contains { $0 === queue } == true)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        #expect(waitUntil { probe.log.all.contains("device deleted") })
        io.waitForPnP()
        #expect(queue.isDeleted)
        #expect(queue.parent == nil)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aQueueTheDriverPurgedAtSurpriseRemovalKeepsItsStatusForLateRequests() throws {
        let (io, host, bus, probe) = try rig(purgeAtSurpriseRemoval: .noSuchDevice)
        let queue = try #require(probe.kept.withLock { $0.first as? Queue })
        let f = try host.open("toaster1")
        let read = host.beginRead(f, count: 4)  // waits in the manual queue
        let write = host.beginWrite(f, [1])  // held by the driver
        #expect(waitUntil { probe.heldCount == 1 })
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        io.waitForPnP()
        #expect(read.wait() && read.status == .noSuchDevice)  // the driver's purge, not the framework's
        // The driver moves the request it held to the purged queue: refused with the driver's status.
        let held = probe.held.withLock { list -> CancellableRequest? in list.isEmpty ? nil : list.removeFirst() }
        guard let request = held?.unmark() else { Issue.record("no held write, or it was cancelled"); return }
        request.forward(to: queue)
        #expect(write.wait() && write.status == .noSuchDevice)
        host.close(f)
        #expect(waitUntil { probe.log.all.contains("device deleted") })
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aDeletedQueueRefusesRequestsEvenWhenResumed() throws {
        let (io, host, bus, probe) = try rig()
        // A second toaster of the same driver: its held write is moved to the first one's queue once that is gone.
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: 2, hardwareIDs: [Self.hardwareID])).status == .success)
        io.waitForPnP()
        let gone = try #require(probe.kept.withLock { $0.first as? Queue })
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        #expect(waitUntil { probe.log.all.contains("device deleted") })
        #expect(gone.isDeleted)
        gone.resume()  // a driver's mistake: the queue stays shut
        let f = try host.open("toaster2")
        let write = host.beginWrite(f, [1])
        #expect(waitUntil { probe.heldCount == 1 })
        let held = probe.held.withLock { list -> CancellableRequest? in list.isEmpty ? nil : list.removeFirst() }
        guard let request = held?.unmark() else { Issue.record("no held write, or it was cancelled"); return }
        request.forward(to: gone)
        #expect(write.wait() && write.status == .invalidDeviceState)
        #expect(gone.count == 0)
        host.close(f)
    }
}

