// How IRPs move through a stack: stack locations, skip versus copy, completion
// routines and their flags, STATUS_MORE_PROCESSING_REQUIRED, pending.

import Dispatch
import Foundation
import Testing
@testable import WDM
import WDMTesting

@Suite struct IRPFlowTests {
    @Test func eachDeviceSeesItsOwnStackLocation() throws {
        let io = IOManager()
        let seen = Recorder()
        let record: DispatchRoutine = { device, irp in
            seen.add("\(who(device))@\(irp.currentLocation)/\(irp.stackCount) dev=\(who(irp.currentStackLocation.deviceObject))")
            if device.lowerDevice?.driverObject.name.contains("Test") == true {
                irp.copyCurrentStackLocationToNext()
                return device.callLower(irp)
            }
            irp.complete(.success)
            return .success
        }
        let pdo = try buildStack(io, function: [.read: record], filters: [[.read: record], [.read: record]])
        #expect(pdo.topOfStack.stackSize == 4)  // PDO, FDO, two filters
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        _ = host.read(f, count: 4)
        #expect(seen.all == [
            "TestFilter1@4/4 dev=TestFilter1",
            "TestFilter0@3/4 dev=TestFilter0",
            "TestFunction@2/4 dev=TestFunction",
        ])
    }

    @Test func skipGivesTheLowerDriverTheSameLocationAndCopyGivesItTheNext() throws {
        let io = IOManager()
        let seen = Recorder()
        let fdo: DispatchRoutine = { _, irp in
            seen.add("fdo@\(irp.currentLocation) len=\(irp.parameters.read.length)")
            irp.complete(.success)
            return .success
        }
        let skipping: DispatchRoutine = { device, irp in
            seen.add("skip@\(irp.currentLocation)")
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        let copying: DispatchRoutine = { device, irp in
            seen.add("copy@\(irp.currentLocation)")
            irp.copyCurrentStackLocationToNext()
            #expect(irp.nextStackLocation.parameters.read.length == irp.parameters.read.length)
            #expect(irp.nextStackLocation.completionRoutine == nil)
            return device.callLower(irp)
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [[.read: copying], [.read: skipping]])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 7)
        // skip at 4 leaves location 4 for the copier; the copier at 4 hands location 3 to the FDO.
        #expect(seen.all == ["skip@4", "copy@4", "fdo@3 len=7"])
    }

    @Test func completionRoutinesRunBottomUpAndHonourTheirFlags() throws {
        let io = IOManager()
        let seen = Recorder()
        func filter(_ name: String, success: Bool, error: Bool) -> DispatchRoutine {
            { device, irp in
                irp.copyCurrentStackLocationToNext()
                irp.setCompletionRoutine({ dev, irp, _ in
                    seen.add("\(name) sees \(irp.ioStatus.status) as \(who(dev))")
                    return .success
                }, invokeOnSuccess: success, invokeOnError: error, invokeOnCancel: false)
                return device.callLower(irp)
            }
        }
        let fdo: DispatchRoutine = { _, irp in
            let status: NTStatus = irp.parameters.read.length == 1 ? .success : .deviceNotReady
            irp.complete(status)
            return status
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [
            [.read: filter("lower", success: true, error: true)],
            [.read: filter("upper-success-only", success: true, error: false)],
        ])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        #expect(host.read(f, count: 1).status == .success)
        #expect(seen.all == [
            "lower sees STATUS_SUCCESS as TestFilter0",
            "upper-success-only sees STATUS_SUCCESS as TestFilter1",
        ])
        #expect(host.read(f, count: 2).status == .deviceNotReady)
        #expect(seen.all.count == 3)
        #expect(seen.all.last == "lower sees STATUS_DEVICE_NOT_READY as TestFilter0")
    }

    @Test func aCancelOnlyCompletionRoutineRunsOnlyForCancelledIrps() throws {
        let io = IOManager()
        let seen = Recorder()
        let queue = CancelSafeQueue()
        let fdo: DispatchRoutine = { _, irp in
            if irp.parameters.read.length == 1 { return queue.insert(irp) }  // waits to be cancelled
            irp.complete(.deviceNotReady)
            return .deviceNotReady
        }
        let filter: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine({ _, irp, _ in
                seen.add("cancel routine saw \(irp.ioStatus.status)")
                if irp.pendingReturned { irp.markPending() }
                return .success
            }, invokeOnSuccess: false, invokeOnError: false, invokeOnCancel: true)
            return device.callLower(irp)
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [[.read: filter]])
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        #expect(host.read(file, count: 2).status == .deviceNotReady)
        #expect(seen.all.isEmpty)
        let pending = host.beginRead(file, count: 1)
        #expect(pending.cancel())
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
        #expect(seen.all == ["cancel routine saw STATUS_CANCELLED"])
    }

    @Test func moreProcessingRequiredHandsTheIrpBackToTheDriver() throws {
        let io = IOManager()
        let seen = Recorder()
        final class Event: @unchecked Sendable { let s = DispatchSemaphore(value: 0) }
        // The synchronous-forward pattern: send down, wait, look at the result, complete again.
        let syncForward: DispatchRoutine = { device, irp in
            let event = Event()
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine({ _, irp, ctx in
                seen.add("routine: pendingReturned=\(irp.pendingReturned)")
                (ctx as! Event).s.signal()
                return .moreProcessingRequired
            }, context: event)
            // The lower driver pends, so this is the STATUS_PENDING branch of the
            // pattern: wait for the routine (had it not pended, the routine would
            // already have run and there would be nothing to wait for).
            let status = device.callLower(irp)
            seen.add("lower returned \(status)")
            if status == .pending { event.s.wait() }
            seen.add("filter owns it again: \(irp.ioStatus.status)")
            irp.complete(.success, information: 42)  // the filter's verdict replaces the lower one
            return .success
        }
        let fdo: DispatchRoutine = { _, irp in
            irp.markPending()
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.02) { irp.complete(.deviceNotReady) }
            return .pending
        }
        let upperRoutineSaw = Recorder()
        let upper: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine({ _, irp, _ in
                upperRoutineSaw.add("\(irp.ioStatus.status) \(irp.ioStatus.information)")
                return .success
            })
            return device.callLower(irp)
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [[.read: syncForward], [.read: upper]])
        let host = EmbeddedHost(io)
        let result = host.read(try host.open("dev"), count: 64)
        #expect(result.status == .success)
        #expect(result.data.count == 42)
        #expect(seen.all == ["lower returned STATUS_PENDING", "routine: pendingReturned=true", "filter owns it again: STATUS_DEVICE_NOT_READY"])
        #expect(upperRoutineSaw.all == ["STATUS_SUCCESS 42"])
        #expect(io.verifier.count == 0, "\(io.verifier.violations)")
    }

    @Test func pendingIrpCompletesLaterFromAnotherThreadAndPendingReturnedPropagates() throws {
        let io = IOManager()
        let seen = Recorder()
        let fdo: DispatchRoutine = { _, irp in
            irp.markPending()
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: 0.05)
                irp.transferBuffer.baseAddress!.storeBytes(of: 0x5A, as: UInt8.self)
                irp.complete(.success, information: 1)
            }
            return .pending
        }
        let filter: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine({ _, irp, _ in
                seen.add("filter routine: pendingReturned=\(irp.pendingReturned)")
                if irp.pendingReturned { irp.markPending() }
                return .success
            })
            let status = device.callLower(irp)
            seen.add("filter got \(status)")
            return status
        }
        _ = try buildStack(io, function: [.read: fdo], filters: [[.read: filter]])
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        let mainThread = Thread.current
        let pending = host.beginRead(file, count: 1)
        #expect(seen.all == ["filter got STATUS_PENDING"])
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .success)
        #expect(pending.data == [0x5A])
        #expect(seen.all.last == "filter routine: pendingReturned=true")
        _ = mainThread
        #expect(io.statistics.irpsPended >= 1)
        #expect(io.verifier.count == 0, "\(io.verifier.violations)")
    }

    @Test func cancellingAQueuedIrpCompletesItCancelled() throws {
        let io = IOManager()
        let queue = CancelSafeQueue()
        let fdo: DispatchRoutine = { _, irp in queue.insert(irp) }
        _ = try buildStack(io, function: [.read: fdo])
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        let pending = host.beginRead(file, count: 8)
        #expect(queue.count == 1)
        #expect(!pending.wait(seconds: 0.05))
        #expect(pending.cancel())
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
        #expect(queue.count == 0)
        #expect(io.statistics.irpsCancelled == 1)
        // A cancel that comes after completion finds nothing to do.
        #expect(!pending.cancel())
    }

    @Test func anIrpCancelledBeforeItIsQueuedIsCompletedByTheQueue() throws {
        let io = IOManager()
        let queue = CancelSafeQueue()
        let fdo: DispatchRoutine = { _, irp in
            irp.cancelIrp()  // as if the interrupt won the race
            return queue.insert(irp)
        }
        _ = try buildStack(io, function: [.read: fdo])
        let host = EmbeddedHost(io)
        let result = host.read(try host.open("dev"), count: 8)
        #expect(result.status == .cancelled)
        #expect(queue.count == 0)
    }

    @Test func cleanupComesBeforeCloseAndCancelsWhatTheHandleLeftQueued() throws {
        let io = IOManager()
        let seen = Recorder()
        let queue = CancelSafeQueue()
        let routines: [MajorFunction: DispatchRoutine] = [
            .create: { _, irp in seen.add("create"); irp.complete(.success); return .success },
            .read: { _, irp in queue.insert(irp) },
            .cleanup: { _, irp in
                seen.add("cleanup cancels \(queue.cancelAll(for: irp.fileObject!))")
                irp.complete(.success)
                return .success
            },
            .close: { _, irp in seen.add("close"); irp.complete(.success); return .success },
        ]
        _ = try buildStack(io, function: routines)
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        let pending = host.beginRead(file, count: 8)
        let result = host.close(file)
        #expect(result.cleanup == .success && result.close == .success)
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
        #expect(seen.all == ["create", "cleanup cancels 1", "close"])
    }
}

@Suite struct RequesterTests {
    /// Records what the I/O manager tells the requester, in order.
    final class Log: IRPRequester, @unchecked Sendable {
        let events = Recorder()
        let done = DispatchSemaphore(value: 0)
        let byte = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
        deinit { byte.deallocate() }
        func irpPending(_ irp: IRP) { events.add("pending") }
        func irpCompleted(_ irp: IRP) {
            events.add("completed \(irp.ioStatus.status) async=\(irp.completedAsynchronously)")
            done.signal()
        }
    }

    func send(_ io: IOManager, _ requester: Log) throws -> NTStatus {
        let file = try io.open("dev", access: .readData)
        return io.send(.read(buffer: requester.byte, length: 1, offset: 0), on: file, requester: requester)
    }

    @Test func aPendingIrpIsAnnouncedBeforeItIsDeliveredFromTheCompletingThread() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.markPending()
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { irp.complete(.success) }
            return .pending
        }])
        let log = Log()
        #expect(try send(io, log) == .pending)
        #expect(log.done.wait(timeout: .now() + 5) == .success)
        #expect(log.events.all == ["pending", "completed STATUS_SUCCESS async=true"])
    }

    @Test func anIrpCompletedBeforeDispatchReturnsPendingIsDeliveredOnTheSubmittingThread() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.markPending()
            irp.complete(.success)  // legal: marked pending, so it must return STATUS_PENDING
            return .pending
        }])
        let log = Log()
        #expect(try send(io, log) == .success)
        #expect(log.events.all == ["pending", "completed STATUS_SUCCESS async=false"])
        #expect(io.verifier.count == 0, "\(io.verifier.violations)")
    }

    @Test func aSynchronousIrpIsNeverAnnouncedAsPending() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success)
            return .success
        }])
        let log = Log()
        #expect(try send(io, log) == .success)
        #expect(log.events.all == ["completed STATUS_SUCCESS async=false"])
    }
}
