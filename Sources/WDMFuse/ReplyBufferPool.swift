// ReplyBufferPool: the memory reads are answered from. A read IRP's driver
// fills one of these in place and the reply sends it, so the data is written
// once, by the driver. Each device has its own pool (`DeviceObject.hostData`):
// a driver that writes into a buffer after completing can only ever reach a
// later read of its own device, never another device's caller. Buffers are
// reused (up to `keep` per size class; more are freed) while the device lives.
// In checked mode a returned buffer is poisoned, and a buffer whose poison
// changed by the time it is handed out again was written by a driver that
// kept it after its request completed: the verifier reports it.

import Synchronization
import WDM

final class ReplyBufferPool: @unchecked Sendable {
    /// Size classes: 4 KiB << k, up to 4 MiB.
    private static let classes = 11
    private let free = HandoffMutex<[[UInt]]>(Array(repeating: [], count: classes))
    /// Free buffers kept per size class (the most reads one device has in flight
    /// at once is about the FUSE worker count; beyond that a buffer is freed).
    static let keep = 32
    let checked: Bool
    unowned let verifier: Verifier

    init(checked: Bool, verifier: Verifier) {
        self.checked = checked
        self.verifier = verifier
    }

    deinit {
        free.withLock { lists in
            for list in lists { for a in list { UnsafeMutableRawPointer(bitPattern: a)!.deallocate() } }
        }
    }

    private static func sizeClass(_ n: Int) -> Int? {
        var k = 0
        while (4096 << k) < n { k += 1 }
        return k < classes ? k : nil
    }

    /// A buffer of at least `size` bytes.
    func take(_ size: Int) -> UnsafeMutableRawPointer {
        guard let k = Self.sizeClass(size) else {
            return .allocate(byteCount: max(size, 1), alignment: 4096)
        }
        if let a = free.withLock({ $0[k].popLast() }) {
            let p = UnsafeMutableRawPointer(bitPattern: a)!
            if checked { verifyPoison(p, count: 4096 << k) }
            return p
        }
        return .allocate(byteCount: 4096 << k, alignment: 4096)
    }

    /// Gives back a buffer taken for `size` bytes.
    func put(_ p: UnsafeMutableRawPointer, size: Int) {
        guard let k = Self.sizeClass(size) else {
            p.deallocate()
            return
        }
        if checked { p.initializeMemory(as: UInt8.self, repeating: Poison.byte, count: 4096 << k) }
        let kept = free.withLock { lists in
            guard lists[k].count < Self.keep else { return false }
            lists[k].append(UInt(bitPattern: p))
            return true
        }
        if !kept { p.deallocate() }
    }

    /// The free buffers (for tests).
    var freeBuffers: Set<UInt> { free.withLock { Set($0.joined()) } }

    private func verifyPoison(_ p: UnsafeMutableRawPointer, count: Int) {
        let bytes = UnsafeRawBufferPointer(start: p, count: count)
        if let i = bytes.firstIndex(where: { $0 != Poison.byte }) {
            verifier.report(.bufferWrittenAfterCompletion, detail: "a read's reply buffer changed at byte \(i) after its request was answered")
        }
    }
}
