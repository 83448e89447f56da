// PoolMemory: ExAllocatePool2 for drivers: zeroed memory a driver owns until
// it frees it (a RAM disk's storage, a ring buffer). The pool is the daemon's
// nonpaged pool: all it gives out is resident, and it gives out at most `limit`
// bytes in all (the daemon sets half of the machine's physical memory), so a
// driver asked for too much gets nil (STATUS_INSUFFICIENT_RESOURCES) rather than
// the daemon being killed. Pure Swift: the host, not the core, asks the system.

import Synchronization

/// `ExAllocatePool2(POOL_FLAG_NON_PAGED, size, tag)`: zeroed memory.
public struct PoolMemory: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer
    /// The pool tag, four characters as in the WDK (`'RamD'`).
    public let tag: String

    /// The bytes all pool allocations may hold at once: what the host set
    /// (`setLimit`; the daemon: half of physical memory), 4 GiB until it does.
    public static var limit: Int { limitWord.load(ordering: .relaxed) }
    private static let limitWord = Atomic<Int>(4 << 30)
    /// Sets `limit` (a host, before it builds a tree).
    public static func setLimit(_ bytes: Int) { limitWord.store(max(0, bytes), ordering: .relaxed) }
    /// The bytes pool allocations hold now.
    static let inUse = Atomic<Int>(0)

    /// Allocates `byteCount` zeroed bytes, or returns nil, as ExAllocatePool2 returns
    /// NULL, when the pool cannot give them: a negative count, more than is left of
    /// `limit`, or memory the system refuses. The driver then fails its request
    /// (STATUS_INSUFFICIENT_RESOURCES).
    /// `driver`: who asks (Verifier's low-resources option fails a verified driver's
    /// allocations at its rate).
    public init?(byteCount: Int, tag: String, for driver: DriverObject? = nil) {
        guard byteCount >= 0, byteCount <= Self.limit else { return nil }
        if let driver, driver.ioManager.verifier.simulatesLowResources(for: driver) { return nil }
        guard Self.inUse.add(byteCount, ordering: .relaxed).newValue <= Self.limit else {
            Self.inUse.subtract(byteCount, ordering: .relaxed)
            return nil
        }
        // Within the limit the allocation succeeds (Linux overcommits; the limit keeps
        // what the pool holds below what the machine has).
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        bytes = UnsafeMutableRawBufferPointer(start: p, count: byteCount)
        self.tag = tag
    }

    public var baseAddress: UnsafeMutableRawPointer { bytes.baseAddress! }
    public var count: Int { bytes.count }

    /// `ExFreePoolWithTag`.
    public func free() {
        guard let p = bytes.baseAddress else { return }
        p.deallocate()
        Self.inUse.subtract(bytes.count, ordering: .relaxed)
    }
}
