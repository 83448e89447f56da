// The verifier catches what the types cannot prevent.

import Testing
@testable import WDM
import WDMTesting

@Suite struct VerifierTests {
    @Test func completingTwiceIsCaughtAndTheSecondCompletionIgnored() throws {
        let io = IOManager()
        let fdo: DispatchRoutine = { _, irp in
            irp.complete(.success, information: 1)
            irp.complete(.unsuccessful)
            return .success
        }
        _ = try buildStack(io, function: [.read: fdo])
        let built = io.statistics.irpsCompleted  // the PnP IRPs that started the stack
        let host = EmbeddedHost(io)
        let r = host.read(try host.open("dev"), count: 1)
        #expect(r.status == .success)
        #expect(io.verifier.violations.map(\.rule) == [.completedTwice])
        #expect(io.statistics.irpsCompleted - built == 2)  // create + read, not three
    }

    @Test func returningPendingWithoutMarkingIsCaught() throws {
        let io = IOManager()
        let fdo: DispatchRoutine = { _, irp in
            irp.complete(.success)
            return .pending
        }
        _ = try buildStack(io, function: [.read: fdo])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        #expect(io.verifier.violations.map(\.rule) == [.pendingWithoutMark])
    }

    @Test func returningAStatusThatDiffersFromTheCompletedOneIsCaught() throws {
        let io = IOManager()
        let fdo: DispatchRoutine = { _, irp in
            irp.complete(.success)
            return .unsuccessful
        }
        _ = try buildStack(io, function: [.read: fdo])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        #expect(io.verifier.violations.map(\.rule) == [.statusMismatch])
    }

    @Test func aMissingDispatchRoutineFailsAsInvalidDeviceRequest() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [:])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        #expect(host.read(f, count: 1).status == .invalidDeviceRequest)
        #expect(host.deviceIoControl(f, ControlCode(rawValue: 0x0022_2000)).status == .invalidDeviceRequest)
    }

    @Test func irpsAreReusedFromThePool() throws {
        let io = IOManager()
        let a = io.allocateIrp(stackSize: 3)
        io.freeIrp(a)
        let b = io.allocateIrp(stackSize: 3)
        #expect(a.packet === b.packet)
        #expect(b.generation == a.generation + 1)
        #expect(a != b)
    }
}
