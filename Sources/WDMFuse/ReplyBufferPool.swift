// ReplyBufferPool: the memory reads are answered from. A read IRP's driver
// fills one of these in place and the reply sends it, so the data is written
// once, by the driver. Two levels, so that no byte of one caller's read can
// reach another caller, even through a driver that reports more Information
// than it wrote (the Windows bug class that leaks pool memory):
// - each open handle keeps the few buffers its own reads use again and again
//   (`HandleReplyBuffers`, on `FileObject.hostData`): reused as they are, since
//   what is in them is that handle's own data;
// - each device has a pool of buffers that hold nothing (`ReplyBufferPool`, on
//   `DeviceObject.hostData`): a buffer goes there zeroed (over what its read
//   could have exposed), when its handle has enough or closes. A driver that
//   writes into a buffer after completing can thus reach only its own device.
// Buffers are reused (up to `keep` per size class; more are freed) while the
// device lives. In checked mode handles keep nothing, a returned buffer is
// poisoned instead of zeroed, and a buffer whose poison changed by the time it
// is handed out again was written by a driver that kept it after its request
// completed: the verifier reports it.

import Synchronization
import WDM

final class ReplyBufferPool: @unchecked Sendable {
    /// Size classes: 4 KiB << k, up to 4 MiB.
    static let classes = 11
    private let free = HandoffMutex<[[UInt]]>(Array(repeating: [], count: classes))
    /// Free buffers kept per size class (the most reads one device has in flight
    /// at once is about the FUSE worker count; beyond that a buffer is freed).
    static let keep = 32
    let checked: Bool
    unowned let verifier: Verifier
    /// The device whose reads the pool answers (named in checked mode's reports;
    /// weak: the device owns the pool, and a read may outlive both).
    weak var device: DeviceObject?
    /// The device's stack memory, when another process fills its reads in place
    /// (a driver host's arena); else buffers come from the heap.
    let memory: (any StackMemory)?

    init(checked: Bool, verifier: Verifier, device: DeviceObject? = nil) {
        self.checked = checked
        self.verifier = verifier
        self.device = device
        memory = device?.stackMemory
    }

    deinit {
        free.withLock { lists in
            for (k, list) in lists.enumerated() { for a in list { release(UnsafeMutableRawPointer(bitPattern: a)!, 4096 << k) } }
        }
    }

    private func release(_ p: UnsafeMutableRawPointer, _ n: Int) {
        if let memory, memory.owns(p) { memory.deallocate(p, byteCount: n) } else { p.deallocate() }
    }

    static func sizeClass(_ n: Int) -> Int? {
        var k = 0
        while (4096 << k) < n { k += 1 }
        return k < classes ? k : nil
    }

    /// A buffer of at least `size` bytes that holds nothing (zeros; poison in checked mode).
    func take(_ size: Int) -> UnsafeMutableRawPointer {
        guard let k = Self.sizeClass(size) else { return fresh(max(size, 1)) }
        if let a = free.withLock({ $0[k].popLast() }) {
            let p = UnsafeMutableRawPointer(bitPattern: a)!
            if checked { verifyPoison(p, count: 4096 << k) }
            return p
        }
        return fresh(4096 << k)
    }

    /// New memory from the stack's memory, or the heap.
    private func fresh(_ n: Int) -> UnsafeMutableRawPointer {
        if let memory, let p = memory.allocate(byteCount: n, zeroed: true) { return p }
        return Self.fresh(n)
    }

    /// New memory, zeroed: the allocator may hand out what another buffer held.
    static func fresh(_ n: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        return p
    }

    /// Gives back a buffer taken for `size` bytes whose first `exposed` bytes a read
    /// may have filled (they are zeroed first; the rest still holds nothing).
    func put(_ p: UnsafeMutableRawPointer, size: Int, exposed: Int) {
        guard let k = Self.sizeClass(size) else {
            release(p, max(size, 1))
            return
        }
        if checked {
            p.initializeMemory(as: UInt8.self, repeating: Poison.byte, count: 4096 << k)
        } else {
            p.initializeMemory(as: UInt8.self, repeating: 0, count: min(exposed, 4096 << k))
        }
        let kept = free.withLock { lists in
            guard lists[k].count < Self.keep else { return false }
            lists[k].append(UInt(bitPattern: p))
            return true
        }
        if !kept { release(p, 4096 << k) }
    }

    /// The free buffers (for tests).
    var freeBuffers: Set<UInt> { free.withLock { Set($0.joined()) } }

    private func verifyPoison(_ p: UnsafeMutableRawPointer, count: Int) {
        let bytes = UnsafeRawBufferPointer(start: p, count: count)
        if let i = bytes.firstIndex(where: { $0 != Poison.byte }) {
            verifier.report(.bufferWrittenAfterCompletion, device: device, detail: "a read's reply buffer changed at byte \(i) after its request was answered")
        }
    }
}

/// One open handle's reply buffers: the few its reads use again, as they are
/// (what they hold is the handle's own data). Beyond `keep` per size class, and
/// all of them when the handle closes, they go back to the device's pool, zeroed.
final class HandleReplyBuffers: @unchecked Sendable {
    static let keep = 4
    let device: ReplyBufferPool
    /// Per size class: free buffers and the most bytes a read of each may have filled.
    private let free = HandoffMutex<(lists: [[UInt]], closed: Bool)>((Array(repeating: [], count: ReplyBufferPool.classes), false))

    init(device: ReplyBufferPool) { self.device = device }

    @inline(__always)
    func take(_ size: Int) -> UnsafeMutableRawPointer {
        if let k = ReplyBufferPool.sizeClass(size), let a = free.withLock({ $0.lists[k].popLast() }) {
            return UnsafeMutableRawPointer(bitPattern: a)!
        }
        return device.take(size)
    }

    @inline(__always)
    func put(_ p: UnsafeMutableRawPointer, size: Int) {
        if !device.checked, let k = ReplyBufferPool.sizeClass(size) {
            let kept = free.withLock { f in
                guard !f.closed, f.lists[k].count < Self.keep else { return false }
                f.lists[k].append(UInt(bitPattern: p))
                return true
            }
            if kept { return }
        }
        device.put(p, size: size, exposed: size)
    }

    /// The handle closed: its buffers go to the device's pool, zeroed whole (a read
    /// of any size of the class may have filled them). A read still in a driver
    /// gives its buffer straight to the device's pool when it ends.
    func close() {
        let lists = free.withLock { f in
            f.closed = true
            defer { f.lists = Array(repeating: [], count: ReplyBufferPool.classes) }
            return f.lists
        }
        for (k, list) in lists.enumerated() {
            for a in list { device.put(UnsafeMutableRawPointer(bitPattern: a)!, size: 4096 << k, exposed: 4096 << k) }
        }
    }

    /// The buffers the handle keeps (for tests).
    var kept: Set<UInt> { free.withLock { Set($0.lists.joined()) } }
}
