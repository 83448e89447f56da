// IRP: an I/O request packet. One stack location per device in the stack;
// one owner at a time; completed exactly once (the verifier catches a second).

import Dispatch
import Synchronization

/// `PDRIVER_CANCEL`: removes the IRP from the driver's queue and completes it with STATUS_CANCELLED.
public typealias CancelRoutine = @Sendable (_ device: DeviceObject?, _ irp: IRP) -> Void

/// Who issued an IRP at the top of the stack and gets it back when it is done
/// (the FUSE bridge, the embedded host, a driver that built the IRP).
public protocol IRPRequester: AnyObject, Sendable {
    /// Called exactly once, after the last completion routine ran. For an IRP
    /// whose dispatch returned STATUS_PENDING this runs on the thread that completed it.
    func irpCompleted(_ irp: IRP)

    /// Called on the submitting thread when dispatch returned STATUS_PENDING,
    /// before `irpCompleted` can run anywhere: the request the IRP stands for is
    /// still unanswered while this runs (the bridge arms FUSE interrupts here).
    func irpPending(_ irp: IRP)
}

extension IRPRequester {
    public func irpPending(_ irp: IRP) {}
}

/// `IRP`.
///
/// Ownership: whoever holds the IRP last (the driver that is dispatching it, a
/// queue, a completion routine that returned STATUS_MORE_PROCESSING_REQUIRED)
/// is the only one that may touch it. IRPs are pooled by the I/O manager and
/// reused, so no reference may be kept after completion.
public final class IRP: @unchecked Sendable {
    /// `StackCount`
    public let stackCount: Int
    /// `CurrentLocation`: counts down from `stackCount + 1` (nothing current) to 1 (the bottom).
    public internal(set) var currentLocation: Int
    /// The stack locations, allocated once for the IRP's life (the pool reuses it):
    /// a plain buffer, so touching a location costs no uniqueness check.
    @usableFromInline let locations: UnsafeMutablePointer<IOStackLocation>

    /// `IoStatus`
    public var ioStatus = IOStatusBlock()
    /// `AssociatedIrp.SystemBuffer`
    public var systemBuffer: UnsafeMutableRawPointer?
    /// `MdlAddress`
    public var mdlAddress: MDL?
    /// `UserBuffer`
    public var userBuffer: UnsafeMutableRawPointer?
    /// `PendingReturned`: set during completion from the location below's SL_PENDING_RETURNED.
    public internal(set) var pendingReturned = false
    /// `Tail.Overlay.DriverContext`: for the driver that currently owns the IRP (queues use it).
    public var driverContext: AnyObject?

    /// The I/O manager this IRP belongs to.
    // unowned(unsafe): the I/O manager outlives what it owns; read on every IRP.
    public unowned(unsafe) let ioManager: IOManager

    // Requester side: not for drivers.
    public var requester: (any IRPRequester)?
    /// The top of the stack a request IRP was built for (`IOManager.makeIrp`), where
    /// `submit(_:)` sends it.
    public internal(set) var targetDevice: DeviceObject?
    /// The requester's own pointer (the bridge keeps its fuse_req_t here).
    public var requesterContext: UnsafeMutableRawPointer?
    /// The requester's own word (the bridge keeps the request kind here).
    public var requesterTag: Int = 0
    /// The requester's buffer (the bridge's reply buffer or the request's memory).
    public var requesterBuffer: UnsafeMutableRawPointer?
    /// True when completion ran on another thread after dispatch returned STATUS_PENDING.
    public internal(set) var completedAsynchronously = false

    // Bounce buffering (IOManager.bounceBuffers): the caller's memory while the
    // driver works on a SystemBuffer of its own.
    var bounceCaller: UnsafeMutableRawPointer?
    var bounceSystem: UnsafeMutableRawPointer?
    var bounceCopyBack = 0

    struct CancelState {
        var cancel = false
        var routine: CancelRoutine?
        var generation: UInt64 = 0
    }
    let cancelState = Mutex(CancelState())
    /// 0 free, 1 in flight, 2 completed.
    let life = Atomic<UInt8>(0)
    /// 0 not submitted, 1 dispatching, 2 dispatch returned STATUS_PENDING, 3 completed while dispatching.
    let dispatchState = Atomic<UInt8>(0)
    let done = DispatchSemaphore(value: 0)

    init(stackCount: Int, ioManager: IOManager) {
        self.stackCount = stackCount
        self.currentLocation = stackCount + 1
        self.locations = .allocate(capacity: max(stackCount, 1))
        self.locations.initialize(repeating: IOStackLocation(), count: stackCount)
        self.ioManager = ioManager
    }

    deinit {
        locations.deinitialize(count: stackCount)
        locations.deallocate()
    }

    enum Life: UInt8 { case free = 0, inFlight = 1, completed = 2 }
    enum Dispatch: UInt8 { case idle = 0, dispatching = 1, returnedPending = 2, completedWhileDispatching = 3 }

    // MARK: - Stack locations

    /// `IoGetCurrentIrpStackLocation`.
    public var currentStackLocation: IOStackLocation {
        get { locations[currentLocation - 1] }
        _modify { yield &locations[currentLocation - 1] }
    }

    /// `IoGetNextIrpStackLocation`: the location the next lower driver will see.
    public var nextStackLocation: IOStackLocation {
        get { locations[currentLocation - 2] }
        _modify { yield &locations[currentLocation - 2] }
    }

    /// The current location's major function.
    @inlinable public var majorFunction: MajorFunction { locations[currentLocation - 1].majorFunction }
    /// The current location's parameters.
    @inlinable public var parameters: IOStackLocation.Parameters { locations[currentLocation - 1].parameters }
    /// The current location's file object.
    @inlinable public var fileObject: FileObject? { locations[currentLocation - 1].fileObject }

    /// The buffer of a read or write, whichever way the device asked for it:
    /// the MDL (DO_DIRECT_IO), SystemBuffer (DO_BUFFERED_IO) or UserBuffer;
    /// `Parameters.Read.Length` bytes.
    public var transferBuffer: UnsafeMutableRawBufferPointer {
        if let mdl = mdlAddress { return mdl.systemAddress }
        let length = locations[currentLocation - 1].parameters.read.length
        if let sb = systemBuffer { return UnsafeMutableRawBufferPointer(start: sb, count: length) }
        return UnsafeMutableRawBufferPointer(start: userBuffer, count: userBuffer == nil ? 0 : length)
    }

    /// `IoSkipCurrentIrpStackLocation`: the next driver sees this location as its own.
    public func skipCurrentStackLocation() {
        currentLocation += 1
    }

    /// `IoCopyCurrentIrpStackLocationToNext`: copies everything but the completion routine.
    public func copyCurrentStackLocationToNext() {
        var next = locations[currentLocation - 1]
        next.completionRoutine = nil
        next.context = nil
        next.control = []
        next.deviceObject = nil
        locations[currentLocation - 2] = next
    }

    /// `IoSetCompletionRoutine`: called when the lower driver completes the IRP,
    /// if the final status matches one of the flags.
    public func setCompletionRoutine(
        _ routine: @escaping CompletionRoutine, context: AnyObject? = nil,
        invokeOnSuccess: Bool = true, invokeOnError: Bool = true, invokeOnCancel: Bool = true
    ) {
        let i = currentLocation - 2
        locations[i].completionRoutine = routine
        locations[i].context = context
        var c = locations[i].control.intersection(.pendingReturned)
        if invokeOnSuccess { c.insert(.invokeOnSuccess) }
        if invokeOnError { c.insert(.invokeOnError) }
        if invokeOnCancel { c.insert(.invokeOnCancel) }
        locations[i].control = c
    }

    /// `IoMarkIrpPending`. A dispatch routine that calls it must return `.pending`.
    public func markPending() {
        locations[currentLocation - 1].control.insert(.pendingReturned)
    }

    /// Whether the current location was marked pending.
    public var isMarkedPending: Bool {
        currentLocation <= stackCount && locations[currentLocation - 1].control.contains(.pendingReturned)
    }

    // MARK: - Completion

    /// `IoCompleteRequest`: set `ioStatus` first. Walks the stack upward calling
    /// the completion routines, then hands the IRP back to its requester.
    /// Completing an IRP twice is caught by the verifier and ignored.
    public func complete() {
        ioManager.completeRequest(self, setting: nil)
    }

    /// Sets `ioStatus` and completes. On an IRP already completed, neither happens.
    public func complete(_ status: NTStatus, information: Int = 0) {
        ioManager.completeRequest(self, setting: IOStatusBlock(status: status, information: information))
    }

    // MARK: - Cancel

    /// `Irp->Cancel`.
    public var cancel: Bool { cancelState.withLock { $0.cancel } }

    /// `IoSetCancelRoutine`: sets the routine and returns the previous one.
    /// A queue that gets nil back when clearing knows a cancel is under way.
    @discardableResult
    public func setCancelRoutine(_ routine: CancelRoutine?) -> CancelRoutine? {
        cancelState.withLock { state in
            let old = state.routine
            state.routine = routine
            return old
        }
    }

    /// Sets the cancel routine unless the IRP was already cancelled; returns false then.
    /// The check and the set are one step, which is what makes queues cancel-safe.
    public func setCancelRoutineUnlessCancelled(_ routine: @escaping CancelRoutine) -> Bool {
        cancelState.withLock { state in
            if state.cancel { return false }
            state.routine = routine
            return true
        }
    }

    /// `IoCancelIrp`: marks the IRP cancelled and calls its cancel routine, if any.
    @discardableResult
    public func cancelIrp() -> Bool {
        let routine: CancelRoutine? = cancelState.withLock { state in
            state.cancel = true
            let r = state.routine
            state.routine = nil
            return r
        }
        guard let routine else { return false }
        let device = currentLocation <= stackCount ? locations[currentLocation - 1].deviceObject : nil
        routine(device, self)
        return true
    }

    /// The IRP's incarnation: bumped each time the pool hands it out again.
    public var generation: UInt64 { cancelState.withLock { $0.generation } }

    /// `IoCancelIrp`, but only if the IRP is still the incarnation `generation`
    /// and still in flight. Used by requesters that learn of a cancel asynchronously
    /// (a FUSE interrupt) when the IRP may have been completed and reused meanwhile.
    @discardableResult
    public func cancel(ifGeneration generation: UInt64) -> Bool {
        let routine: CancelRoutine?? = cancelState.withLock { state in
            guard state.generation == generation, life.load(ordering: .acquiring) == Life.inFlight.rawValue else {
                return .none
            }
            state.cancel = true
            let r = state.routine
            state.routine = nil
            return .some(r)
        }
        guard case .some(let r) = routine else { return false }
        if let r {
            let device = currentLocation <= stackCount ? locations[currentLocation - 1].deviceObject : nil
            r(device, self)
        }
        return true
    }

    /// Blocks until a pending IRP's requester signals it (`signalDone`).
    public func waitUntilDone() { done.wait() }
    /// Blocks until `signalDone` or until `seconds` pass; false on timeout.
    public func waitUntilDone(seconds: Double) -> Bool {
        done.wait(timeout: .now() + seconds) == .success
    }
    /// Wakes the thread blocked in `waitUntilDone`.
    public func signalDone() { done.signal() }

    /// Reinitializes for reuse (`IoReuseIrp`).
    func reset() {
        cancelState.withLock { state in
            state.cancel = false
            state.routine = nil
            state.generation &+= 1
        }
        for i in 0..<stackCount {
            // Field by field: cheaper than destroying and rebuilding the whole location,
            // and the completion walk already cleared the routine and its context.
            locations[i].majorFunction = .create
            locations[i].minorFunction = 0
            locations[i].flags = 0
            locations[i].control = []
            locations[i].parameters = IOStackLocation.Parameters()
            locations[i].deviceObject = nil
            locations[i].fileObject = nil
            if locations[i].completionRoutine != nil { locations[i].completionRoutine = nil }
            if locations[i].context != nil { locations[i].context = nil }
        }
        currentLocation = stackCount + 1
        ioStatus = IOStatusBlock()
        systemBuffer = nil
        mdlAddress = nil
        userBuffer = nil
        pendingReturned = false
        driverContext = nil
        requester = nil
        requesterContext = nil
        requesterTag = 0
        requesterBuffer = nil
        targetDevice = nil
        completedAsynchronously = false
        dispatchState.store(Dispatch.idle.rawValue, ordering: .relaxed)
    }
}
