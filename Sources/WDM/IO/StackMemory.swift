// StackMemory: memory a device stack's buffers come from when another process
// must reach them in place (a driver host's arena, which the host maps too).
// A stack that has one gets the I/O manager's copy of borrowed memory (a pended
// write's data, an IOCTL's buffers) from it, and the bridge answers the stack's
// reads from buffers taken from it; the host then reads and writes the data
// where it lies, and nothing is copied between the processes. On Windows the
// UMDF reflector maps the caller's buffers into the host's address space; this
// is the same idea from the other side.

/// Memory shared with another process, given out in blocks.
public protocol StackMemory: AnyObject, Sendable {
    /// A block of at least `byteCount` bytes, aligned to 16, or nil when the memory
    /// is used up (the caller then uses its own). `zeroed`: it holds nothing (a
    /// block given back may hold what another request left there); else the caller
    /// writes all of it before anyone reads it.
    func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer?
    /// Gives back a block `allocate(byteCount:)` gave.
    func deallocate(_ block: UnsafeMutableRawPointer, byteCount: Int)
    /// Whether `block` lies in this memory.
    func owns(_ block: UnsafeRawPointer) -> Bool
}
