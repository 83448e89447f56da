// IRP: an I/O request packet. One stack location per device in the stack;
// one owner at a time; completed exactly once.
//
// Packets are pooled and reused, so what a driver holds is not the packet but
// an `IRP`: the packet plus the incarnation (generation) it was handed out as.
// Every operation that changes an IRP's life (complete, cancel, mark pending,
// set a cancel routine) checks the generation: a driver that kept an IRP after
// it completed and touches it once the packet serves another request is caught
// by the verifier and changes nothing.

import Dispatch
import Synchronization

/// `PDRIVER_CANCEL`: removes the IRP from the driver's queue and completes it with STATUS_CANCELLED.
public typealias CancelRoutine = @Sendable (_ device: DeviceObject?, _ irp: IRP) -> Void

/// Who issued an IRP at the top of the stack and gets it back when it is done
/// (the FUSE bridge, the embedded host, a benchmark). Hosts reach the I/O
/// manager through `IOManager.send(_:on:requester:)` (see IOManager+Host.swift).
public protocol IRPRequester: AnyObject, Sendable {
    /// Called exactly once, after the last completion routine ran. For an IRP
    /// whose dispatch returned STATUS_PENDING this runs on the thread that completed it.
    /// The I/O manager frees the IRP when this returns: keep nothing of it.
    func irpCompleted(_ irp: IRP)

    /// Called on the submitting thread when dispatch returned without completing
    /// the IRP (STATUS_PENDING, or a driver bug), before `irpCompleted` can run
    /// anywhere: the request is still unanswered while this runs (the bridge arms
    /// FUSE interrupts here).
    func irpPending(_ irp: IRP)
}

extension IRPRequester {
    public func irpPending(_ irp: IRP) {}
}

/// `IRP`: what drivers, completion routines, cancel routines and requesters hold.
public struct IRP: @unchecked Sendable, Equatable {
    @usableFromInline let packet: IRPPacket
    /// The incarnation of the packet this IRP is. Bumped each time the pool hands it out.
    public let generation: UInt32

    @inlinable init(packet: IRPPacket, generation: UInt32) {
        self.packet = packet
        self.generation = generation
    }

    public static func == (a: IRP, b: IRP) -> Bool { a.packet === b.packet && a.generation == b.generation }

    /// True while this IRP is the packet's current incarnation and not yet freed.
    public var isCurrent: Bool { packet.generation == generation && packet.life != .free }

    /// The I/O manager this IRP belongs to.
    @inlinable public var ioManager: IOManager { packet.ioManager }
    /// `StackCount`
    @inlinable public var stackCount: Int { packet.stackCount }
    /// `CurrentLocation`: counts down from `stackCount + 1` (nothing current) to 1 (the bottom).
    @inlinable public var currentLocation: Int { packet.currentLocation }

    /// `IoStatus`
    @inlinable public var ioStatus: IOStatusBlock {
        get { packet.ioStatus }
        nonmutating set { packet.ioStatus = newValue }
    }
    /// `AssociatedIrp.SystemBuffer`
    @inlinable public var systemBuffer: UnsafeMutableRawPointer? {
        get { packet.systemBuffer }
        nonmutating set { packet.systemBuffer = newValue }
    }
    /// `MdlAddress`
    @inlinable public var mdlAddress: MDL? {
        get { packet.mdlAddress }
        nonmutating set { packet.mdlAddress = newValue }
    }
    /// `UserBuffer`
    @inlinable public var userBuffer: UnsafeMutableRawPointer? {
        get { packet.userBuffer }
        nonmutating set { packet.userBuffer = newValue }
    }
    /// `PendingReturned`: set during completion from the location below's SL_PENDING_RETURNED.
    public var pendingReturned: Bool { packet.pendingReturned }
    /// `Tail.Overlay.DriverContext`: for the driver that currently owns the IRP (queues use it).
    public var driverContext: AnyObject? {
        get { packet.driverContext }
        nonmutating set { packet.driverContext = newValue }
    }
    /// The requester the IRP goes back to.
    public var requester: (any IRPRequester)? { packet.requester }
    /// True when completion ran on another thread after dispatch returned STATUS_PENDING.
    public var completedAsynchronously: Bool { packet.completedAsynchronously }
    /// The host's buffer for this request (a read's reply buffer, a write's payload, an
    /// ioctl's envelope data). If the IRP pended while it borrowed the host's memory,
    /// this is the I/O manager's copy, where the driver's output now is.
    public var hostBuffer: UnsafeMutableRawPointer? { packet.hostBuffer }

    // MARK: - Stack locations

    /// `IoGetCurrentIrpStackLocation`.
    @inlinable public var currentStackLocation: IOStackLocation {
        get { packet.locations[packet.currentLocation - 1] }
        nonmutating _modify { yield &packet.locations[packet.currentLocation - 1] }
    }

    /// `IoGetNextIrpStackLocation`: the location the next lower driver will see.
    @inlinable public var nextStackLocation: IOStackLocation {
        get { packet.locations[packet.currentLocation - 2] }
        nonmutating _modify { yield &packet.locations[packet.currentLocation - 2] }
    }

    /// The current location's major function.
    @inlinable public var majorFunction: MajorFunction { packet.locations[packet.currentLocation - 1].majorFunction }
    /// The current location's minor function.
    @inlinable public var minorFunction: UInt8 { packet.locations[packet.currentLocation - 1].minorFunction }
    /// The current location's parameters.
    @inlinable public var parameters: IOStackLocation.Parameters { packet.locations[packet.currentLocation - 1].parameters }
    /// The current location's file object.
    @inlinable public var fileObject: FileObject? { packet.locations[packet.currentLocation - 1].fileObject }

    /// The buffer of a read or write, whichever way the device asked for it:
    /// the MDL (DO_DIRECT_IO), SystemBuffer (DO_BUFFERED_IO) or UserBuffer;
    /// `Parameters.Read.Length` bytes.
    public var transferBuffer: UnsafeMutableRawBufferPointer {
        let p = packet
        if let mdl = p.mdlAddress { return mdl.systemAddress }
        let length = p.locations[p.currentLocation - 1].parameters.read.length
        if let sb = p.systemBuffer { return UnsafeMutableRawBufferPointer(start: sb, count: length) }
        return UnsafeMutableRawBufferPointer(start: p.userBuffer, count: p.userBuffer == nil ? 0 : length)
    }

    /// `IoSkipCurrentIrpStackLocation`: the next driver sees this location as its own.
    @inlinable public func skipCurrentStackLocation() {
        packet.currentLocation += 1
    }

    /// `IoCopyCurrentIrpStackLocationToNext`: copies everything but the completion routine.
    public func copyCurrentStackLocationToNext() {
        let p = packet
        guard p.currentLocation > 1 else {
            p.ioManager.verifier.report(.noStackLocationsLeft, irp: self, detail: "IoCopyCurrentIrpStackLocationToNext at the last location")
            return
        }
        // Field by field: copying the whole location would retain (and then release)
        // the completion routine, its context and the device only to clear them.
        let cur = p.currentLocation - 1, next = cur - 1
        p.locations[next].majorFunction = p.locations[cur].majorFunction
        p.locations[next].minorFunction = p.locations[cur].minorFunction
        p.locations[next].flags = p.locations[cur].flags
        p.locations[next].control = []
        p.clearPendingNote(at: next, generation: generation)  // what the verifier knows of `control`
        p.locations[next].parameters = p.locations[cur].parameters
        p.locations[next].fileObject = p.locations[cur].fileObject
        if p.locations[next].completionRoutine != nil { p.locations[next].completionRoutine = nil }
        if p.locations[next].context != nil { p.locations[next].context = nil }
    }

    /// `IoSetCompletionRoutine`: called when the lower driver completes the IRP,
    /// if the final status matches one of the flags (InvokeOnCancel: if the IRP
    /// was cancelled, whatever the status).
    public func setCompletionRoutine(
        _ routine: @escaping CompletionRoutine, context: AnyObject? = nil,
        invokeOnSuccess: Bool = true, invokeOnError: Bool = true, invokeOnCancel: Bool = true
    ) {
        let p = packet
        guard p.currentLocation > 1 else {
            p.ioManager.verifier.report(.noStackLocationsLeft, irp: self, detail: "IoSetCompletionRoutine at the last location")
            return
        }
        let i = p.currentLocation - 2
        p.locations[i].completionRoutine = routine
        p.locations[i].context = context
        var c = p.locations[i].control.intersection(.pendingReturned)
        if invokeOnSuccess { c.insert(.invokeOnSuccess) }
        if invokeOnError { c.insert(.invokeOnError) }
        if invokeOnCancel { c.insert(.invokeOnCancel) }
        p.locations[i].control = c
    }

    /// `IoMarkIrpPending`. A dispatch routine that calls it must return `.pending`.
    /// If the IRP still borrows the host's memory (a write's payload, an ioctl's
    /// envelope), that memory moves to a copy the I/O manager owns here, before
    /// the IRP can reach another thread: the host's request may end first.
    public func markPending() {
        let p = packet
        guard p.generation == generation else {
            p.ioManager.verifier.report(.staleIrpUsed, irp: self)
            return
        }
        let i = p.currentLocation - 1
        p.locations[i].control.insert(.pendingReturned)
        p.notePending(.marked, at: i, generation: generation)
        if p.borrowed { p.ioManager.relocateBorrowedMemory(p, into: p.locations[i].deviceObject?.stackMemory) }
    }

    /// Whether the current location was marked pending.
    public var isMarkedPending: Bool {
        let p = packet
        return p.currentLocation <= p.stackCount && p.locations[p.currentLocation - 1].control.contains(.pendingReturned)
    }

    // MARK: - Completion

    /// `IoCompleteRequest`: set `ioStatus` first. Walks the stack upward calling
    /// the completion routines, then hands the IRP back to its requester.
    /// Completing an IRP twice, or one that has been reused, is caught by the
    /// verifier and ignored.
    public func complete() {
        packet.manager._withUnsafeGuaranteedRef { $0.completeRequest(self, setting: nil) }
    }

    /// Sets `ioStatus` and completes. On an IRP already completed, neither happens.
    public func complete(_ status: NTStatus, information: Int = 0) {
        packet.manager._withUnsafeGuaranteedRef { $0.completeRequest(self, setting: IOStatusBlock(status: status, information: information)) }
    }

    // MARK: - Cancel

    /// `Irp->Cancel`.
    public var cancel: Bool { packet.cancelledGeneration.load(ordering: .acquiring) == generation }

    /// `IoSetCancelRoutine`: sets the routine and returns the previous one.
    /// A queue that gets nil back when clearing knows a cancel is under way.
    @discardableResult
    public func setCancelRoutine(_ routine: CancelRoutine?) -> CancelRoutine? {
        let g = generation
        let p = packet
        return p.cancelState.withLock { state in
            guard p.generation == g else { return nil }
            let old = state.routine
            state.routine = routine
            p.cancelRoutineSet.store(routine != nil, ordering: .relaxed)
            return old
        }
    }

    /// Sets the cancel routine unless the IRP was already cancelled; returns false then.
    /// The check and the set are one step, which is what makes queues cancel-safe.
    public func setCancelRoutineUnlessCancelled(_ routine: @escaping CancelRoutine) -> Bool {
        let g = generation
        let p = packet
        return p.cancelState.withLock { state in
            if p.cancelledGeneration.load(ordering: .relaxed) == g || p.generation != g { return false }
            state.routine = routine
            p.cancelRoutineSet.store(true, ordering: .relaxed)
            return true
        }
    }

    /// `IoCancelIrp`: marks the IRP cancelled and calls its cancel routine, if any.
    /// Returns true if a cancel routine ran. On an IRP that is no longer this
    /// incarnation (completed and reused, or freed) it does nothing and the
    /// verifier reports it when a driver asked (`report`); hosts, which learn of
    /// cancels asynchronously, pass false.
    @discardableResult
    public func cancelIrp(reportingStale report: Bool = true) -> Bool {
        let p = packet
        let g = generation
        let routine: CancelRoutine?? = p.cancelState.withLock { state in
            guard p.generation == g, p.life != .free, p.life != .completed else { return .none }
            p.cancelledGeneration.store(g, ordering: .releasing)
            let r = state.routine
            state.routine = nil
            p.cancelRoutineSet.store(false, ordering: .relaxed)
            return .some(r)
        }
        guard case .some(let r) = routine else {
            if report, p.generation != g || p.life == .free { p.ioManager.verifier.report(.staleIrpUsed, irp: self) }
            return false
        }
        guard let r else { return false }
        let device = p.currentLocation <= p.stackCount ? p.locations[p.currentLocation - 1].deviceObject : nil
        p.ioManager.observers?._withUnsafeGuaranteedRef { $0.cancelling(self) }
        r(device, self)
        return true
    }
}

/// The pooled packet behind an `IRP`. Only the I/O manager touches it directly.
extension IRP {
    /// A device control's input, wherever its method put it (SystemBuffer, or
    /// Type3InputBuffer for METHOD_NEITHER), `InputBufferLength` bytes.
    public var deviceControlInput: UnsafeRawBufferPointer {
        let p = parameters.deviceIoControl
        let start = p.ioControlCode.method == .neither ? p.type3InputBuffer : systemBuffer
        guard let start, p.inputBufferLength > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: start, count: p.inputBufferLength)
    }

    /// A device control's output, wherever its method put it (SystemBuffer, the
    /// MDL, or UserBuffer for METHOD_NEITHER), `OutputBufferLength` bytes.
    public var deviceControlOutput: UnsafeMutableRawBufferPointer {
        let p = parameters.deviceIoControl
        let start: UnsafeMutableRawPointer?
        switch p.ioControlCode.method {
        case .buffered: start = systemBuffer
        case .inDirect, .outDirect: start = mdlAddress?.address
        case .neither: start = userBuffer
        }
        guard let start, p.outputBufferLength > 0 else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        return UnsafeMutableRawBufferPointer(start: start, count: p.outputBufferLength)
    }
}

extension IRP {
    /// A handle to an IRP made only of trivially destroyed parts, which keeps the
    /// packet alive until `release()`: for owners that are `~Copyable` and must
    /// `discard self` (the framework's `Request`).
    public struct Handle: @unchecked Sendable {
        let packet: Unmanaged<IRPPacket>
        let generation: UInt32
        /// The IRP (no reference taken).
        public var irp: IRP { IRP(packet: packet.takeUnretainedValue(), generation: generation) }
        /// Lets the packet go (once).
        public func release() { packet.release() }
    }

    /// A retained `Handle` to this IRP.
    public func retainedHandle() -> Handle { Handle(packet: .passRetained(packet), generation: generation) }
    /// A `Handle` that takes no reference, for an owner that lives only while
    /// someone else keeps the packet (a request presented in its dispatch
    /// routine): never `release()` it.
    public func unretainedHandle() -> Handle { Handle(packet: .passUnretained(packet), generation: generation) }
}

public final class IRPPacket: @unchecked Sendable {
    @usableFromInline let stackCount: Int
    /// `CurrentLocation`. Changed only by the IRP's owner, but an atomic: after a
    /// dispatch routine returned, the verifier on the dispatching thread reads how
    /// far a completion running elsewhere got (the walk publishes each step with a
    /// releasing store). Relaxed everywhere else: a plain load or store.
    @usableFromInline let location: Atomic<Int>
    @inlinable var currentLocation: Int {
        @inline(__always) get { location.load(ordering: .relaxed) }
        @inline(__always) set { location.store(newValue, ordering: .relaxed) }
    }
    /// The stack locations, allocated once for the packet's life: a plain buffer,
    /// so touching a location costs no uniqueness check.
    @usableFromInline let locations: UnsafeMutablePointer<IOStackLocation>

    @exclusivity(unchecked) @usableFromInline var ioStatus = IOStatusBlock()
    @exclusivity(unchecked) @usableFromInline var systemBuffer: UnsafeMutableRawPointer?
    @exclusivity(unchecked) @usableFromInline var mdlAddress: MDL?
    @exclusivity(unchecked) @usableFromInline var userBuffer: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var pendingReturned = false
    @exclusivity(unchecked) var driverContext: AnyObject?
    // unowned(unsafe): the I/O manager outlives what it owns; read on every IRP.
    @usableFromInline unowned(unsafe) let ioManager: IOManager
    /// The same, for calls that must not retain it.
    @usableFromInline let manager: Unmanaged<IOManager>

    // Requester side.
    @exclusivity(unchecked) var requester: (any IRPRequester)?
    /// The top of the stack the IRP was built for, where `submit` sends it.
    @exclusivity(unchecked) unowned(unsafe) var targetDevice: DeviceObject?
    /// The file object the IRP was made for: the reference that keeps it alive
    /// while the IRP is in flight (the locations do not count theirs).
    @exclusivity(unchecked) var file: FileObject?
    @exclusivity(unchecked) var completedAsynchronously = false
    /// The host's buffer (see `IRP.hostBuffer`).
    @exclusivity(unchecked) var hostBuffer: UnsafeMutableRawPointer?
    /// True while the IRP points into host memory that is valid only until `send` returns.
    @exclusivity(unchecked) var borrowed = false
    @exclusivity(unchecked) var borrowedCount = 0
    /// Where the borrowed region starts (at or before `hostBuffer`).
    @exclusivity(unchecked) var borrowBase: UnsafeMutableRawPointer?
    /// The I/O manager's copy of borrowed memory, once the IRP pended.
    @exclusivity(unchecked) var ownedCopy: UnsafeMutableRawPointer?
    /// Where `ownedCopy` came from (nil: the heap).
    @exclusivity(unchecked) var ownedCopyMemory: (any StackMemory)?
    /// The buffer lengths the verifier checks Information against (0: not checked).
    @exclusivity(unchecked) var informationLimit = -1
    /// Whether `informationLimit` is a METHOD_BUFFERED output length (Verifier's 0x312).
    @exclusivity(unchecked) var informationIsBufferedOutput = false
    /// The device whose driver called IoCompleteRequest (set by the verifier's
    /// rules as the walk starts; read by them when it ends).
    @exclusivity(unchecked) unowned(unsafe) var completer: DeviceObject?
    /// The devices that called a PnP or power IRP down, for generation
    /// `forwardersGeneration` (the verifier's rules; untouched for other IRPs).
    @exclusivity(unchecked) var forwarders: [ObjectIdentifier] = []
    @exclusivity(unchecked) var forwardersGeneration: UInt32 = 0
    /// A synchronous caller's wait, tagged with the IRP's generation:
    /// generation << 8 | `SyncWait`. Exactly one of the completion (`delivered`)
    /// and the shutdown (`abandoned`) moves it on from `waiting`, and only that one
    /// wakes the caller: `done` is signalled once per wait.
    let syncWait = Atomic<UInt64>(0)
    enum SyncWait: UInt64 { case none = 0, waiting, delivered, abandoned }
    /// True when a synchronous caller gave up on this IRP (its late completion is dropped).
    var abandoned: Bool { syncWait.load(ordering: .acquiring) & 0xFF == SyncWait.abandoned.rawValue }

    // Bounce buffering (IOManager.bounceBuffers): the caller's memory while the
    // driver works on a SystemBuffer of its own.
    @exclusivity(unchecked) var bounceCaller: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var bounceSystem: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var bounceCopyBack = 0

    struct CancelState {
        var routine: CancelRoutine?
    }
    /// The cancel routine, changed under this lock (checked against the generation).
    let cancelState = HandoffMutex(CancelState())
    /// `Irp->Cancel` for generation g is `cancelledGeneration == g`: a new generation
    /// starts uncancelled without touching it.
    let cancelledGeneration = Atomic<UInt32>(0)
    /// Whether a cancel routine is set (kept under the lock): completion reads it
    /// without taking the lock when none is.
    let cancelRoutineSet = Atomic<Bool>(false)
    /// The generation (high bits) and the life (low byte), changed together.
    let state = Atomic<UInt64>(0)
    /// Who had the last incarnations (for reports about a stale IRP): the driver
    /// that saw each lowest in the stack and its major function, in a ring of 8.
    /// Identifiers only, so keeping them costs no reference counting.
    struct Retired { var generation: UInt32 = 0; var driver: ObjectIdentifier?; var device: ObjectIdentifier?; var major = MajorFunction.create }
    let retired: UnsafeMutablePointer<Retired> = {
        let p = UnsafeMutablePointer<Retired>.allocate(capacity: 8)
        p.initialize(repeating: Retired(), count: 8)
        return p
    }()

    func retiredIncarnation(_ g: UInt32) -> Retired? {
        let r = retired[Int(g & 7)]
        return r.generation == g && r.driver != nil ? r : nil
    }
    /// An IRP_MJ_PNP IRP's parameters and answers.
    @exclusivity(unchecked) var pnp: PnPRequest?
    /// An IRP_MJ_POWER IRP's parameters.
    @exclusivity(unchecked) var power: PowerRequest?
    /// An IRP_MJ_INTERNAL_DEVICE_CONTROL IRP's `Parameters.Others`.
    @exclusivity(unchecked) var others: InternalArguments?
    /// The next free packet of the same size (the pool's list).
    @exclusivity(unchecked) var nextFree: Unmanaged<IRPPacket>?
    /// A completion that arrived while the completion walk was still running.
    @exclusivity(unchecked) var queuedStatus: IOStatusBlock?
    /// 0 not submitted, 1 dispatching, 2 dispatch returned without completion, 3 completed while dispatching.
    let dispatchState = Atomic<UInt8>(0)
    let done = DispatchSemaphore(value: 0)

    /// What the pending rules need from both the dispatching thread and the thread
    /// that completes the IRP, one word per location: the generation (high bits)
    /// and `PendingNote` flags (low byte). The dispatching thread stops owning the
    /// IRP when its routine returns STATUS_PENDING, so what it learns then (and what
    /// the completing thread tells it) goes through these atomics, never through
    /// the locations. A word of another generation counts as no flags: nothing is
    /// cleared when the packet is reused.
    let pendingNotes: UnsafeMutablePointer<Atomic<UInt64>>
    /// The status the walk left at each location, for the verifier's status check on
    /// the dispatching thread: the generation (high half) and the NTSTATUS (low
    /// half), atomic for the same reason as `pendingNotes` (the packet may already
    /// serve the next request when that thread looks).
    let completedNotes: UnsafeMutablePointer<Atomic<UInt64>>
    /// The last generation in which some location's routine returned STATUS_PENDING
    /// (so the walk's end reads the notes only for an IRP that pended somewhere).
    let returnedPendingIn = Atomic<UInt32>(0)

    struct PendingNote: OptionSet {
        let rawValue: UInt8
        /// IoMarkIrpPending on this location (by its driver, or by the walk passing SL_PENDING_RETURNED up).
        static let marked = PendingNote(rawValue: 1)
        /// Its dispatch routine returned STATUS_PENDING.
        static let returnedPending = PendingNote(rawValue: 2)
        /// The verifier has checked it: the thread that sets this reports, the other does not.
        static let checked = PendingNote(rawValue: 4)
    }

    init(stackCount: Int, ioManager: IOManager) {
        self.stackCount = stackCount
        self.location = Atomic(stackCount + 1)
        self.locations = .allocate(capacity: max(stackCount, 1))
        self.locations.initialize(repeating: IOStackLocation(), count: stackCount)
        self.pendingNotes = .allocate(capacity: max(stackCount, 1))
        for i in 0..<stackCount { (pendingNotes + i).initialize(to: Atomic(0)) }
        self.completedNotes = .allocate(capacity: max(stackCount, 1))
        for i in 0..<stackCount { (completedNotes + i).initialize(to: Atomic(0)) }
        self.ioManager = ioManager
        self.manager = Unmanaged.passUnretained(ioManager)
    }

    deinit {
        locations.deinitialize(count: stackCount)
        locations.deallocate()
        pendingNotes.deinitialize(count: stackCount)
        pendingNotes.deallocate()
        completedNotes.deinitialize(count: stackCount)
        completedNotes.deallocate()
        retired.deallocate()
    }

    /// Adds `note` to location `index`'s word for generation `g` and returns what it
    /// held for `g` before; nil if the packet no longer serves generation `g` (then
    /// nothing is written: the word may belong to the next request).
    @discardableResult
    func notePending(_ note: PendingNote, at index: Int, generation g: UInt32) -> PendingNote? {
        let word = pendingNotes + index
        var old = word.pointee.load(ordering: .relaxed)
        while true {
            let had: PendingNote
            if UInt32(truncatingIfNeeded: old >> 8) == g {
                had = PendingNote(rawValue: UInt8(truncatingIfNeeded: old))
            } else {
                // Left by an earlier generation, or the packet moved on to a later one.
                guard generation == g else { return nil }
                had = []
            }
            let new = UInt64(g) << 8 | UInt64(had.union(note).rawValue)
            if new == old { return had }
            // Sequentially consistent: see VerifierRules (a store then a load on each side).
            let (ok, seen) = word.pointee.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
            if ok { return had }
            old = seen
        }
    }

    /// Location `index`'s word starts over for generation `g` (its `control` was
    /// cleared, by the owner, before the location goes to the next driver).
    func clearPendingNote(at index: Int, generation g: UInt32) {
        pendingNotes[index].store(UInt64(g) << 8, ordering: .relaxed)
    }

    /// The walk passed location `index` of generation `g` with `status`.
    @inline(__always)
    func noteCompleted(_ status: NTStatus, at index: Int, generation g: UInt32) {
        completedNotes[index].store(UInt64(g) << 32 | UInt64(status.rawValue), ordering: .releasing)
    }

    /// The status the walk left at location `index` in generation `g`, or nil (another generation's).
    func completedNote(at index: Int, generation g: UInt32) -> NTStatus? {
        let w = completedNotes[index].load(ordering: .acquiring)
        return UInt32(truncatingIfNeeded: w >> 32) == g ? NTStatus(UInt32(truncatingIfNeeded: w)) : nil
    }

    /// Location `index`'s flags for generation `g` (none if the word is another generation's).
    func notes(at index: Int, generation g: UInt32) -> PendingNote {
        let w = pendingNotes[index].load(ordering: .sequentiallyConsistent)
        return UInt32(truncatingIfNeeded: w >> 8) == g ? PendingNote(rawValue: UInt8(truncatingIfNeeded: w)) : []
    }

    enum Life: UInt8 {
        case free = 0, inFlight = 1, walking = 2, walkingQueued = 3, completed = 4
    }
    enum Dispatch: UInt8 { case idle = 0, dispatching = 1, returnedPending = 2, completedWhileDispatching = 3 }

    @inline(__always) static func word(_ generation: UInt32, _ life: Life) -> UInt64 {
        UInt64(generation) << 8 | UInt64(life.rawValue)
    }
    var generation: UInt32 { UInt32(truncatingIfNeeded: state.load(ordering: .acquiring) >> 8) }

    /// Gives back the I/O manager's copy of borrowed memory, to where it came from.
    func freeOwnedCopy() {
        guard let copy = ownedCopy else { return }
        if let m = ownedCopyMemory { m.deallocate(copy, byteCount: max(borrowedCount, 1)) } else { copy.deallocate() }
        ownedCopy = nil
        ownedCopyMemory = nil
    }
    var life: Life { Life(rawValue: UInt8(truncatingIfNeeded: state.load(ordering: .acquiring))) ?? .free }

    /// Drops every reference the packet holds (its I/O manager is going away).
    func forget() {
        requester = nil
        file = nil
        driverContext = nil
        freeOwnedCopy()
        bounceSystem?.deallocate()
        bounceSystem = nil
        for i in 0..<stackCount {
            locations[i].completionRoutine = nil
            locations[i].context = nil
        }
    }

    /// Reinitializes for reuse (`IoReuseIrp`) and starts the next generation.
    func reset(retiring generation: UInt32) {
        var r = Retired(generation: generation)
        for i in 0..<stackCount where locations[i].deviceObject != nil {
            r.driver = ObjectIdentifier(locations[i].deviceObject!.driverObject)
            r.device = ObjectIdentifier(locations[i].deviceObject!)
            r.major = locations[i].majorFunction
            break
        }
        retired[Int(generation & 7)] = r
        for i in 0..<stackCount {
            // Field by field: cheaper than destroying and rebuilding the whole location.
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
        targetDevice = nil
        if file != nil { file = nil }
        if pnp != nil { pnp = nil }
        if power != nil { power = nil }
        if others != nil { others = nil }
        hostBuffer = nil
        borrowed = false
        borrowedCount = 0
        borrowBase = nil
        informationLimit = -1
        informationIsBufferedOutput = false
        queuedStatus = nil
        completedAsynchronously = false
        syncWait.store(0, ordering: .relaxed)
        dispatchState.store(Dispatch.idle.rawValue, ordering: .relaxed)
    }
}
