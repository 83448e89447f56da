// ReplyBufferPool: the memory reads are answered from. A read IRP's driver
// fills one of these in place and fuse_reply_buf sends it, so the data is
// written once, by the driver. Buffers are reused, never freed while mounted.

import Synchronization

final class ReplyBufferPool: Sendable {
    /// Size classes: 4 KiB << k, up to 4 MiB.
    private static let classes = 11
    private let free = Mutex<[[UInt]]>(Array(repeating: [], count: classes))

    private static func sizeClass(_ n: Int) -> Int? {
        var k = 0
        while (4096 << k) < n { k += 1 }
        return k < classes ? k : nil
    }

    /// A buffer of at least `size` bytes.
    func take(_ size: Int) -> UnsafeMutableRawPointer {
        guard let k = Self.sizeClass(size) else {
            return .allocate(byteCount: size, alignment: 4096)
        }
        if let a = free.withLock({ $0[k].popLast() }) { return UnsafeMutableRawPointer(bitPattern: a)! }
        return .allocate(byteCount: 4096 << k, alignment: 4096)
    }

    /// Gives back a buffer taken for `size` bytes.
    func put(_ p: UnsafeMutableRawPointer, size: Int) {
        guard let k = Self.sizeClass(size) else {
            p.deallocate()
            return
        }
        free.withLock { $0[k].append(UInt(bitPattern: p)) }
    }
}
