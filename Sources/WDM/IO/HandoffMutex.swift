// HandoffMutex: Swift's Mutex, with every handoff of the lock visible to
// ThreadSanitizer.
//
// On Linux, `Mutex` takes and drops its lock with a compare-and-swap inlined
// into the caller (which TSan instruments and understands as acquire and
// release) only when nobody waits. A contended lock is handed over inside the
// standard library (`_lockSlow`/`_unlockSlow`, a PI futex), which is not built
// with TSan: the next holder then gets the lock with no happens-before edge
// TSan can see, and everything the previous holder wrote (under the lock, or
// before it, like a packet's fields before it went back to the pool) looks
// like a data race. The ordering is real (the futex hands the lock over); only
// TSan misses it. So each holder also does an acquiring load when it gets the
// lock and a releasing store before it lets go, on an atomic of its own: TSan
// sees those, and the critical sections being mutually exclusive, each
// holder's acquire pairs with the previous holder's release. On x86-64 both
// are plain moves, on ARM64 an LDAR and an STLR, on a cache line the lock has
// just taken anyway: nothing measurable on the IRP path.
//
// Public so drivers can guard their own state with it (as a Windows driver
// uses a spin lock or a fast mutex) and stay clean under TSan too.

import Synchronization

/// A `Mutex` whose handoffs ThreadSanitizer sees (see the file's comment). Same
/// use: keep it in a `let`, touch the value only inside `withLock`.
public struct HandoffMutex<Value>: ~Copyable, @unchecked Sendable {
    @usableFromInline let mutex: Mutex<Value>
    @usableFromInline let handoff = Atomic<UInt32>(0)

    @inlinable public init(_ value: consuming sending Value) { mutex = Mutex(value) }

    /// Runs `body` with the lock held.
    @inlinable @inline(__always)
    public borrowing func withLock<Result>(_ body: (inout sending Value) -> sending Result) -> sending Result {
        mutex.withLock { value in
            _ = handoff.load(ordering: .acquiring)
            defer { handoff.store(0, ordering: .releasing) }
            return body(&value)
        }
    }
}
