// What the core promises whatever a driver does: a completion that arrives
// while the walk still runs is picked up without waiting; an IRP a driver kept
// and touches after it was reused changes nothing; memory a host lent to a
// request moves before the request can outlive it; no IRP reaches a driver on
// a handle that was never opened.

import Dispatch
import Foundation
import Synchronization
import Testing
@testable import WDM
import WDMTesting

@Suite struct CoreGuaranteeTests {
    @Test func aCompletionArrivingWhileTheWalkRunsIsPickedUpWithoutWaitingForIt() throws {
        let io = IOManager()
        let events = Recorder()
        let ready = DispatchSemaphore(value: 0)
        // The forward-and-wait pattern of every PnP START handler, with a completion
        // routine that is slow to return after it signalled the waiting thread.
        let forwardAndWait: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { _, _, _ in
                ready.signal()
                Thread.sleep(forTimeInterval: 0.2)
                events.add("routine returned")
                return .moreProcessingRequired
            }
            let status = device.callLower(irp)
            // The lower driver pends and completes on another thread: the pattern's
            // STATUS_PENDING branch (the test expects that status below).
            events.add("lower returned \(status)")
            if status == .pending { ready.wait() }
            // Marked before completing: once completed the IRP is not this driver's
            // (the walk picks it up on the other thread at once).
            irp.markPending()
            irp.complete(.success, information: 7)
            events.add("second completion returned")
            return .pending
        }
        let fdo: DispatchRoutine = { _, irp in
            irp.markPending()
            DispatchQueue.global().async { irp.complete(.deviceNotReady) }
            return .pending
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [[.read: forwardAndWait]])
        let built = io.statistics.irpsCompleted
        let host = EmbeddedHost(io)
        let r = host.read(try host.open("dev"), count: 8)
        #expect(r.status == .success)
        #expect(r.data.count == 7)
        // The second IoCompleteRequest did not wait for the routine: it was queued for the walk.
        #expect(events.all == ["lower returned STATUS_PENDING", "second completion returned", "routine returned"])
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
        #expect(io.statistics.irpsCompleted - built == 2)  // create, read
    }

    @Test func aDriverThatCompletesAnIrpAfterItWasReusedIsCaughtAndChangesNothing() throws {
        let io = IOManager()
        let kept = Mutex<IRP?>(nil)
        let parked = CancelSafeQueue()
        let fdo: DispatchRoutine = { _, irp in
            let p = irp.parameters.read
            if p.byteOffset == 0 {
                kept.withLock { $0 = irp }  // a bug: keeps the IRP after completing it
                irp.complete(.success, information: 1)
                return .success
            }
            return parked.insert(irp)  // the second request waits here
        }
        _ = try buildStack(io, function: [.read: fdo])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        #expect(host.read(f, count: 1).status == .success)
        let second = host.beginRead(f, count: 1, offset: 1)
        let stale = try #require(kept.withLock { $0 })
        #expect(second.pended)
        stale.complete(.unsuccessful)  // the packet now serves the second request
        stale.cancelIrp()
        io.freeIrp(stale)
        #expect(!second.wait(seconds: 0.1))  // untouched: still waiting in the driver
        #expect(io.verifier.violations.map(\.rule) == [.staleIrpUsed, .staleIrpUsed, .staleIrpUsed])
        parked.removeNext()!.complete(.success, information: 1)
        #expect(second.wait())
        #expect(second.status == .success)
    }

    @Test func aWriteThatPendsNoLongerReadsTheHostsMemory() throws {
        let io = IOManager()
        let parked = CancelSafeQueue()
        _ = try buildStack(io, flags: .directIO, function: [.write: { _, irp in parked.insert(irp) }])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let data = Array("the payload".utf8)
        let w = host.beginWrite(f, data)  // the host overwrites its buffer once send returned PENDING
        #expect(w.pended)
        let irp = try #require(parked.removeNext())
        #expect(Array(irp.transferBuffer) == data)
        irp.complete(.success, information: data.count)
        #expect(w.wait())
        #expect(w.information == data.count)
        #expect(io.statistics.bytesCopied == data.count)  // the one copy, made when it pended
    }

    /// Memory another process would map (a driver host's): hands out blocks of one buffer.
    final class SharedBlocks: StackMemory, @unchecked Sendable {
        let base = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        let given = HandoffMutex<(out: Int, back: Int)>((0, 0))
        deinit { base.deallocate() }
        func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer? {
            guard byteCount <= 1 << 16 else { return nil }
            given.withLock { $0.out += 1 }
            if zeroed { base.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount) }
            return base
        }
        func deallocate(_ block: UnsafeMutableRawPointer, byteCount: Int) { given.withLock { $0.back += 1 } }
        func owns(_ block: UnsafeRawPointer) -> Bool { block >= UnsafeRawPointer(base) && block < UnsafeRawPointer(base + (1 << 16)) }
    }

    @Test func aPendedWritesCopyIsMadeInTheStacksMemoryAndGivenBack() throws {
        let io = IOManager()
        let parked = CancelSafeQueue()
        let top = try buildStack(io, flags: .bufferedIO, function: [.write: { _, irp in parked.insert(irp) }])
        let shared = SharedBlocks()
        var d: DeviceObject? = top.deviceNode?.pdo
        while let x = d {
            x.stackMemory = shared
            d = x.attachedDevice
        }
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let data = Array("lands where the host can read it".utf8)
        let w = host.beginWrite(f, data)
        #expect(w.pended)
        let irp = try #require(parked.removeNext())
        #expect(shared.owns(irp.transferBuffer.baseAddress!))  // the driver sees the copy in shared memory
        #expect(Array(irp.transferBuffer) == data)
        #expect(shared.given.withLock { $0 } == (1, 0))
        irp.complete(.success, information: data.count)
        #expect(w.wait())
        #expect(io.statistics.bytesCopied == data.count)  // still the one copy
        #expect(shared.given.withLock { $0 } == (1, 1))  // and given back when the IRP was freed
    }

    @Test func anIoctlThatPendsAnswersFromTheIOManagersCopy() throws {
        let io = IOManager()
        let parked = CancelSafeQueue()
        let code = ControlCode(deviceType: 0x22, function: 0x900, method: .neither, access: [])
        _ = try buildStack(io, function: [.deviceControl: { _, irp in parked.insert(irp) }])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let call = host.beginDeviceIoControl(f, code, input: [1, 2, 3], outputLength: 3)
        #expect(call.pended)
        let irp = try #require(parked.removeNext())
        let p = irp.parameters.deviceIoControl
        let input = UnsafeRawBufferPointer(start: p.type3InputBuffer, count: 3)
        #expect(Array(input) == [1, 2, 3])  // the copy, not the host's overwritten buffer
        irp.userBuffer!.storeBytes(of: 0x99, as: UInt8.self)
        irp.complete(.success, information: 1)
        #expect(call.wait())
        #expect(call.data == [0x99])
    }

    @Test func requestsThatCompleteDuringDispatchCopyNothing() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.write: { _, irp in
            irp.complete(.success, information: irp.parameters.write.length)
            return .success
        }])
        let host = EmbeddedHost(io)
        let w = host.beginWrite(try host.open("dev"), [1, 2, 3, 4])
        #expect(!w.pended)
        #expect(w.wait())
        #expect(io.statistics.bytesCopied == 0)
    }

    @Test func noDriverSeesARequestOnAHandleThatIsNotOpen() throws {
        let io = IOManager()
        let seen = Recorder()
        _ = try buildStack(io, function: [.read: { _, irp in
            seen.add("read")
            irp.complete(.success)
            return .success
        }])
        let file = try io.open("dev", access: .readData)
        #expect(io.close(file).close == .success)
        let r = EmbeddedHost(io).read(file, count: 1)
        #expect(r.status == .invalidHandle)
        #expect(io.close(file).cleanup == .invalidHandle)  // closing twice
        #expect(seen.all.isEmpty)
    }

    @Test func shutdownCancelsWhatDriversHoldAndReportsWhatNeverCompletes() throws {
        let io = IOManager()
        let queue = CancelSafeQueue()
        let held = Mutex<[IRP]>([])
        _ = try buildStack(io, function: [.read: { _, irp in
            if irp.parameters.read.byteOffset == 0 { return queue.insert(irp) }  // cancellable
            irp.markPending()
            held.withLock { $0.append(irp) }  // no cancel routine: never completes
            return .pending
        }])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let a = host.beginRead(f, count: 1, offset: 0)
        let b = host.beginRead(f, count: 1, offset: 1)
        let left = io.cancelOutstanding(grace: 0.2)
        #expect(a.wait())
        #expect(a.status == .cancelled)
        #expect(!b.wait(seconds: 0.05))
        #expect(left.count == 1)
        #expect(io.verifier.violations.map(\.rule) == [.neverCompleted])
    }

    /// A driver that keeps a CREATE forever (no cancel routine), and the host ends:
    /// the waiting opener is answered STATUS_CANCELLED once the grace is over, woken
    /// by the shutdown itself (no timer), and the driver's late completion frees
    /// the abandoned IRP instead of waking anyone.
    @Test func shutdownReleasesASynchronousCallerADriverNeverAnswers() throws {
        let io = IOManager()
        io.shutdownGrace = 0.2
        let held = Mutex<[IRP]>([])
        let entered = DispatchSemaphore(value: 0)
        _ = try buildStack(io, function: [.create: { _, irp in
            irp.markPending()
            held.withLock { $0.append(irp) }
            entered.signal()
            return .pending
        }])
        let host = EmbeddedHost(io)
        let result = Mutex<NTStatus?>(nil)
        let opened = DispatchSemaphore(value: 0)
        Thread {
            do throws(NTStatus) { _ = try host.open("dev") } catch { result.withLock { $0 = error } }
            opened.signal()
        }.start()
        entered.wait()
        #expect(opened.wait(timeout: .now() + 0.3) == .timedOut)  // the driver holds it
        let left = io.beginShutdown()
        #expect(left.count == 1)
        opened.wait()
        #expect(result.withLock { $0 } == .cancelled)
        #expect(io.verifier.violations.map(\.detail).contains("a synchronous request abandoned at shutdown"))
        #expect(io.outstandingIrps.isEmpty)  // abandoned: no longer the host's
        // The late completion frees the IRP (ASan and the pool's checks watch it).
        let before = io.statistics.irpsCompleted
        held.withLock { $0 }[0].complete(.success)
        #expect(io.statistics.irpsCompleted == before + 1)
        #expect(io.outstandingIrps.isEmpty)
        #expect(io.beginShutdown().isEmpty)  // once
    }

    /// A synchronous wait that starts after the shutdown began gives up by itself
    /// after the grace (nobody would wake it).
    @Test func aSynchronousWaitThatStartsAfterTheShutdownGivesUpByItself() throws {
        let io = IOManager()
        io.shutdownGrace = 0.1
        _ = try buildStack(io, function: [.create: { _, irp in
            irp.markPending()
            return .pending  // kept, no cancel routine
        }])
        io.beginShutdown()
        let host = EmbeddedHost(io)
        #expect(throws: NTStatus.cancelled) { _ = try host.open("dev") }
        #expect(io.verifier.violations.map(\.detail).contains("a synchronous request abandoned at shutdown"))
    }
}
