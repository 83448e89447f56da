// IOManager: the kernel's I/O manager. Loads drivers, creates and stacks
// devices, owns the IRP pool, and implements IoCallDriver and IoCompleteRequest,
// the two choke points every IRP passes (where the observers sit).

import Dispatch
import Synchronization

/// The I/O manager.
public final class IOManager: @unchecked Sendable {
    /// Driver Verifier: records violations. The rules that watch IRPs are an
    /// observer (`VerifierRules`) installed when `verifierRules` is true.
    public let verifier = Verifier()
    /// Where the I/O manager says what it does (driver loads and unloads). Set before use.
    public nonisolated(unsafe) var log: (@Sendable (String) -> Void)?
    /// Told when a device's readiness may have changed. Set before I/O starts, cleared
    /// when the observer goes (strong, so the observer's retains stay on the fast path).
    public nonisolated(unsafe) var readinessObserver: (any ReadinessObserver)?
    /// When true, METHOD_BUFFERED and DO_BUFFERED_IO get a SystemBuffer of their
    /// own, filled and emptied by copies as Windows does. Off by default: the
    /// driver then works on the caller's memory and `bytesCopied` stays 0.
    public let bounceBuffers: Bool
    /// Checked mode: memory a request borrowed is poisoned when the request ends,
    /// so a driver that kept a buffer after completion reads garbage, and a host's
    /// pooled buffer that changes after it was poisoned is reported.
    public let checkedBuffers: Bool
    /// Set once by `beginShutdown`: the host is ending.
    let shuttingDown = Atomic<Bool>(false)
    /// True once the host began shutting down (`beginShutdown`).
    public var isShuttingDown: Bool { shuttingDown.load(ordering: .acquiring) }
    /// How long a cancelled IRP may take to complete before the I/O manager stops
    /// waiting for it (at shutdown, after a host's cancel). Windows waits 5 minutes.
    public nonisolated(unsafe) var shutdownGrace: Double = 1.0
    /// Where the verifier's stress options run their later work (forced pending's
    /// dispatch, the deadlines): a queue of its own, which gets a thread even while
    /// the global pool's are all blocked (libdispatch overcommits for it).
    let stressQueue = DispatchQueue(label: "wdmfs.verifier.stress", attributes: .concurrent)
    /// Drivers' log levels: everyone's, and those set by name (see `setLogLevels`).
    let logLevels = HandoffMutex<(all: Logger.Level, named: [String: Logger.Level])>((.info, [:]))
    /// What each reader of the trace holds before it loses events (bytes). Set before a reader opens.
    public nonisolated(unsafe) var traceReaderCapacity = 1 << 20

    /// The observers at IoCallDriver and IoCompleteRequest, in call order. Nil when
    /// there are none: the IRP path then pays one load and one branch per choke point.
    /// An atomic, because an observer can come and go while I/O runs (a trace
    /// reader opens the first or closes the last handle of `.trace`); an acquiring
    /// load costs what a plain one does on the machines wdmfs runs on.
    @inlinable var observers: Unmanaged<ObserverChain>? { observerWord.load(ordering: .acquiring) }
    @usableFromInline let observerWord = Atomic<Unmanaged<ObserverChain>?>(nil)
    /// Every chain ever installed, the current one last: a chain stays alive for
    /// the I/O manager's life, since a request may still be walking an old one.
    let observerChains = HandoffMutex<[ObserverChain]>([])

    /// Installs `list` as the chain (nil when empty).
    private func installObservers(_ change: ([any IRPObserver]) -> [any IRPObserver]) {
        observerChains.withLock { chains in
            let list = change(observerWord.load(ordering: .acquiring) == nil ? [] : chains.last?.list ?? [])
            guard !list.isEmpty else {
                observerWord.store(nil, ordering: .releasing)
                return
            }
            let chain = ObserverChain(list)
            chains.append(chain)
            observerWord.store(Unmanaged.passUnretained(chain), ordering: .releasing)
        }
    }

    /// Matches child PDOs to function drivers (see `DriverMatcher`). Set before buses enumerate.
    public nonisolated(unsafe) var driverMatcher: DriverMatcher?
    /// The PnP manager: the owner of the device tree (set in init, never changed).
    public private(set) nonisolated(unsafe) var pnp: PnPManager!

    /// Deleted devices, kept until no IRP is in flight: a request that was already
    /// inside a stack when its devices were detached and deleted still walks
    /// through live objects (the links it follows are not counted).
    let graveyard = HandoffMutex<[DeviceObject]>([])
    /// Registered device interfaces.
    let interfaces = HandoffMutex<[DeviceInterface]>([])
    /// Interface classes ever registered.
    let interfaceClasses = HandoffMutex<[String]>([])
    /// Some stack holds its new requests (not in D0, or stopped), so `send` looks at the one it sends to.
    let anyHeld = Atomic<Bool>(false)
    /// How many stacks hold their new requests (`hold`).
    let heldStacks = Atomic<Int>(0)
    let systemPower = HandoffMutex(SystemPowerState.working)
    /// Told "node Sx Dy" as each stack moves between power states (filters' logs, tests).
    public nonisolated(unsafe) var powerLog: (@Sendable (String) -> Void)?

    let counters = IOCounters()
    /// Threads in `waitForDeliveries`, and what wakes them.
    let deliveryWaiters = Atomic<Int>(0)
    let delivered = DispatchSemaphore(value: 0)
    let pool = IRPPool()
    /// The object namespace's symbolic links (Namespace.swift).
    let links = HandoffMutex(LinkTable())
    private let drivers = HandoffMutex<[DriverObject]>([])
    let deviceCount = Atomic<Int>(0)
    private var rootBusObject: DriverObject?
    var rootBus: DriverObject {
        if let b = rootBusObject { return b }
        let b = makeRootBus()
        rootBusObject = b
        return b
    }

    /// `verifierRules`: install Driver Verifier's IRP rules as an observer (the
    /// daemon's default; Windows enables Verifier per driver).
    public init(bounceBuffers: Bool = false, verifierRules: Bool = true, checkedBuffers: Bool = false) {
        self.bounceBuffers = bounceBuffers
        self.checkedBuffers = checkedBuffers
        pnp = PnPManager(io: self)
        if verifierRules { addObserver(VerifierRules(verifier)) }
        let logger = IRPLogger(verifier)
        verifier.onStressChange = { [unowned self] stress in
            removeObserver(logger)
            if stress.irpLog > 0 { addObserver(logger) }
        }
        verifier.drivers = { [unowned self] in self.loadedDrivers }
        verifier.driverNames = { [unowned self] id in
            self.loadedDrivers.first { ObjectIdentifier($0) == id }?.name
        }
        verifier.devices = { [unowned self] id in
            for driver in self.loadedDrivers {
                if let d = driver.deviceObjects.first(where: { ObjectIdentifier($0) == id }) { return d }
            }
            return nil
        }
    }

    /// Adds an observer at the end of the chain, also while I/O runs (a request in
    /// flight may then show it only its later events). The I/O manager keeps it alive.
    public func addObserver(_ observer: any IRPObserver) {
        installObservers { $0 + [observer] }
    }

    /// Removes `observer`, also while I/O runs.
    public func removeObserver(_ observer: any IRPObserver) {
        installObservers { $0.filter { $0 !== observer } }
    }

    /// Removes every observer of type `T`.
    public func removeObservers<T: IRPObserver>(of type: T.Type) {
        installObservers { $0.filter { !($0 is T) } }
    }

    /// The counters, as a snapshot.
    public var statistics: IOStatistics {
        IOStatistics(
            irpsSubmitted: counters.submitted.load(ordering: .relaxed),
            irpsCompleted: counters.completed.load(ordering: .relaxed),
            irpsPended: counters.pended.load(ordering: .relaxed),
            irpsCancelled: counters.cancelled.load(ordering: .relaxed),
            bytesCopied: counters.bytesCopied.load(ordering: .relaxed),
            verifierViolations: verifier.count)
    }

    /// The one place the I/O manager copies data between buffers; counted in `bytesCopied`.
    public func copyBytes(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int) {
        guard count > 0 else { return }
        destination.copyMemory(from: source, byteCount: count)
        counters.bytesCopied.add(count, ordering: .relaxed)
    }

    // MARK: - Drivers

    /// Loads a driver: creates its driver object and calls `DriverEntry`.
    public func loadDriver(name: String, entry: DriverEntry) throws(NTStatus) -> DriverObject {
        let driver = DriverObject(name: name.hasPrefix("\\") ? name : "\\Driver\\" + name, ioManager: self)
        driver.logLevel = logLevel(for: driver.name)
        driver.verified.store(verifier.scope.covers(driver.name), ordering: .relaxed)
        let status = entry(driver)
        guard status.isSuccess else { throw status }
        drivers.withLock { $0.append(driver) }
        log?("loaded \(driver.name)")
        return driver
    }

    /// Every loaded driver, in load order.
    public var loadedDrivers: [DriverObject] { drivers.withLock { $0 } }

    /// Tears down every device node (IRP_MN_REMOVE_DEVICE down each stack, last
    /// added first: each driver detaches and deletes its device, then the PDO is
    /// deleted), then calls each driver's Unload in reverse load order.
    public func unloadAll() {
        pnp.perform { pnp.removeEverything() }
        let all = drivers.withLock { d in defer { d.removeAll() }; return d }
        for driver in all.reversed() {
            driver.unload?(driver)
            if !driver.deviceObjects.isEmpty {
                verifier.report(.unloadWithDevices, device: driver.deviceObjects.first)
            }
            log?("unloaded \(driver.name)")
            driver.release()
        }
        links.withLock { $0 = LinkTable() }
        rootBusObject?.release()
        readinessObserver = nil
        pool.drain()
        graveyard.withLock { $0.removeAll() }
    }

    deinit {
        // A tree dropped without an unmount (tests, embedded hosts): break the links
        // that hold stacks together so everything it built is freed. No Unload runs.
        for node in pnp.roots {
            var top: DeviceObject? = node.pdo?.topOfStack
            while let d = top {
                top = d.lowerDevice
                d.attachedDevice = nil
                d.lowerDevice = nil
            }
        }
        for driver in drivers.withLock({ $0 }) { driver.release() }
        rootBusObject?.release()
        graveyard.withLock { $0.removeAll() }
        // IRPs a driver never completed still point at their requester and file,
        // which may point back at them (a queue in a device extension): let go.
        for p in pool.all where p.life != .free { p.forget() }
    }


    // MARK: - IRPs

    /// `IoAllocateIrp`: an IRP from the pool, with `stackSize` locations.
    public func allocateIrp(stackSize: Int) -> IRP {
        let p = pool.take(stackSize: stackSize) ?? pool.make(stackSize: stackSize, ioManager: self)
        var g = p.generation &+ 1
        if g == 0 { g = 1 }  // 0 stands for "never cancelled"
        p.state.store(IRPPacket.word(g, .inFlight), ordering: .releasing)
        return IRP(packet: p, generation: g)
    }

    /// `IoFreeIrp`: returns a completed (or never sent) IRP to the pool.
    public func freeIrp(_ irp: IRP) {
        let p = irp.packet
        guard p.generation == irp.generation, p.life != .free else {
            verifier.report(.staleIrpUsed, irp: irp, detail: "IoFreeIrp on an IRP already freed")
            return
        }
        let d = p.dispatchState.load(ordering: .acquiring)
        if p.life == .inFlight, d != IRPPacket.Dispatch.idle.rawValue {
            verifier.report(.freedInFlight, irp: irp)
            return
        }
        releaseBounceBuffer(p)
        if let copy = p.ownedCopy {
            if checkedBuffers { copy.initializeMemory(as: UInt8.self, repeating: Poison.byte, count: p.borrowedCount) }
            p.freeOwnedCopy()
        }
        p.reset(retiring: irp.generation)
        p.state.store(IRPPacket.word(irp.generation, .free), ordering: .releasing)
        pool.put(p)
    }

    /// `IoCallDriver`: moves to the next stack location and calls `device`'s dispatch routine.
    @inline(__always)
    public func callDriver(_ device: DeviceObject, _ irp: IRP) -> NTStatus {
        let p = irp.packet
        guard p.currentLocation > 1 else {
            verifier.report(.noStackLocationsLeft, irp: irp, device: device)
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        p.currentLocation -= 1
        let location = p.currentLocation
        p.locations[location - 1].deviceObject = device
        let routine = device.dispatch[Int(p.locations[location - 1].majorFunction.rawValue)].routine
        guard let observers else {
            guard let routine else { return invalidRequest(irp) }
            return routine(device, irp)
        }
        if verifier.stressBits.load(ordering: .relaxed) & StressBits.pending != 0, let caller = device.attachedDevice,
           let forced = forcePending(device, irp, caller: caller, location: location, routine: routine, observers: observers) {
            return forced
        }
        return observers._withUnsafeGuaranteedRef { chain in
            chain.callingDriver(device, irp, location: location)
            // Read while this thread still owns the IRP: once the routine returned
            // STATUS_PENDING, the verifier must not read the locations.
            let major = p.locations[location - 1].majorFunction, minor = p.locations[location - 1].minorFunction
            let status = routine.map { $0(device, irp) } ?? invalidRequest(irp)
            chain.driverReturned(device, irp, location: location, status: status, major: major, minor: minor)
            return status
        }
    }

    /// Verifier's forced pending: a verified driver's call down (not PnP or power)
    /// returns STATUS_PENDING to it now, and the driver below runs later on another
    /// thread, with its location marked pending, as if it had pended. Nil: not this one.
    /// (The caller is the device attached above `device`, as for 0x203.)
    private func forcePending(_ device: DeviceObject, _ irp: IRP, caller: DeviceObject, location: Int, routine: DispatchRoutine?,
                              observers: Unmanaged<ObserverChain>) -> NTStatus? {
        let p = irp.packet
        let major = p.locations[location - 1].majorFunction
        guard major != .pnp, major != .power, verifier.verifies(caller.driverObject), verifier.draw(\.pending) else { return nil }
        p.locations[location - 1].control.insert(.pendingReturned)
        p.notePending(.marked, at: location - 1, generation: irp.generation)
        counters.pended.add(1, ordering: .relaxed)
        stressQueue.async { [self] in
            observers._withUnsafeGuaranteedRef { chain in
                chain.callingDriver(device, irp, location: location)
                let status = routine.map { $0(device, irp) } ?? invalidRequest(irp)
                // Not the rules: the pending mark is the I/O manager's, not this driver's doing.
                for o in chain.others { o.driverReturned(device, irp, location: location, status: status) }
            }
        }
        return .pending
    }

    private func invalidRequest(_ irp: IRP) -> NTStatus {
        irp.complete(.invalidDeviceRequest)
        return .invalidDeviceRequest
    }

    /// Sends an IRP built by `makeIrp` to the top of its stack and arranges for its
    /// requester to be called once. Returns STATUS_PENDING if and only if the
    /// requester will be called later, from the thread that completes the IRP;
    /// otherwise the requester has already been called when this returns, and the
    /// result is the final status.
    func submit(_ irp: IRP) -> NTStatus {
        let p = irp.packet
        let device = p.targetDevice!
        counters.submitted.add(1, ordering: .relaxed)
        p.dispatchState.store(IRPPacket.Dispatch.dispatching.rawValue, ordering: .releasing)
        let status = callDriver(device, irp)
        if status == .pending || p.dispatchState.load(ordering: .acquiring) == IRPPacket.Dispatch.dispatching.rawValue {
            // Not completed (yet): memory borrowed from the host must outlive this
            // call (a driver that marked the IRP pending already moved it), and the
            // requester hears of the pending state while delivery is still held
            // back: a completion racing with this only marks the IRP.
            if p.borrowed { relocateBorrowedMemory(p, into: device.stackMemory) }
            p.requester?.irpPending(irp)
        }
        let (exchanged, _) = p.dispatchState.compareExchange(
            expected: IRPPacket.Dispatch.dispatching.rawValue, desired: IRPPacket.Dispatch.returnedPending.rawValue,
            ordering: .acquiringAndReleasing)
        if exchanged {
            counters.pended.add(1, ordering: .relaxed)
            return .pending
        }
        // Read before delivering: `deliver` frees the packet (unless the caller waits
        // for it), and another thread may take it from the pool at once.
        let final = p.ioStatus.status
        deliver(irp, asynchronously: false)
        return final
    }

    /// Submits and waits: the IRP is completed when this returns, unless the host
    /// is shutting down and the driver did not complete it within `shutdownGrace`
    /// after a cancel (`beginShutdown`; then STATUS_CANCELLED, and the IRP is
    /// abandoned to the driver).
    /// The caller frees a completed IRP.
    func callSynchronously(_ irp: IRP) -> (status: NTStatus, completed: Bool) {
        irp.packet.requester = SynchronousRequester.shared
        irp.packet.syncWait.store(UInt64(irp.generation) << 8 | IRPPacket.SyncWait.waiting.rawValue, ordering: .relaxed)
        if submit(irp) == .pending { return waitSynchronously(irp) }
        return (irp.packet.ioStatus.status, true)
    }

    /// Waits for an IRP whose requester is `SynchronousRequester` and that pended
    /// (see `callSynchronously`). No timer: the completion or `beginShutdown` wakes
    /// it. A wait that starts after the shutdown began gives up by itself.
    func waitSynchronously(_ irp: IRP) -> (status: NTStatus, completed: Bool) {
        let p = irp.packet
        // Pairs with the fence in `beginShutdown`: either its scan sees this IRP
        // outstanding, or this load sees the shutdown.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if shuttingDown.load(ordering: .relaxed) {
            irp.cancelIrp(reportingStale: false)
            if p.done.wait(timeout: .now() + shutdownGrace) == .success { return (p.ioStatus.status, true) }
            if abandonSynchronousWait(irp, signalling: false) { return (.cancelled, false) }
            // Delivered in the meantime: its signal is on the way.
        }
        p.done.wait()
        if p.abandoned { return (.cancelled, false) }
        return (p.ioStatus.status, true)
    }

    /// Gives up a synchronous caller's wait on `irp` (at shutdown), unless the IRP
    /// was delivered first. The late completion then frees the IRP.
    @discardableResult
    func abandonSynchronousWait(_ irp: IRP, signalling: Bool) -> Bool {
        let g = UInt64(irp.generation) << 8
        guard irp.packet.syncWait.compareExchange(
            expected: g | IRPPacket.SyncWait.waiting.rawValue, desired: g | IRPPacket.SyncWait.abandoned.rawValue,
            ordering: .acquiringAndReleasing).exchanged else { return false }
        verifier.report(.neverCompleted, irp: irp, detail: "a synchronous request abandoned at shutdown")
        if signalling { irp.packet.done.signal() }
        return true
    }

    /// The host is ending (a signal, an unmount): every outstanding IRP is cancelled,
    /// the drivers get `shutdownGrace` seconds, each IRP still not completed is
    /// reported, and every synchronous caller still waiting (for a driver, or in a
    /// queue held while its device is not in D0) is answered STATUS_CANCELLED.
    /// Runs once; later calls return at once. Returns the IRPs left with the drivers.
    @discardableResult
    public func beginShutdown() -> [IRP] {
        guard shuttingDown.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged else { return [] }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let left = cancelOutstanding(grace: shutdownGrace)
        for p in pool.all {
            let w = p.syncWait.load(ordering: .acquiring)
            guard w & 0xFF == IRPPacket.SyncWait.waiting.rawValue else { continue }
            abandonSynchronousWait(IRP(packet: p, generation: UInt32(truncatingIfNeeded: w >> 8)), signalling: true)
        }
        return left
    }

    static var now: Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// `IoCompleteRequest`.
    func completeRequest(_ irp: IRP, setting newStatus: IOStatusBlock?) {
        let p = irp.packet
        let g = irp.generation
        let inFlight = IRPPacket.word(g, .inFlight), walking = IRPPacket.word(g, .walking)
        while true {
            let (ok, seen) = p.state.compareExchange(expected: inFlight, desired: walking, ordering: .acquiringAndReleasing)
            if ok { break }
            if seen == walking {
                // The walk is still running: a completion routine returned (or is about to
                // return) STATUS_MORE_PROCESSING_REQUIRED after handing the IRP to this
                // thread. Leave the completion for the walk to pick up; nobody waits.
                p.queuedStatus = newStatus ?? p.ioStatus
                let (queued, _) = p.state.compareExchange(
                    expected: walking, desired: IRPPacket.word(g, .walkingQueued), ordering: .acquiringAndReleasing)
                if queued { return }
                continue
            }
            if UInt32(truncatingIfNeeded: seen >> 8) != g || seen & 0xFF == UInt64(IRPPacket.Life.free.rawValue) {
                verifier.report(.staleIrpUsed, irp: irp, detail: "IoCompleteRequest on an IRP that was freed or reused")
            } else {
                verifier.report(.completedTwice, irp: irp)
            }
            return
        }
        if let newStatus { p.ioStatus = newStatus }
        if let pnp = p.pnp, p.currentLocation <= p.stackCount { pnp.completedBy = p.locations[p.currentLocation - 1].deviceObject }
        walk(irp)
    }

    /// The completion walk: from the current location up, calling completion routines.
    private func walk(_ irp: IRP) {
        let p = irp.packet
        let g = irp.generation
        let observers = self.observers
        observers?._withUnsafeGuaranteedRef { $0.completing(irp) }
        if p.setCancelRoutineCleared() { verifier.report(.completedWithCancelRoutine, irp: irp) }
        if p.ioStatus.status == .cancelled { counters.cancelled.add(1, ordering: .relaxed) }

        while p.currentLocation <= p.stackCount {
            let i = p.currentLocation - 1
            let control = p.locations[i].control
            let routine = p.locations[i].completionRoutine
            let context = p.locations[i].context
            p.locations[i].completionRoutine = nil
            p.locations[i].context = nil
            p.locations[i].completedStatus = p.ioStatus.status
            p.noteCompleted(p.ioStatus.status, at: i, generation: g)
            // Releasing: a dispatching thread that sees the walk past this location
            // (the verifier, after the routine returned) also sees completedStatus.
            p.location.store(i + 2, ordering: .releasing)
            p.pendingReturned = control.contains(.pendingReturned)
            let status = p.ioStatus.status
            let above = p.currentLocation <= p.stackCount ? p.locations[p.currentLocation - 1].deviceObject : nil
            if let routine,
               (status.isSuccess && control.contains(.invokeOnSuccess))
                || (!status.isSuccess && control.contains(.invokeOnError))
                || (irp.cancel && control.contains(.invokeOnCancel))
            {
                let pendingReturned = p.pendingReturned
                let result = routine(above, irp, context)
                observers?._withUnsafeGuaranteedRef { $0.completionRoutineReturned(above, irp, pendingReturned: pendingReturned, result: result) }
                if result == .moreProcessingRequired {
                    // The routine's driver owns the IRP again. If it already completed
                    // it again (on another thread), go on with that completion here.
                    let (ok, _) = p.state.compareExchange(
                        expected: IRPPacket.word(g, .walking), desired: IRPPacket.word(g, .inFlight),
                        ordering: .acquiringAndReleasing)
                    if ok { return }
                    p.state.store(IRPPacket.word(g, .walking), ordering: .releasing)
                    if let q = p.queuedStatus { p.ioStatus = q }
                    p.queuedStatus = nil
                    continue
                }
            } else if p.pendingReturned, p.currentLocation <= p.stackCount {
                p.locations[p.currentLocation - 1].control.insert(.pendingReturned)
                p.notePending(.marked, at: p.currentLocation - 1, generation: g)
            }
        }
        // Sequentially consistent: the verifier's pending check pairs this store with
        // its reads of the locations' pending notes (see VerifierRules).
        let (finished, _) = p.state.compareExchange(
            expected: IRPPacket.word(g, .walking), desired: IRPPacket.word(g, .completed), ordering: .sequentiallyConsistent)
        if !finished {
            // Completed again while the walk ran, and no routine asked for it back.
            verifier.report(.completedTwice, irp: irp)
            p.queuedStatus = nil
            p.state.store(IRPPacket.word(g, .completed), ordering: .sequentiallyConsistent)
        }
        counters.completed.add(1, ordering: .relaxed)
        copyBackBounceBuffer(p)
        observers?._withUnsafeGuaranteedRef { $0.completed(irp) }
        let (duringDispatch, _) = p.dispatchState.compareExchange(
            expected: IRPPacket.Dispatch.dispatching.rawValue, desired: IRPPacket.Dispatch.completedWhileDispatching.rawValue,
            ordering: .acquiringAndReleasing)
        if duringDispatch { return }  // `submit` delivers it when dispatch returns
        deliver(irp, asynchronously: true)
    }

    /// Hands a completed IRP to its requester, then frees it (a synchronous caller frees its own).
    private func deliver(_ irp: IRP, asynchronously: Bool) {
        // Read now: after the hand-back `self` may be gone (see below).
        let bugCheck = verifier.takeDueBugCheck()
        defer { bugCheck?() }
        let p = irp.packet
        p.completedAsynchronously = asynchronously
        guard let requester = p.requester else { return noteDelivery() }
        if requester === SynchronousRequester.shared {
            if asynchronously {
                // Told before the waiter wakes: once it has, the I/O manager may be gone.
                noteDelivery()
                // A caller that gave up at shutdown is gone: the IRP is ours to free.
                let g = UInt64(irp.generation) << 8
                let (woken, _) = p.syncWait.compareExchange(
                    expected: g | IRPPacket.SyncWait.waiting.rawValue, desired: g | IRPPacket.SyncWait.delivered.rawValue,
                    ordering: .acquiringAndReleasing)
                if woken { p.done.signal() } else { freeIrp(irp) }
            }
            return
        }
        if asynchronously {
            // On a thread of the driver's: the requester may drop the last reference
            // to the I/O manager as soon as it hears of the completion (a test that
            // ends), so hold one until the IRP is back in the pool.
            let keep = Unmanaged.passUnretained(self).retain()
            requester.irpCompleted(irp)
            freeIrp(irp)
            noteDelivery()
            keep.release()
        } else {
            requester.irpCompleted(irp)
            freeIrp(irp)
            noteDelivery()
        }
    }

    // MARK: - Borrowed host memory

    /// The IRP is about to outlive the host's call: copy what it borrowed into
    /// memory the I/O manager owns (from the stack's `StackMemory` when it has one)
    /// and point every buffer of the IRP there.
    func relocateBorrowedMemory(_ p: IRPPacket, into memory: (any StackMemory)? = nil) {
        guard p.borrowed, let old = p.borrowBase else { p.borrowed = false; return }
        p.borrowed = false
        let n = p.borrowedCount
        let shared = memory?.allocate(byteCount: max(n, 1), zeroed: false)
        let copy = shared ?? UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 16)
        copyBytes(from: old, to: copy, count: n)
        p.ownedCopy = copy
        p.ownedCopyMemory = shared == nil ? nil : memory
        func rebase(_ q: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
            guard let q, q >= old, q <= old + n else { return q }
            return copy + (q - old)
        }
        p.hostBuffer = rebase(p.hostBuffer)
        p.systemBuffer = rebase(p.systemBuffer)
        p.userBuffer = rebase(p.userBuffer)
        p.bounceCaller = rebase(p.bounceCaller)
        if let mdl = p.mdlAddress, let a = rebase(mdl.address) { p.mdlAddress = MDL(address: a, byteCount: mdl.byteCount) }
        for i in 0..<p.stackCount {
            if let t = p.locations[i].parameters.deviceIoControl.type3InputBuffer {
                p.locations[i].parameters.deviceIoControl.type3InputBuffer = rebase(t)
            }
        }
    }

    // MARK: - Outstanding IRPs

    /// IRPs sent by a host that have not been handed back yet.
    public var outstandingIrps: [IRP] {
        pool.all.compactMap { p in
            let w = p.state.load(ordering: .acquiring)
            let life = IRPPacket.Life(rawValue: UInt8(truncatingIfNeeded: w)) ?? .free
            let d = p.dispatchState.load(ordering: .acquiring)
            guard life != .free, life != .completed, d != IRPPacket.Dispatch.idle.rawValue, !p.abandoned else { return nil }
            return IRP(packet: p, generation: UInt32(truncatingIfNeeded: w >> 8))
        }
    }

    /// At shutdown: cancels every outstanding IRP, waits up to `grace` seconds for
    /// the drivers to complete them, and reports each one that is still not
    /// completed (Windows would wait 5 minutes for a cancelled IRP, then bug check).
    /// Returns the IRPs left with the drivers.
    @discardableResult
    public func cancelOutstanding(grace: Double) -> [IRP] {
        for irp in outstandingIrps { irp.cancelIrp(reportingStale: false) }
        // Woken by each completion that is handed back, until none is left or the grace is over.
        _ = waitForDeliveries(until: .now() + grace) { !outstandingIrps.isEmpty }
        let left = outstandingIrps
        for irp in left {
            verifier.report(.neverCompleted, irp: irp, device: irp.packet.targetDevice, detail: "still not completed \(grace) s after IoCancelIrp at shutdown")
        }
        return left
    }
}

extension IOManager {
    /// Told at the end of every hand-back (and refusal): wakes `waitForDeliveries`.
    @inline(__always) func noteDelivery() {
        if deliveryWaiters.load(ordering: .relaxed) > 0 { delivered.signal() }
    }

    /// Waits while `condition` holds, woken by each IRP handed back to its requester
    /// (no polling), until `deadline`. Returns true once the condition is false.
    public func waitForDeliveries(until deadline: DispatchTime, while condition: () -> Bool) -> Bool {
        deliveryWaiters.add(1, ordering: .sequentiallyConsistent)
        defer { deliveryWaiters.subtract(1, ordering: .relaxed) }
        while condition() {
            if delivered.wait(timeout: deadline) == .timedOut { return !condition() }
        }
        return true
    }
}

/// The requester of `callSynchronously`: the waiting thread reads the result.
final class SynchronousRequester: IRPRequester {
    static let shared = SynchronousRequester()
    func irpCompleted(_ irp: IRP) {}
}

extension IRPPacket {
    /// Clears the cancel routine at completion; true if one was still set.
    func setCancelRoutineCleared() -> Bool {
        guard cancelRoutineSet.load(ordering: .acquiring) else { return false }
        return cancelState.withLock { s in
            defer { s.routine = nil; cancelRoutineSet.store(false, ordering: .relaxed) }
            return s.routine != nil
        }
    }
}

/// Free IRPs by stack size: one list per size, linked through the packets
/// themselves (no array work per IRP). Packets are owned by `every` and never
/// released while the I/O manager serves, which keeps a late cancel or
/// completion (an IRP a driver kept) pointing at valid memory that the
/// generation check then refuses. Every stack size is pooled: the table of
/// lists starts with room for `initialSizes` and grows (under the lock, once
/// per new depth) when a deeper stack frees its first packet, so the number of
/// packets is bounded by how many are in flight at once, whatever the depth.
final class IRPPool: @unchecked Sendable {
    static let initialSizes = 17
    /// The list heads, indexed by stack size (`capacity` of them).
    struct Table {
        var heads: UnsafeMutablePointer<Unmanaged<IRPPacket>?>
        var capacity: Int

        init(capacity: Int) {
            heads = .allocate(capacity: capacity)
            heads.initialize(repeating: nil, count: capacity)
            self.capacity = capacity
        }

        /// Room for a list of packets with `stackSize` locations.
        mutating func grow(toFit stackSize: Int) {
            let n = max(stackSize + 1, capacity * 2)
            let bigger = UnsafeMutablePointer<Unmanaged<IRPPacket>?>.allocate(capacity: n)
            bigger.moveInitialize(from: heads, count: capacity)
            (bigger + capacity).initialize(repeating: nil, count: n - capacity)
            heads.deallocate()
            heads = bigger
            capacity = n
        }
    }
    // Handoff mutexes: a packet goes to the pool on one thread and out of it on
    // another, and TSan must see that the second comes after the first.
    private let free = HandoffMutex(Table(capacity: IRPPool.initialSizes))
    private let every = HandoffMutex<[IRPPacket]>([])

    deinit { free.withLock { $0.heads.deallocate() } }

    @inline(__always)
    func take(stackSize: Int) -> IRPPacket? {
        let p: Unmanaged<IRPPacket>? = free.withLock { t in
            guard stackSize < t.capacity, let h = t.heads[stackSize] else { return nil }
            t.heads[stackSize] = h._withUnsafeGuaranteedRef { $0.nextFree }
            return h
        }
        return p?.takeUnretainedValue()
    }

    func make(stackSize: Int, ioManager: IOManager) -> IRPPacket {
        let p = IRPPacket(stackCount: stackSize, ioManager: ioManager)
        every.withLock { $0.append(p) }
        return p
    }

    @inline(__always)
    func put(_ p: IRPPacket) {
        let u = Unmanaged.passUnretained(p)
        let size = p.stackCount
        free.withLock { t in
            if size >= t.capacity { t.grow(toFit: size) }
            p.nextFree = t.heads[size]
            t.heads[size] = u
        }
    }

    var all: [IRPPacket] { every.withLock { $0 } }

    /// Forgets the free packets (at unload); packets still with drivers stay known.
    func drain() {
        var free = Set<ObjectIdentifier>()
        self.free.withLock { t in
            for i in 0..<t.capacity {
                var h = t.heads[i]
                while let u = h {
                    free.insert(ObjectIdentifier(u.takeUnretainedValue()))
                    h = u.takeUnretainedValue().nextFree
                }
                t.heads[i] = nil
            }
        }
        every.withLock { $0.removeAll { free.contains(ObjectIdentifier($0)) } }
    }
}

/// The byte checked mode fills finished buffers with.
public enum Poison {
    public static let byte: UInt8 = 0xDB
}

extension DispatchTimeoutResult {
    var isSuccess: Bool { self == .success }
}
