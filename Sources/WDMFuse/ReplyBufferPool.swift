// ReplyBufferPool: the memory reads are answered from. A read IRP's driver
// fills one of these in place and the reply sends it, so the data is written
// once, by the driver. Buffers are reused, never freed while mounted.
// In checked mode a returned buffer is poisoned, and a buffer whose poison
// changed by the time it is handed out again was written by a driver that
// kept it after its request completed: the verifier reports it.

import Synchronization
import WDM

final class ReplyBufferPool: @unchecked Sendable {
    /// Size classes: 4 KiB << k, up to 4 MiB.
    private static let classes = 11
    private let free = HandoffMutex<[[UInt]]>(Array(repeating: [], count: classes))
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
        free.withLock { $0[k].append(UInt(bitPattern: p)) }
    }

    private func verifyPoison(_ p: UnsafeMutableRawPointer, count: Int) {
        let bytes = UnsafeRawBufferPointer(start: p, count: count)
        if let i = bytes.firstIndex(where: { $0 != Poison.byte }) {
            verifier.report(.bufferWrittenAfterCompletion, detail: "a read's reply buffer changed at byte \(i) after its request was answered")
        }
    }
}
