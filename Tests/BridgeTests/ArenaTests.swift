// The memory a daemon and a driver host share: its rings refuse to overfill,
// answers the host wrote past the ring are a broken host, offsets outside the
// heap are refused, and blocks given back hold nothing when asked for zeroed.

import Foundation
import Glibc
import Testing
@testable import WDM
@testable import WDMHost

@Suite struct ArenaTests {
    @Test func theRequestRingHoldsAThousandAndTwentyFourAndKeepsTheirOrder() throws {
        let a = try #require(Arena.create())
        a.reset()
        for i in 0..<Arena.entries { #expect(a.pushRequest(RequestHeader(op: .io, id: i, handle: 7)) == .done) }
        #expect(a.pushRequest(RequestHeader(op: .io, id: 9999, handle: 7)) == .full)  // the producer waits
        for i in 0..<Arena.entries {
            let h = try #require(a.popRequest() ?? nil)
            #expect(h.id == i && h.handle == 7)
        }
        #expect(a.popRequest() == nil)
        #expect(a.pushRequest(RequestHeader(op: .close, id: 1, handle: 2)) == .done)
        // A host that writes nonsense into the head (ahead of the tail).
        a.requestHead.pointee.store(a.requestTail.pointee.load(ordering: .relaxed) + 3, ordering: .sequentiallyConsistent)
        #expect(a.pushRequest(RequestHeader(op: .close, id: 2, handle: 2)) == .broken)
    }

    @Test func aTailBeyondTheRingIsABrokenHost() throws {
        let a = try #require(Arena.create())
        a.reset()
        #expect(a.pushReply(ReplyHeader(id: 5, status: .success, information: 3, dataLength: 0)))
        guard case .reply(let r) = a.popReply() else { Issue.record("no answer"); return }
        #expect(r.id == 5 && r.information == 3)
        guard case .none = a.popReply() else { Issue.record("an answer from nowhere"); return }
        // A host that writes nonsense into the tail.
        a.replyTail.pointee.store(a.replyHead.pointee.load(ordering: .relaxed) + Arena.entries + 1, ordering: .sequentiallyConsistent)
        guard case .broken = a.popReply() else { Issue.record("a broken ring taken for answers"); return }
    }

    @Test func offsetsOutsideTheHeapAreRefused() throws {
        let a = try #require(Arena.create())
        #expect(!a.isHeap(0, 64))  // the control page and the rings
        #expect(!a.isHeap(UInt64(Arena.heap - 1), 16))
        #expect(a.isHeap(UInt64(Arena.heap), 4096))
        #expect(!a.isHeap(UInt64(Arena.size - 10), 11))  // runs past the end
        #expect(!a.isHeap(UInt64.max - 5, 10))  // wraps
        #expect(a.offset(of: UnsafeRawPointer(a.base + 100), count: 1) == nil)
        #expect(a.offset(of: UnsafeRawPointer(a.base + Arena.heap), count: 8) == UInt64(Arena.heap))
    }

    @Test func blocksGivenBackHoldNothingWhenAskedForZeroed() throws {
        let a = try #require(Arena.create())
        let m = ArenaMemory(arena: a)
        let p = try #require(m.allocate(byteCount: 5000, zeroed: true))
        #expect(m.owns(p) && a.offset(of: p, count: 8192) != nil)
        p.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 8192)
        let q = try #require(m.allocate(byteCount: 100, zeroed: true))
        #expect(q != p)  // another size class
        m.deallocate(p, byteCount: 5000)
        let again = try #require(m.allocate(byteCount: 8192, zeroed: true))
        #expect(again == p)  // the block is reused ...
        #expect(UnsafeRawBufferPointer(start: again, count: 8192).allSatisfy { $0 == 0 })  // ... holding nothing
        #expect(m.allocate(byteCount: 32 << 20, zeroed: false) == nil)  // beyond the largest class: the caller's own memory
        let outside = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
        defer { outside.deallocate() }
        #expect(!m.owns(outside))
    }

    @Test func theSharedMemoryCannotBeShrunkByTheProcessItIsSharedWith() throws {
        let a = try #require(Arena.create())
        #expect(ftruncate(a.fd, 0) != 0 && errno == EPERM)  // sealed: no SIGBUS for the daemon
        #expect(ftruncate(a.fd, off_t(Arena.size) * 2) != 0)
    }

    @Test func aDoorbellTheOtherSideFilledUpDoesNotBlockTheOneWhoRings() throws {
        let bell = try #require(Doorbell.make())
        var full: UInt64 = 0xFFFF_FFFF_FFFF_FFFE  // the most an eventfd holds
        #expect(write(bell.fd, &full, 8) == 8)
        bell.ring()  // would block forever on a blocking eventfd
        var v: UInt64 = 0
        #expect(read(bell.fd, &v, 8) == 8 && v == full)
        #expect(read(bell.fd, &v, 8) == -1 && errno == EAGAIN)  // emptied: a reader does not block either
    }
}

@Suite struct RestartBudgetTests {
    @Test func fiveRestartsThenNoneUntilThirtyMinutesOfGoodService() {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        func decisions(_ minutes: [Double]) -> (allowed: [Bool], used: Int) {
            var budget = HostProxy.RestartBudget()
            let allowed = minutes.map { budget.allowsRestart(at: t0 + $0 * 60) }
            return (allowed, budget.used)
        }
        // Five crashes a minute apart: each host is started again; the sixth is not.
        #expect(decisions([0, 1, 2, 3, 4, 5]) == ([true, true, true, true, true, false], 5))
        // The count starts again once a host served 30 minutes after its last restart:
        // the fifth 29 minutes after the fourth still counts, a sixth right after is
        // refused, and one 30 minutes after the fifth is counted from 0.
        #expect(decisions([0, 1, 2, 3, 32, 32.2, 62]) == ([true, true, true, true, true, false, true], 1))
    }
}
