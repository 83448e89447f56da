// The pending rules when the completion races with the dispatch routine's
// return: the lower driver completes on another thread at once, so sometimes
// the walk ends before the filter's STATUS_PENDING reaches the verifier and
// sometimes after. Either way a filter that propagates the mark is clean and one
// that never marks is reported exactly once per request, never twice, never not.

import Dispatch
import Synchronization
import Testing
@testable import WDM
import WDMTesting

@Suite struct VerifierRaceTests {
    static let requests = 1000

    /// Pends every read and completes it at once on another thread.
    static let completeElsewhere: DispatchRoutine = { _, irp in
        irp.markPending()
        DispatchQueue.global().async { irp.complete(.success, information: 1) }
        return .pending
    }

    /// `requests` reads through `filter` above `completeElsewhere`; how many times each rule was reported.
    func violations(filter: @escaping DispatchRoutine) throws -> [Verifier.Rule: Int] {
        let io = IOManager()
        let counts = Mutex<[Verifier.Rule: Int]>([:])
        io.verifier.onViolation = { v in counts.withLock { $0[v.rule, default: 0] += 1 } }
        _ = try buildStack(io, function: [.read: Self.completeElsewhere], filters: [[.read: filter]])
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        for _ in 0..<Self.requests {
            // Both halves of the check are done when `wait` returns: the dispatching
            // side before `send` returned, the walk's before the requester heard.
            let r = host.beginRead(file, count: 1)
            #expect(r.wait())
            #expect(r.status == .success)
        }
        _ = host.close(file)
        return counts.withLock { $0 }
    }

    @Test func aFilterWhoseRoutineMarksThePendingIrpIsCleanWhicheverSideIsLast() throws {
        let filter = propagatingFilter
        #expect(try violations(filter: filter) == [:])
    }

    @Test func aFilterThatNeverMarksIsReportedOncePerRequestWhicheverSideIsLast() throws {
        let filter: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { _, _, _ in .success }
            return device.callLower(irp)
        }
        let v = try violations(filter: filter)
        #expect(v == [.pendingWithoutMark: Self.requests, .pendingNotPropagated: Self.requests])
    }
}
