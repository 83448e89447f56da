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
    /// Told the name of every symbolic link created or deleted (the bridge updates
    /// the mount). Set before the tree changes at run time.
    public nonisolated(unsafe) var namespaceObserver: (@Sendable (String) -> Void)?
    /// Polled by synchronous waits: when it says true (the host is shutting down),
    /// a wait cancels its IRP and gives up after `shutdownGrace` seconds.
    public nonisolated(unsafe) var isShuttingDown: (@Sendable () -> Bool)?
    /// How long a cancelled IRP may take to complete before the I/O manager stops
    /// waiting for it (at shutdown, after a host's cancel). Windows waits 5 minutes.
    public nonisolated(unsafe) var shutdownGrace: Double = 1.0

    /// The observers at IoCallDriver and IoCompleteRequest, in call order. Nil when
    /// there are none: the IRP path then pays one load and one branch per choke point.
    @exclusivity(unchecked) @usableFromInline nonisolated(unsafe) var observers: Unmanaged<ObserverChain>?
    /// Owns the chain `observers` points to.
    nonisolated(unsafe) var observerChain: ObserverChain? {
        didSet { observers = observerChain.map(Unmanaged.passUnretained) }
    }

    /// Matches child PDOs to function drivers (see `DriverMatcher`). Set before buses enumerate.
    public nonisolated(unsafe) var driverMatcher: DriverMatcher?
    /// The PnP manager's own thread: enumeration and removal run here, in order.
    let pnpQueue = DispatchQueue(label: "wdmfs.pnp")

    /// Deleted devices, kept until no IRP is in flight: a request that was already
    /// inside a stack when its devices were detached and deleted still walks
    /// through live objects (the links it follows are not counted).
    let graveyard = Mutex<[DeviceObject]>([])
    /// Registered device interfaces.
    let interfaces = Mutex<[DeviceInterface]>([])
    /// Some stack is not in D0 (so `send` looks at the one it sends to).
    let anyAsleep = Atomic<Bool>(false)
    let systemPower = Mutex(SystemPowerState.working)
    /// Told "node Sx Dy" as each stack moves between power states (filters' logs, tests).
    public nonisolated(unsafe) var powerLog: (@Sendable (String) -> Void)?

    let counters = IOCounters()
    let pool = IRPPool()
    private let links = Mutex<[(name: String, device: DeviceObject)]>([])
    private let drivers = Mutex<[DriverObject]>([])
    private let rootNodes = Mutex<[DeviceNode]>([])
    private let deviceCount = Atomic<Int>(0)
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
        if verifierRules { addObserver(VerifierRules(verifier)) }
        verifier.driverNames = { [unowned self] id in
            self.loadedDrivers.first { ObjectIdentifier($0) == id }?.name
        }
    }

    /// Adds an observer at the end of the chain. Call before I/O starts. The I/O
    /// manager keeps it alive.
    public func addObserver(_ observer: any IRPObserver) {
        observerChain = ObserverChain((observerChain?.list ?? []) + [observer])
    }

    /// Removes every observer of type `T`. Call while no I/O runs.
    public func removeObservers<T: IRPObserver>(of type: T.Type) {
        let rest = (observerChain?.list ?? []).filter { !($0 is T) }
        observerChain = rest.isEmpty ? nil : ObserverChain(rest)
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

    /// Tears down every device node (IRP_MN_REMOVE_DEVICE down each stack, last
    /// added first: each driver detaches and deletes its device, then the PDO is
    /// deleted), then calls each driver's Unload in reverse load order.
    public func unloadAll() {
        let nodes = rootNodes.withLock { n in defer { n.removeAll() }; return n }
        for node in nodes.reversed() { remove(node, orderly: false) }
        let all = drivers.withLock { d in defer { d.removeAll() }; return d }
        for driver in all.reversed() {
            driver.unload?(driver)
            if !driver.deviceObjects.isEmpty {
                verifier.report(.unloadWithDevices, device: driver.deviceObjects.first)
            }
            log?("unloaded \(driver.name)")
            driver.release()
        }
        links.withLock { $0.removeAll() }
        rootBusObject?.release()
        readinessObserver = nil
        pool.drain()
        graveyard.withLock { $0.removeAll() }
    }

    deinit {
        // A tree dropped without an unmount (tests, embedded hosts): break the links
        // that hold stacks together so everything it built is freed. No Unload runs.
        let nodes = rootNodes.withLock { n in defer { n.removeAll() }; return n }
        for node in nodes {
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
    /// one more than the one below; nothing else is copied (as on Windows: a filter
    /// copies the buffering flags, DeviceType and Characteristics itself).
    @discardableResult
    public func attachDeviceToDeviceStack(_ source: DeviceObject, to target: DeviceObject) -> DeviceObject {
        let lower = target.topOfStack
        lower.attachedDevice = source
        source.lowerDevice = lower
        source.stackSize = lower.stackSize + 1
        source.deviceNode = lower.deviceNode
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
        forgetInterfaces(of: device)
        if let up = device.attachedDevice, up.lowerDevice === device { up.lowerDevice = nil }
        device.attachedDevice = nil
        device.lowerDevice = nil
        graveyard.withLock { $0.append(device) }
        device.driverObject.devices.withLock { $0.removeAll { $0 === device } }
        let gone = links.withLock { l -> [String] in
            let names = l.filter { $0.device === device }.map(\.name)
            l.removeAll { $0.device === device }
            return names
        }
        for name in gone { namespaceObserver?(name) }
    }

    /// `IoCreateSymbolicLink`: the name is the file name under the mount.
    public func createSymbolicLink(_ name: String, device: DeviceObject) throws(NTStatus) {
        try links.withLock { (l) throws(NTStatus) in
            guard !l.contains(where: { $0.name == name }) else { throw NTStatus.invalidParameter }
            l.append((name, device))
        }
        namespaceObserver?(name)
    }

    /// `IoDeleteSymbolicLink`.
    public func deleteSymbolicLink(_ name: String) {
        let removed = links.withLock { l in
            let before = l.count
            l.removeAll { $0.name == name }
            return before != l.count
        }
        if removed { namespaceObserver?(name) }
    }

    /// The symbolic link names, in creation order.
    public var symbolicLinks: [String] { links.withLock { $0.map(\.name) } }

    /// Whether a symbolic link names a device that is there for users: its node is
    /// started (a device's files appear when it starts and go when it is removed or
    /// surprise-removed, as a device interface is enabled at START and disabled then).
    public func isPresent(_ link: String) -> Bool {
        guard let d = device(forLink: link), !d.deleted else { return false }
        guard let node = d.deviceNode else { return true }
        return node.state == .started
    }

    /// Tells the namespace observer about every link of the stack `pdo` is at the bottom of.
    func announceLinks(of pdo: DeviceObject) {
        guard let observer = namespaceObserver else { return }
        var stack: [ObjectIdentifier] = []
        var d: DeviceObject? = pdo
        while let x = d { stack.append(ObjectIdentifier(x)); d = x.attachedDevice }
        let names = links.withLock { $0.filter { stack.contains(ObjectIdentifier($0.device)) }.map(\.name) }
        for n in names { observer(n) }
    }

    /// The device a symbolic link names.
    public func device(forLink name: String) -> DeviceObject? {
        links.withLock { l in l.first { $0.name == name }?.device }
    }

    /// Creates a root-enumerated device node and brings it up as the PnP manager
    /// does: IRP_MN_QUERY_ID (device, instance, hardware and compatible IDs) and
    /// IRP_MN_QUERY_CAPABILITIES to the PDO; AddDevice of the lower filters, the
    /// function driver and the upper filters; IRP_MN_START_DEVICE down the whole
    /// stack; then QUERY_CAPABILITIES, QUERY_PNP_DEVICE_STATE and
    /// QUERY_DEVICE_RELATIONS (BusRelations). A START that fails leaves the node
    /// with CM_PROB_FAILED_START and its stack removed. Returns the PDO.
    @discardableResult
    public func addRootDevice(
        instanceName: String, hardwareIDs: [String] = [], compatibleIDs: [String] = [], parameters: [String: String] = [:],
        functionDriver: DriverObject, lowerFilters: [DriverObject] = [], upperFilters: [DriverObject] = []
    ) throws(NTStatus) -> DeviceObject {
        let n = deviceCount.load(ordering: .relaxed) + 1
        let pdo = createDevice(
            driver: rootBus, deviceType: DeviceType.unknown,
            name: "\\Device\\" + String(n, radix: 16, uppercase: true).leftPadded(to: 8))
        let node = DeviceNode(instanceName: instanceName, hardwareIDs: hardwareIDs, compatibleIDs: compatibleIDs, parameters: parameters, pdo: pdo)
        pdo.deviceNode = node
        pdo.flags.remove(.deviceInitializing)
        rootNodes.withLock { $0.append(node) }
        for type in [BusQueryIdType.deviceID, .instanceID, .hardwareIDs, .compatibleIDs] {
            _ = sendPnP(.queryId, to: pdo) { $0.idType = type }
        }
        node.capabilities = sendPnP(.queryCapabilities, to: pdo).1.capabilities
        node.drivers = (lowerFilters, functionDriver, upperFilters)
        try bringUp(node)
        return pdo
    }

    /// AddDevice of the lower filters, the function driver and the upper filters,
    /// then START_DEVICE and the queries that follow it. A START that fails leaves
    /// CM_PROB_FAILED_START and the stack removed.
    func bringUp(_ node: DeviceNode) throws(NTStatus) {
        guard let pdo = node.pdo, let (lowerFilters, functionDriver, upperFilters) = node.drivers else { return }
        let filters = Set((lowerFilters + upperFilters).map(ObjectIdentifier.init))
        for driver in lowerFilters + [functionDriver] + upperFilters {
            guard let add = driver.addDevice else { throw NTStatus.invalidDeviceRequest }
            let below = pdo.topOfStack
            let status = add(driver, pdo)
            guard status.isSuccess else {
                node.problem = .failedAdd
                throw status
            }
            let top = pdo.topOfStack
            if top.flags.contains(.deviceInitializing) {
                verifier.report(.deviceInitializingLeftSet, device: top)
                top.flags.remove(.deviceInitializing)
            }
            if top !== below, driver !== functionDriver || filters.contains(ObjectIdentifier(driver)) {
                checkFilterCopied(top, from: below)
            }
        }
        node.state = .driversAdded
        node.problem = nil
        let (started, _) = sendPnP(.startDevice, to: pdo.topOfStack)
        guard started.isSuccess else {
            log?("\(node.instanceName): IRP_MN_START_DEVICE failed with \(started)")
            node.problem = .failedStart
            // Windows removes a device whose START failed.
            _ = sendPnP(.removeDevice, to: pdo.topOfStack)
            node.state = .removed
            return
        }
        node.state = .started
        announceLinks(of: pdo)
        _ = sendPnP(.queryCapabilities, to: pdo.topOfStack)
        _ = sendPnP(.queryPnpDeviceState, to: pdo.topOfStack)
        _ = sendPnP(.queryDeviceRelations, to: pdo.topOfStack) { $0.relationType = .busRelations }
    }

    /// devcon disable: an orderly removal of the stack (a driver may veto it) that
    /// keeps the node and its PDO, with CM_PROB_DISABLED.
    @discardableResult
    public func disable(_ node: DeviceNode) -> (status: NTStatus, vetoedBy: DeviceObject?) {
        guard node.state == .started, let pdo = node.pdo else { return (.invalidDeviceRequest, nil) }
        let veto = queryOrCancel(.queryRemoveDevice, .cancelRemoveDevice, pdo)
        if !veto.status.isSuccess { return veto }
        for child in node.children.reversed() where child.state != .removed { finishRemoval(child) }
        node.children.removeAll()
        markGone(pdo)
        _ = sendPnP(.removeDevice, to: pdo.topOfStack)
        pdo.gone.store(false, ordering: .releasing)  // the PDO stays, for enable
        node.state = .disabled
        node.problem = .disabled
        announceLinks(of: pdo)
        purgeGraveyard()
        return (.success, nil)
    }

    /// Frees the deleted devices once no IRP is in flight anywhere.
    func purgeGraveyard() {
        guard outstandingIrps.isEmpty else { return }
        let dead = graveyard.withLock { g in defer { g.removeAll() }; return g }
        _ = dead  // released here, outside the lock
    }

    /// Sets `gone` on every device of the stack `pdo` is at the bottom of: the I/O
    /// manager sends no new request into it (STATUS_DELETE_PENDING, ENODEV).
    func markGone(_ pdo: DeviceObject) {
        var d: DeviceObject? = pdo
        while let device = d {
            device.gone.store(true, ordering: .releasing)
            d = device.attachedDevice
        }
    }

    /// devcon enable: a disabled node's stack is built and started again.
    @discardableResult
    public func enable(_ node: DeviceNode) -> NTStatus {
        guard node.state == .disabled else { return .invalidDeviceRequest }
        do throws(NTStatus) { try bringUp(node) } catch { return error }
        return node.state == .started ? .success : .unsuccessful
    }

    /// devcon restart: QUERY_STOP (a driver may veto: CANCEL_STOP), STOP, then
    /// START again; a START that fails after the stop ends in SURPRISE_REMOVAL and
    /// REMOVE_DEVICE, with CM_PROB_FAILED_START.
    @discardableResult
    public func restart(_ node: DeviceNode) -> (status: NTStatus, vetoedBy: DeviceObject?) {
        guard node.state == .started, let pdo = node.pdo else { return (.invalidDeviceRequest, nil) }
        let veto = queryOrCancel(.queryStopDevice, .cancelStopDevice, pdo)
        if !veto.status.isSuccess { return veto }
        _ = sendPnP(.stopDevice, to: pdo.topOfStack)
        node.state = .stopped
        let (started, _) = sendPnP(.startDevice, to: pdo.topOfStack)
        guard started.isSuccess else {
            node.problem = .failedStart
            _ = sendPnP(.surpriseRemoval, to: pdo.topOfStack)
            _ = sendPnP(.removeDevice, to: pdo.topOfStack)
            node.state = .removed
            announceLinks(of: pdo)
            return (started, nil)
        }
        node.state = .started
        return (.success, nil)
    }

    /// The device nodes the root bus reported, in the order they were added.
    public var deviceNodes: [DeviceNode] { rootNodes.withLock { $0 } }

    /// Removes a device node. Orderly (`orderly: true`): IRP_MN_QUERY_REMOVE_DEVICE
    /// first; a driver may veto it, and then IRP_MN_CANCEL_REMOVE_DEVICE follows and
    /// the veto comes back with the device whose driver said no. Then
    /// IRP_MN_REMOVE_DEVICE: each driver detaches and deletes its device, and the
    /// PDO is deleted (the bus no longer reports it).
    @discardableResult
    public func remove(_ node: DeviceNode, orderly: Bool = true) -> (status: NTStatus, vetoedBy: DeviceObject?) {
        guard let pdo = node.pdo else { return (.noSuchDevice, nil) }
        // Children first: a bus's children are removed before the bus.
        for child in node.children.reversed() where child.state != .removed { finishRemoval(child) }
        if orderly, node.state == .started {
            let veto = queryOrCancel(.queryRemoveDevice, .cancelRemoveDevice, pdo)
            if !veto.status.isSuccess { return veto }
            node.state = .queryRemove
        }
        if pdo.attachedDevice != nil || node.state != .removed {
            markGone(pdo)  // no new I/O enters a stack that is being removed
            _ = sendPnP(.removeDevice, to: pdo.topOfStack)
        }
        node.state = .removed
        if let parent = node.parent {
            // The bus keeps its PDO (the hardware is still there): a rescan brings it back.
            parent.children.removeAll { $0 === node }
            pdo.deviceNode = nil
        } else {
            detachAndDelete(pdo)
        }
        rootNodes.withLock { $0.removeAll { $0 === node } }
        purgeGraveyard()
        return (.success, nil)
    }

    /// IoDetachDevice(lower) and IoDeleteDevice(device): what a driver does at
    /// the end of IRP_MN_REMOVE_DEVICE.
    public func detachAndDelete(_ device: DeviceObject) {
        if let lower = device.lowerDevice { detachDevice(lower) }
        deleteDevice(device)
    }

    /// Sends a PnP IRP to `device` (the top of a stack, or a PDO during enumeration)
    /// and waits for it. It starts with STATUS_NOT_SUPPORTED, as every PnP IRP does.
    func sendPnP(_ minor: PnPMinor, to device: DeviceObject, _ configure: (PnPRequest) -> Void = { _ in }) -> (NTStatus, PnPRequest) {
        let request = PnPRequest()
        configure(request)
        let status = sendSystemIrp(.pnp, minor.rawValue, to: device) { $0.pnp = request }
        return (status, request)
    }

    /// An IRP the PnP or power manager builds (no file object), sent to `device` and
    /// waited for; it starts with STATUS_NOT_SUPPORTED.
    func sendSystemIrp(_ major: MajorFunction, _ minor: UInt8, to device: DeviceObject, _ attach: (IRPPacket) -> Void) -> NTStatus {
        let irp = allocateIrp(stackSize: device.stackSize)
        let p = irp.packet
        p.targetDevice = device
        attach(p)
        p.ioStatus = IOStatusBlock(status: .notSupported)
        p.locations[p.currentLocation - 2].majorFunction = major
        p.locations[p.currentLocation - 2].minorFunction = minor
        let (status, completed) = callSynchronously(irp)
        if completed { freeIrp(irp) }
        return status
    }

    /// A query a driver may veto (QUERY_REMOVE, QUERY_STOP): on a veto the cancel
    /// minor follows, and the device whose driver said no comes back.
    func queryOrCancel(_ query: PnPMinor, _ cancel: PnPMinor, _ pdo: DeviceObject) -> (status: NTStatus, vetoedBy: DeviceObject?) {
        let (status, request) = sendPnP(query, to: pdo.topOfStack)
        if status.isSuccess { return (status, nil) }
        _ = sendPnP(cancel, to: pdo.topOfStack)
        return (status, request.completedBy)
    }

    /// Every device node, parents before children, depth first.
    public var allDeviceNodes: [DeviceNode] {
        var out: [DeviceNode] = []
        func walk(_ n: DeviceNode) {
            out.append(n)
            n.children.forEach(walk)
        }
        deviceNodes.forEach(walk)
        return out
    }

    private func checkFilterCopied(_ filter: DeviceObject, from lower: DeviceObject) {
        let copied: DeviceFlags = [.bufferedIO, .directIO, .powerPagable]
        if filter.flags.intersection(copied) != lower.flags.intersection(copied) {
            verifier.report(.filterFlagsNotCopied, device: filter, detail: "Flags \(filter.flags.intersection(copied)) below: \(lower.flags.intersection(copied))")
        }
        if filter.deviceType != lower.deviceType {
            verifier.report(.filterFlagsNotCopied, device: filter, detail: "DeviceType 0x\(String(filter.deviceType, radix: 16)), below: 0x\(String(lower.deviceType, radix: 16))")
        }
        if filter.characteristics != lower.characteristics {
            verifier.report(.filterFlagsNotCopied, device: filter, detail: "Characteristics differ from the device below")
        }
    }

    private func makeRootBus() -> DriverObject {
        let bus = DriverObject(name: "\\Driver\\PnpManager", ioManager: self)
        // A root-enumerated PDO has no hardware behind it: it answers the PnP IRPs a
        // PDO must, leaves the others with the status they carry, and fails the rest.
        bus.majorFunction.setAll { _, irp in
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
        bus.majorFunction[.power] = Power.pdoDispatch
        bus.majorFunction[.pnp] = { device, irp in
            let node = device.deviceNode
            return PnP.completeAsPDO(device, irp, ids: { type in
                guard let node else { return nil }
                switch type {
                case .deviceID: return [node.hardwareIDs.first ?? "ROOT\\" + node.instanceName.uppercased()]
                case .instanceID: return [node.instanceName]
                case .hardwareIDs: return node.hardwareIDs
                case .compatibleIDs: return node.compatibleIDs
                }
            })
        }
        return bus
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
            copy.deallocate()
            p.ownedCopy = nil
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
        return observers._withUnsafeGuaranteedRef { chain in
            chain.callingDriver(device, irp, location: location)
            let status = routine.map { $0(device, irp) } ?? invalidRequest(irp)
            chain.driverReturned(device, irp, location: location, status: status)
            return status
        }
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
            if p.borrowed { relocateBorrowedMemory(p) }
            p.requester?.irpPending(irp)
        }
        let (exchanged, _) = p.dispatchState.compareExchange(
            expected: IRPPacket.Dispatch.dispatching.rawValue, desired: IRPPacket.Dispatch.returnedPending.rawValue,
            ordering: .acquiringAndReleasing)
        if exchanged {
            counters.pended.add(1, ordering: .relaxed)
            return .pending
        }
        deliver(irp, asynchronously: false)
        return p.ioStatus.status
    }

    /// Submits and waits: the IRP is completed when this returns, unless the host
    /// is shutting down and the driver did not complete it within `shutdownGrace`
    /// after a cancel (then STATUS_CANCELLED, and the IRP is abandoned to the driver).
    /// The caller frees a completed IRP.
    func callSynchronously(_ irp: IRP) -> (status: NTStatus, completed: Bool) {
        irp.packet.requester = SynchronousRequester.shared
        if submit(irp) == .pending {
            var cancelledAt: Double?
            while !irp.packet.done.wait(timeout: .now() + 0.1).isSuccess {
                guard isShuttingDown?() == true else { continue }
                let now = Self.now
                if let t = cancelledAt {
                    if now - t > shutdownGrace, irp.packet.abandoned.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
                        verifier.report(.neverCompleted, irp: irp, detail: "a synchronous request abandoned at shutdown")
                        return (.cancelled, false)
                    }
                } else {
                    cancelledAt = now
                    irp.cancelIrp(reportingStale: false)
                }
            }
        }
        return (irp.packet.ioStatus.status, true)
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
            p.currentLocation += 1
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
            }
        }
        let (finished, _) = p.state.compareExchange(
            expected: IRPPacket.word(g, .walking), desired: IRPPacket.word(g, .completed), ordering: .acquiringAndReleasing)
        if !finished {
            // Completed again while the walk ran, and no routine asked for it back.
            verifier.report(.completedTwice, irp: irp)
            p.queuedStatus = nil
            p.state.store(IRPPacket.word(g, .completed), ordering: .releasing)
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
        let p = irp.packet
        p.completedAsynchronously = asynchronously
        guard let requester = p.requester else { return }
        if requester === SynchronousRequester.shared {
            if asynchronously {
                // A caller that gave up at shutdown is gone: the IRP is ours to free.
                if p.abandoned.load(ordering: .acquiring) { freeIrp(irp) } else { p.done.signal() }
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
            keep.release()
        } else {
            requester.irpCompleted(irp)
            freeIrp(irp)
        }
    }

    // MARK: - Borrowed host memory

    /// The IRP is about to outlive the host's call: copy what it borrowed into
    /// memory the I/O manager owns and point every buffer of the IRP there.
    func relocateBorrowedMemory(_ p: IRPPacket) {
        guard p.borrowed, let old = p.borrowBase else { p.borrowed = false; return }
        p.borrowed = false
        let n = p.borrowedCount
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 16)
        copyBytes(from: old, to: copy, count: n)
        p.ownedCopy = copy
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
            guard life != .free, life != .completed, d != IRPPacket.Dispatch.idle.rawValue, !p.abandoned.load(ordering: .relaxed) else { return nil }
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
        let deadline = Self.now + grace
        var left = outstandingIrps
        while !left.isEmpty, Self.now < deadline {
            _ = DispatchSemaphore(value: 0).wait(timeout: .now() + 0.01)
            left = outstandingIrps
        }
        for irp in left {
            verifier.report(.neverCompleted, irp: irp, device: irp.packet.targetDevice, detail: "still not completed \(grace) s after IoCancelIrp at shutdown")
        }
        return left
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
/// generation check then refuses.
final class IRPPool: @unchecked Sendable {
    static let sizes = 17
    private let lock = Mutex(())
    private let heads: UnsafeMutablePointer<Unmanaged<IRPPacket>?> = {
        let p = UnsafeMutablePointer<Unmanaged<IRPPacket>?>.allocate(capacity: IRPPool.sizes)
        p.initialize(repeating: nil, count: IRPPool.sizes)
        return p
    }()
    private let every = Mutex<[IRPPacket]>([])

    deinit { heads.deallocate() }

    @inline(__always)
    func take(stackSize: Int) -> IRPPacket? {
        guard stackSize < IRPPool.sizes else { return nil }
        let p: Unmanaged<IRPPacket>? = lock.withLock { _ in
            guard let h = heads[stackSize] else { return nil }
            heads[stackSize] = h._withUnsafeGuaranteedRef { $0.nextFree }
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
        guard p.stackCount < IRPPool.sizes else { return }
        let u = Unmanaged.passUnretained(p)
        lock.withLock { _ in
            p.nextFree = heads[p.stackCount]
            heads[p.stackCount] = u
        }
    }

    var all: [IRPPacket] { every.withLock { $0 } }

    /// Forgets the free packets (at unload); packets still with drivers stay known.
    func drain() {
        var free = Set<ObjectIdentifier>()
        lock.withLock { _ in
            for i in 0..<IRPPool.sizes {
                var h = heads[i]
                while let u = h {
                    free.insert(ObjectIdentifier(u.takeUnretainedValue()))
                    h = u.takeUnretainedValue().nextFree
                }
                heads[i] = nil
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
