// A request object's life when someone other than the completing thread answers
// it: the interrupt timeout answers EINTR for a driver that ignores the cancel,
// and the driver completes the IRP later. The late completion answers nothing,
// and the object is retired, not reused (the timeout may still be answering from
// it); a claim for the earlier request finds nothing in a later one.

import Glibc
import MisbehaveDriver
import Testing
import WDM
@testable import WDMFuse

/// Whether a claim for request `serial` gets `r`'s reply (answered EIO if it does).
func claims(_ r: PendingFuseRequest, _ serial: UInt64) -> Bool {
    guard let reply = r.claim(serial: serial, elsewhere: true) else { return false }
    reply.error(EIO)
    return true
}

@Suite struct PendingRequestTests {
    @Test func aRequestItsTimeoutAnsweredIsRetiredWhenTheDriverCompletesItLate() throws {
        let rig = try Rig()
        let bad = rig.open("misbehave")
        let n = rig.ioctl(bad, code: MisbehaveDriver.Bug.pendForever.code.rawValue)
        let first = try #require(rig.sink.armed(n))
        let serial = first.serial
        first.interrupted()  // FUSE_INTERRUPT; the driver ignores the cancel
        #expect(rig.sink.waitForReply(n) == [.error(EINTR)])  // after the grace period
        // The driver completes it after all (on this thread: delivered before this returns).
        let irp = try #require(rig.io.outstandingIrps.first)
        irp.complete(.success)
        #expect(rig.sink.replies(n) == [.error(EINTR)])
        #expect(!rig.bridge.requests.all.contains { $0 === first })
        #expect(!claims(first, serial))

        // The next request gets another object, and is answered normally.
        let echo = rig.open("echo")
        let w = rig.write(echo, [7])
        #expect(rig.sink.replies(w) == [.written(1)])
        let m = rig.read("echo", echo, size: 1)
        #expect(rig.sink.replies(m) == [.data([7])])
    }

    @Test func aClaimForAnEarlierRequestFindsNothingInTheObjectsNextRequest() throws {
        let rig = try Rig()
        let echo = rig.open("echo")
        let n = rig.read("echo", echo, size: 1)  // waits for data
        let object = try #require(rig.sink.armed(n))
        let serial = object.serial
        #expect(rig.sink.replies(rig.write(echo, [1])) == [.written(1)])
        #expect(rig.sink.waitForReply(n) == [.data([1])])
        // The object went back to the pool (with the write's): two reads that wait
        // take both, so one of them serves its next request.
        let m1 = rig.read("echo", echo, size: 1), m2 = rig.read("echo", echo, size: 1)
        let again = try #require([m1, m2].compactMap { rig.sink.armed($0) }.first { $0 === object })
        #expect(again.serial != serial)
        // Late interrupt work for the first read (its serial) claims nothing.
        #expect(!claims(object, serial))
        #expect(object.isUnanswered(serial: again.serial))
        #expect(rig.sink.replies(rig.write(echo, [2, 3])) == [.written(2)])
        #expect(rig.sink.waitForReply(m1) == [.data([2])])
        #expect(rig.sink.waitForReply(m2) == [.data([3])])
    }
}
