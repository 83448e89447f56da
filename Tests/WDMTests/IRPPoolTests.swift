// The IRP pool: packets go back to it and are handed out again, whatever the
// depth of the stack they were built for (17 devices and more included), so a
// host that sends requests forever keeps a bounded number of packets.

import Dispatch
import Testing
@testable import WDM
import WDMTesting

@Suite struct IRPPoolTests {
    /// A read routine that completes at once with the length asked for.
    static let completeRead: DispatchRoutine = { _, irp in
        irp.complete(.success, information: irp.parameters.read.length)
        return .success
    }

    /// How many of the pool's packets have `stackCount` locations.
    func packets(_ io: IOManager, stackCount: Int) -> Int {
        io.pool.all.filter { $0.stackCount == stackCount }.count
    }

    @Test func aFreedPacketOfAnyStackSizeIsHandedOutAgain() {
        let io = IOManager()
        for size in [1, 16, 17, 18, 40, 300, 2] {
            let a = io.allocateIrp(stackSize: size)
            io.freeIrp(a)
            let b = io.allocateIrp(stackSize: size)
            #expect(b.packet === a.packet, "stack size \(size)")
            #expect(b.generation != a.generation)
            #expect(!a.isCurrent && b.isCurrent)
            io.freeIrp(b)
        }
        // One packet per size, and every free list (the table grew twice) still works.
        #expect(io.pool.all.count == 7)
    }

    @Test func requestsThroughAStackOf17OrMoreDevicesReuseTheirPackets() throws {
        let io = IOManager()
        let filters = Array(repeating: [MajorFunction: DispatchRoutine](), count: 16)
        let pdo = try buildStack(io, function: [.read: Self.completeRead], filters: filters)
        let depth = pdo.topOfStack.stackSize
        #expect(depth == 18)  // PDO, FDO, 16 filters
        let file = try io.open("dev", access: .readData)
        let before = io.pool.all.count
        let byte = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
        defer { byte.deallocate() }
        for _ in 0..<5000 {
            let result = io.call(.read(buffer: byte, length: 1, offset: 0), on: file)
            #expect(result.status == .success)
        }
        // Each read allocates and frees one packet of the stack's depth: the next
        // read gets it back. (Before the fix every read made a new one: 5000.)
        #expect(packets(io, stackCount: depth) == 1)
        #expect(io.pool.all.count <= before + 1)
        io.close(file)
    }

    @Test func pendedRequestsCompletedOnAnotherThreadReuseDeepPackets() throws {
        let io = IOManager()
        let completer = DispatchQueue(label: "completer")
        let pendRead: DispatchRoutine = { _, irp in
            irp.markPending()
            completer.async { irp.complete(.success, information: irp.parameters.read.length) }
            return .pending
        }
        let filters = Array(repeating: [MajorFunction: DispatchRoutine](), count: 20)
        let pdo = try buildStack(io, function: [.read: pendRead], filters: filters)
        let depth = pdo.topOfStack.stackSize
        #expect(depth == 22)
        let host = EmbeddedHost(io)
        let file = try host.open("dev")
        for _ in 0..<2000 {
            let r = host.beginRead(file, count: 1)
            #expect(r.wait())
            #expect(r.status == .success)
        }
        // A packet goes back to the pool just after its requester heard of the
        // completion, so the next read may need a second one. Not a third: the
        // completions run one after another on one queue, so by the time a read
        // is sent, the one two before it was freed. (Before the fix: one per read.)
        #expect(packets(io, stackCount: depth) <= 2)
        _ = host.close(file)
    }
}
