// MDL: a memory descriptor list. In this model an MDL describes one
// contiguous range of the caller's memory (the FUSE request or reply buffer).

/// `MDL`: describes the caller's buffer for DO_DIRECT_IO and the direct IOCTL methods.
public struct MDL: @unchecked Sendable {
    /// `MmGetMdlVirtualAddress`
    public let address: UnsafeMutableRawPointer
    /// `MmGetMdlByteCount`
    public let byteCount: Int

    public init(address: UnsafeMutableRawPointer, byteCount: Int) {
        self.address = address
        self.byteCount = byteCount
    }

    /// `MmGetSystemAddressForMdlSafe`: the buffer itself, with no mapping or copy.
    @inlinable public var systemAddress: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: address, count: byteCount)
    }
}
