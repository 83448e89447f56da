// PoolMemory: ExAllocatePool2 for drivers: zeroed memory a driver owns until
// it frees it (a RAM disk's storage, a ring buffer).

/// `ExAllocatePool2(POOL_FLAG_NON_PAGED, size, tag)`: zeroed memory.
public struct PoolMemory: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer
    /// The pool tag, four characters as in the WDK (`'RamD'`).
    public let tag: String

    public init(byteCount: Int, tag: String) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        bytes = UnsafeMutableRawBufferPointer(start: p, count: byteCount)
        self.tag = tag
    }

    public var baseAddress: UnsafeMutableRawPointer { bytes.baseAddress! }
    public var count: Int { bytes.count }

    /// `ExFreePoolWithTag`.
    public func free() { bytes.baseAddress?.deallocate() }
}
