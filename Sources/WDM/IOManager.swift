// IOManager: the kernel's I/O manager. Loads drivers, creates and stacks
// devices, owns the IRP pool, and implements IoCallDriver and IoCompleteRequest.

import Synchronization

/// The I/O manager.
public final class IOManager: @unchecked Sendable {
    /// Driver Verifier's I/O checks.
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

    let counters = IOCounters()
    private let pool = IRPPool()
    private let links = Mutex<[(name: String, device: DeviceObject)]>([])
    private let drivers = Mutex<[DriverObject]>([])
    private let rootNodes = Mutex<[DeviceNode]>([])
    private let deviceCount = Atomic<Int>(0)
    private(set) lazy var rootBus: DriverObject = makeRootBus()

    public init(bounceBuffers: Bool = false) {
        self.bounceBuffers = bounceBuffers
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
        let status = entry(driver)
        guard status.isSuccess else { throw status }
        drivers.withLock { $0.append(driver) }
        log?("loaded \(driver.name)")
        return driver
    }

    /// Every loaded driver, in load order.
    public var loadedDrivers: [DriverObject] { drivers.withLock { $0 } }

    /// Tears down every stack (top first, each device detached and deleted),
    /// then calls each driver's Unload in reverse load order.
    public func unloadAll() {
        let nodes = rootNodes.withLock { n in defer { n.removeAll() }; return n }
        for node in nodes.reversed() {
            var top: DeviceObject? = node.pdo.topOfStack
            while let d = top {
                top = d.lowerDevice
                if let lower = d.lowerDevice { detachDevice(lower) }
                deleteDevice(d)
            }
        }
        let all = drivers.withLock { d in defer { d.removeAll() }; return d }
        for driver in all.reversed() {
            driver.unload?(driver)
            if !driver.deviceObjects.isEmpty {
                verifier.report(.unloadWithDevices, device: driver.deviceObjects.first)
            }
            log?("unloaded \(driver.name)")
        }
        links.withLock { $0.removeAll() }
    }

    // MARK: - Devices

    /// `IoCreateDevice`. The device starts with DO_DEVICE_INITIALIZING set.
    public func createDevice(
        driver: DriverObject, deviceType: UInt32, characteristics: UInt32 = 0,
        flags: DeviceFlags = [], name: String? = nil, extension ext: AnyObject? = nil
    ) -> DeviceObject {
        let d = DeviceObject(
            driver: driver, deviceType: deviceType, characteristics: characteristics,
            flags: flags.union(.deviceInitializing), name: name)
        d.deviceExtension = ext
        driver.devices.withLock { $0.append(d) }
        deviceCount.add(1, ordering: .relaxed)
        return d
    }

    /// `IoAttachDeviceToDeviceStack`: attaches `source` above the top of `target`'s
    /// stack and returns the device it attached to. The new device's stack size is
    /// one more than the one below, and it mirrors the buffering flags below it.
    @discardableResult
    public func attachDeviceToDeviceStack(_ source: DeviceObject, to target: DeviceObject) -> DeviceObject {
        let lower = target.topOfStack
        lower.attachedDevice = source
        source.lowerDevice = lower
        source.stackSize = lower.stackSize + 1
        source.deviceNode = lower.deviceNode
        source.flags.subtract([.bufferedIO, .directIO])
        source.flags.formUnion(lower.flags.intersection([.bufferedIO, .directIO]))
        return lower
    }

    /// `IoDetachDevice`: detaches whatever is attached above `target`.
    public func detachDevice(_ target: DeviceObject) {
        if let up = target.attachedDevice { up.lowerDevice = nil }
        target.attachedDevice = nil
    }

    /// `IoDeleteDevice`.
    public func deleteDevice(_ device: DeviceObject) {
        device.deleted = true
        if let up = device.attachedDevice, up.lowerDevice === device { up.lowerDevice = nil }
        device.attachedDevice = nil
        device.lowerDevice = nil
        device.driverObject.devices.withLock { $0.removeAll { $0 === device } }
        links.withLock { $0.removeAll { $0.device === device } }
    }

    /// `IoCreateSymbolicLink`: the name is the file name under the mount.
    public func createSymbolicLink(_ name: String, device: DeviceObject) throws(NTStatus) {
        try links.withLock { (l) throws(NTStatus) in
            guard !l.contains(where: { $0.name == name }) else { throw NTStatus.invalidParameter }
            l.append((name, device))
        }
    }

    /// `IoDeleteSymbolicLink`.
    public func deleteSymbolicLink(_ name: String) {
        links.withLock { $0.removeAll { $0.name == name } }
    }

    /// The symbolic link names, in creation order.
    public var symbolicLinks: [String] { links.withLock { $0.map(\.name) } }

    /// The device a symbolic link names.
    public func device(forLink name: String) -> DeviceObject? {
        links.withLock { l in l.first { $0.name == name }?.device }
    }

    /// Creates a root-enumerated device node and builds its stack: the root bus's
    /// PDO, the lower filters, the function driver and the upper filters, each
    /// through its AddDevice. Returns the PDO.
    @discardableResult
    public func addRootDevice(
        instanceName: String, hardwareIDs: [String] = [], parameters: [String: String] = [:],
        functionDriver: DriverObject, lowerFilters: [DriverObject] = [], upperFilters: [DriverObject] = []
    ) throws(NTStatus) -> DeviceObject {
        let n = deviceCount.load(ordering: .relaxed) + 1
        let pdo = createDevice(
            driver: rootBus, deviceType: DeviceType.unknown,
            name: "\\Device\\" + String(n, radix: 16, uppercase: true).leftPadded(to: 8))
        let node = DeviceNode(instanceName: instanceName, hardwareIDs: hardwareIDs, parameters: parameters, pdo: pdo)
        pdo.deviceNode = node
        pdo.flags.remove(.deviceInitializing)
        for driver in lowerFilters + [functionDriver] + upperFilters {
            guard let add = driver.addDevice else { throw NTStatus.invalidDeviceRequest }
            let status = add(driver, pdo)
            guard status.isSuccess else { throw status }
            let top = pdo.topOfStack
            if top.flags.contains(.deviceInitializing) {
                verifier.report(.deviceInitializingLeftSet, device: top)
                top.flags.remove(.deviceInitializing)
            }
        }
        rootNodes.withLock { $0.append(node) }
        return pdo
    }

    private func makeRootBus() -> DriverObject {
        let bus = DriverObject(name: "\\Driver\\PnpManager", ioManager: self)
        // A PDO of the root bus has no hardware behind it: an IRP that reaches it
        // completes with the status it carries for PnP, and as invalid otherwise.
        bus.majorFunction.setAll { _, irp in
            let status: NTStatus = irp.majorFunction == .pnp ? irp.ioStatus.status : .invalidDeviceRequest
            irp.complete(status)
            return status
        }
        return bus
    }

    // MARK: - IRPs

    /// `IoAllocateIrp`: an IRP from the pool, with `stackSize` locations.
    public func allocateIrp(stackSize: Int) -> IRP {
        let irp = pool.take(stackSize: stackSize) ?? IRP(stackCount: stackSize, ioManager: self)
        irp.life.store(IRP.Life.inFlight.rawValue, ordering: .releasing)
        return irp
    }

    /// `IoFreeIrp`: returns a completed (or never sent) IRP to the pool.
    public func freeIrp(_ irp: IRP) {
        let d = irp.dispatchState.load(ordering: .acquiring)
        if irp.life.load(ordering: .acquiring) == IRP.Life.inFlight.rawValue, d != IRP.Dispatch.idle.rawValue {
            verifier.report(.freedInFlight, irp: irp)
            return
        }
        releaseBounceBuffer(irp)
        irp.reset()
        irp.life.store(IRP.Life.free.rawValue, ordering: .releasing)
        pool.put(irp)
    }

    /// `IoCallDriver`: moves to the next stack location and calls `device`'s dispatch routine.
    @inline(__always)
    public func callDriver(_ device: DeviceObject, _ irp: IRP) -> NTStatus {
        guard irp.currentLocation > 1 else {
            verifier.report(.noStackLocationsLeft, irp: irp, device: device)
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        irp.currentLocation -= 1
        let i = irp.currentLocation - 1
        irp.locations[i].deviceObject = device
        guard let routine = device.driverObject.majorFunction.routine(irp.locations[i].majorFunction) else {
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        return routine(device, irp)
    }

    /// Sends a new IRP to the top of a stack and arranges for its requester to be
    /// called once. Returns STATUS_PENDING if and only if the requester will be
    /// called later, from the thread that completes the IRP; otherwise the requester
    /// has already been called when this returns, and the result is the final status.
    public func submit(_ irp: IRP, to device: DeviceObject) -> NTStatus {
        counters.submitted.add(1, ordering: .relaxed)
        irp.dispatchState.store(IRP.Dispatch.dispatching.rawValue, ordering: .releasing)
        let status = callDriver(device, irp)
        // The requester hears of the pending state while delivery is still held back:
        // a completion racing with this only marks the IRP, and the delivery happens below.
        if status == .pending { irp.requester?.irpPending(irp) }
        let (exchanged, _) = irp.dispatchState.compareExchange(
            expected: IRP.Dispatch.dispatching.rawValue, desired: IRP.Dispatch.returnedPending.rawValue,
            ordering: .acquiringAndReleasing)
        if exchanged {
            // Not completed yet: it must have been marked pending.
            counters.pended.add(1, ordering: .relaxed)
            if status != .pending { verifier.report(.returnedWithoutCompleting, device: device) }
            return .pending
        }
        // Completed during dispatch: the requester is told here, on this thread.
        let final = irp.ioStatus.status
        if status == .pending {
            if !irp.pendingReturned { verifier.report(.pendingWithoutMark, device: device) }
        } else {
            if irp.pendingReturned { verifier.report(.markedPendingReturnedOther, device: device) }
            if status != final { verifier.report(.statusMismatch, device: device) }
        }
        deliver(irp, asynchronously: false)
        return final
    }

    /// `submit` to the device the IRP was made for (`makeIrp`).
    @inline(__always)
    public func submit(_ irp: IRP) -> NTStatus { submit(irp, to: irp.targetDevice!) }

    /// `callSynchronously` to the device the IRP was made for (`makeIrp`).
    @inline(__always)
    public func callSynchronously(_ irp: IRP) -> NTStatus { callSynchronously(irp, to: irp.targetDevice!) }

    /// Submits and waits: the IRP is completed when this returns; the caller frees it.
    public func callSynchronously(_ irp: IRP, to device: DeviceObject) -> NTStatus {
        irp.requester = SynchronousRequester.shared
        if submit(irp, to: device) == .pending { irp.waitUntilDone() }
        return irp.ioStatus.status
    }

    /// `IoCompleteRequest`.
    func completeRequest(_ irp: IRP, setting newStatus: IOStatusBlock?) {
        var spins = 0
        while true {
            let (ok, seen) = irp.life.compareExchange(
                expected: IRP.Life.inFlight.rawValue, desired: IRP.Life.completed.rawValue + 1,
                ordering: .acquiringAndReleasing)
            if ok { break }
            // completed + 1 marks a walk under way: a completion routine that returned
            // STATUS_MORE_PROCESSING_REQUIRED may hand the IRP to a thread that completes
            // it again before the walk has given ownership back.
            if seen == IRP.Life.completed.rawValue + 1, spins < 1_000_000 {
                spins += 1
                continue
            }
            verifier.report(.completedTwice, irp: irp)
            return
        }
        if let newStatus { irp.ioStatus = newStatus }
        if irp.ioStatus.status == .pending { verifier.report(.completedWithPendingStatus, irp: irp) }
        if irp.setCancelRoutine(nil) != nil { verifier.report(.completedWithCancelRoutine, irp: irp) }
        if irp.ioStatus.status == .cancelled { counters.cancelled.add(1, ordering: .relaxed) }

        while irp.currentLocation <= irp.stackCount {
            let i = irp.currentLocation - 1
            let control = irp.locations[i].control
            let routine = irp.locations[i].completionRoutine
            let context = irp.locations[i].context
            irp.locations[i].completionRoutine = nil
            irp.locations[i].context = nil
            irp.locations[i].control = []
            irp.currentLocation += 1
            irp.pendingReturned = control.contains(.pendingReturned)
            let status = irp.ioStatus.status
            if let routine,
               (status.isSuccess && control.contains(.invokeOnSuccess))
                || (!status.isSuccess && control.contains(.invokeOnError))
                || (irp.cancel && control.contains(.invokeOnCancel))
            {
                let above = irp.currentLocation <= irp.stackCount ? irp.locations[irp.currentLocation - 1].deviceObject : nil
                if routine(above, irp, context) == .moreProcessingRequired {
                    irp.life.store(IRP.Life.inFlight.rawValue, ordering: .releasing)
                    return
                }
            } else if irp.pendingReturned, irp.currentLocation <= irp.stackCount {
                irp.locations[irp.currentLocation - 1].control.insert(.pendingReturned)
            }
        }
        counters.completed.add(1, ordering: .relaxed)
        copyBackBounceBuffer(irp)
        irp.life.store(IRP.Life.completed.rawValue, ordering: .releasing)
        let (duringDispatch, _) = irp.dispatchState.compareExchange(
            expected: IRP.Dispatch.dispatching.rawValue, desired: IRP.Dispatch.completedWhileDispatching.rawValue,
            ordering: .acquiringAndReleasing)
        if duringDispatch { return }  // `submit` delivers it when dispatch returns
        deliver(irp, asynchronously: true)
    }

    private func deliver(_ irp: IRP, asynchronously: Bool) {
        irp.completedAsynchronously = asynchronously
        if let requester = irp.requester {
            requester.irpCompleted(irp)
        }
    }
}

/// The requester of `callSynchronously`: wakes the waiting thread.
final class SynchronousRequester: IRPRequester {
    static let shared = SynchronousRequester()
    func irpCompleted(_ irp: IRP) {
        if irp.completedAsynchronously { irp.signalDone() }
    }
}

/// Free IRPs by stack size. IRPs are never released while the I/O manager lives,
/// which keeps a late cancel (`IRP.cancel(ifGeneration:)`) pointing at valid memory.
final class IRPPool: Sendable {
    private let lists = Mutex<[[IRP]]>(Array(repeating: [], count: 17))

    func take(stackSize: Int) -> IRP? {
        guard stackSize < 17 else { return nil }
        return lists.withLock { $0[stackSize].popLast() }
    }

    func put(_ irp: IRP) {
        guard irp.stackCount < 17 else { return }
        lists.withLock { $0[irp.stackCount].append(irp) }
    }
}
