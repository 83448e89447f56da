// PoolMemory: ExAllocatePool2 for drivers: zeroed memory a driver owns until
// it frees it (a RAM disk's storage, a ring buffer). The pool is the daemon's
// nonpaged pool: all it gives out is resident, and it gives out at most half
// of the machine's physical memory in all, so a driver asked for too much gets
// nil (STATUS_INSUFFICIENT_RESOURCES) rather than the daemon being killed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// `ExAllocatePool2(POOL_FLAG_NON_PAGED, size, tag)`: zeroed memory.
public struct PoolMemory: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer
    /// The pool tag, four characters as in the WDK (`'RamD'`).
    public let tag: String

    /// The bytes all pool allocations may hold at once: half of physical memory.
    public static let limit: Int = {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return 1 << 30 }
        let (total, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max / 2 : total / 2
    }()
    /// The bytes pool allocations hold now.
    static let inUse = Atomic<Int>(0)

    /// Allocates `byteCount` zeroed bytes, or returns nil, as ExAllocatePool2 returns
    /// NULL, when the pool cannot give them: a negative count, more than is left of
    /// `limit`, or memory the system refuses. The driver then fails its request
    /// (STATUS_INSUFFICIENT_RESOURCES).
    public init?(byteCount: Int, tag: String) {
        guard byteCount >= 0, byteCount <= Self.limit else { return nil }
        guard Self.inUse.add(byteCount, ordering: .relaxed).newValue <= Self.limit else {
            Self.inUse.subtract(byteCount, ordering: .relaxed)
            return nil
        }
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(byteCount, 1)) == 0, let p else {
            Self.inUse.subtract(byteCount, ordering: .relaxed)
            return nil
        }
        p.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        bytes = UnsafeMutableRawBufferPointer(start: p, count: byteCount)
        self.tag = tag
    }

    public var baseAddress: UnsafeMutableRawPointer { bytes.baseAddress! }
    public var count: Int { bytes.count }

    /// `ExFreePoolWithTag`.
    public func free() {
        guard let p = bytes.baseAddress else { return }
        releasePoolMemory(p)
        Self.inUse.subtract(bytes.count, ordering: .relaxed)
    }
}

/// The C library's free, for memory from posix_memalign.
private func releasePoolMemory(_ p: UnsafeMutableRawPointer) {
    #if canImport(Glibc)
    Glibc.free(p)
    #else
    Darwin.free(p)
    #endif
}
