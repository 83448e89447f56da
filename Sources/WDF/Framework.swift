// Framework: the driver entry of a driver written on the framework, and the
// dispatch routines the framework owns. The PnP and power order is KMDF's:
//
//   START_DEVICE (after the lower drivers started): prepare hardware, D0 entry,
//   power-managed queues started, interfaces enabled, self-managed I/O init
//   (restart after a STOP).
//   Device SET_POWER to D1-D3: self-managed I/O suspend, power-managed queues
//   stopped (and their presented requests finished), D0 exit, then down.
//   Device SET_POWER to D0: down first, then D0 entry, queues started,
//   self-managed I/O restart.
//   QUERY_STOP: every queue stops and its presented requests finish (veto
//   first through onQueryStop); CANCEL_STOP starts them; STOP powers down and
//   releases the hardware.
//   SURPRISE_REMOVAL: new I/O fails, names and interfaces go, the driver's
//   surprise-removal callback, every queue purged (STATUS_CANCELLED), power
//   down (D0 exit to D3, without waiting for the requests in flight), hardware
//   released.
//   REMOVE_DEVICE: new I/O fails, every queue drained, power down if still up,
//   hardware released, self-managed I/O cleanup, interfaces disabled, down,
//   the remove lock waited for, the device's framework objects deleted, the
//   device detached and deleted.
//
// I/O: a request of a major that has a queue goes to it (presented inline when
// the queue has room: the dispatch routine returns what the handler completed
// it with, or STATUS_PENDING if it kept it or it waits); other reads, writes and device controls go to the
// default queue; without one a filter sends them down and a function driver
// fails them with STATUS_INVALID_DEVICE_REQUEST. CREATE, CLEANUP and CLOSE go
// to the file callbacks (CLEANUP cancels the handle's waiting requests first).

import WDM

/// What a device is made with (KMDF's WDFDEVICE_INIT): a function driver's
/// `initialize` may change it from the node's parameters.
public struct DeviceInit: Sendable {
    /// `FILE_DEVICE_*` (`DeviceType`).
    public var deviceType: UInt32
    /// `DO_BUFFERED_IO`, `DO_DIRECT_IO` (`WdfDeviceInitSetIoType`), ...
    public var flags: DeviceFlags
    public var characteristics: UInt32
    /// The device node's parameters (the tree file's settings of the device).
    public let parameters: [String: String]
}

public enum Framework {
    /// A function driver (the device's power policy owner). `deviceAdd` runs in
    /// AddDevice with the new device (of `deviceType` and `flags`), sets its
    /// callbacks, makes its queues, and returns the device's context; a thrown
    /// status fails AddDevice.
    /// `initialize`, if given, runs first, before the device exists (the part of
    /// KMDF's EvtDriverDeviceAdd that fills WDFDEVICE_INIT): it may choose the
    /// device's type, flags and characteristics from its node's parameters, or fail
    /// AddDevice with a thrown status.
    public static func functionDriver<Context: AnyObject & Sendable>(
        deviceType: UInt32 = DeviceType.unknown, flags: DeviceFlags = [.bufferedIO], characteristics: UInt32 = 0,
        initialize: (@Sendable (inout DeviceInit) throws(NTStatus) -> Void)? = nil,
        deviceAdd: @escaping @Sendable (Device<Context>) throws(NTStatus) -> Context
    ) -> DriverEntry {
        { driver in
            driver.addDevice = { driver, pdo in
                let io = driver.ioManager
                var setup = DeviceInit(deviceType: deviceType, flags: flags, characteristics: characteristics,
                                       parameters: pdo.deviceNode?.parameters ?? [:])
                if let initialize {
                    do throws(NTStatus) { try initialize(&setup) } catch { return error }
                }
                let fdo = io.createDevice(driver: driver, deviceType: setup.deviceType, characteristics: setup.characteristics,
                                          flags: setup.flags)
                let device = Device<Context>(fdo, isFilter: false)
                fdo.deviceExtension = device
                io.attachDeviceToDeviceStack(fdo, to: pdo)
                fdo.flags.remove(.deviceInitializing)
                do throws(NTStatus) {
                    if let node = pdo.deviceNode {
                        try io.createSymbolicLink(node.parameters["SymbolicLinkName"] ?? node.instanceName, device: fdo)
                    }
                    device.contextStorage = try deviceAdd(device)
                    return .success
                } catch {
                    io.deleteSymbolicLinks(of: fdo)
                    device.delete()
                    io.detachAndDelete(fdo)
                    return error
                }
            }
            install(on: driver)
            return .success
        }
    }

    /// A filter driver: its device copies what the device below has (flags,
    /// type, characteristics); everything it has no queue or callback for goes
    /// down untouched.
    public static func filterDriver<Context: AnyObject & Sendable>(
        deviceAdd: @escaping @Sendable (Device<Context>) throws(NTStatus) -> Context
    ) -> DriverEntry {
        { driver in
            driver.addDevice = { driver, pdo in
                let io = driver.ioManager
                let filter = io.createDevice(driver: driver, deviceType: DeviceType.unknown)
                filter.copyAttributes(from: pdo.topOfStack)
                let device = Device<Context>(filter, isFilter: true)
                filter.deviceExtension = device
                do throws(NTStatus) {
                    device.contextStorage = try deviceAdd(device)
                } catch {
                    device.delete()
                    io.deleteDevice(filter)
                    return error
                }
                filter.flags.remove(.deviceInitializing)
                io.attachDeviceToDeviceStack(filter, to: pdo)  // last: a live stack may send it a request at once
                return .success
            }
            install(on: driver)
            return .success
        }
    }

    /// The dispatch table: every major to the framework (not generic: no metadata looked up per IRP).
    static func install(on driver: DriverObject) {
        driver.majorFunction.setAll { device, irp in device.deviceExtension(as: AnyDevice.self).dispatchIO(irp) }
        driver.majorFunction[.pnp] = { device, irp in device.deviceExtension(as: AnyDevice.self).dispatchPnP(irp) }
        driver.majorFunction[.power] = { device, irp in device.deviceExtension(as: AnyDevice.self).dispatchPower(irp) }
    }
}

extension AnyDevice {
    func runPreprocessors(_ irp: IRP) {
        let bit = UInt32(1) << irp.majorFunction.rawValue
        for p in preprocessors where p.majors & bit != 0 { p.run(self, irp) }
    }

    func passDown(_ irp: IRP) -> NTStatus {
        irp.skipCurrentStackLocation()
        return deviceObject.callLower(irp)
    }

    func succeed(_ irp: IRP) -> NTStatus {
        irp.complete(.success)
        return .success
    }

    // MARK: - I/O

    func dispatchIO(_ irp: IRP) -> NTStatus {
        if !preprocessors.isEmpty { runPreprocessors(irp) }
        let major = irp.majorFunction
        switch major {
        case .create:
            guard let fileCreate else { return isFilter ? passDown(irp) : succeed(irp) }
            var outcome = NTStatus.pending
            withUnsafeMutablePointer(to: &outcome) { slot in
                fileCreate(self, Request(inline: irp, queue: nil, presenter: 0, outcome: slot))
            }
            return outcome
        case .cleanup:
            if let file = irp.fileObject { for q in queues { q.cancel(for: file) } }
            fileCleanup?(self, irp.fileObject)
            return isFilter ? passDown(irp) : succeed(irp)
        case .close:
            fileClose?(self, irp.fileObject)
            return isFilter ? passDown(irp) : succeed(irp)
        default:
            if let q = queueFor[Int(major.rawValue)] {
                // A device that says so (`failsIOWhenNotInD0`) fails I/O while not in D0 instead of holding it.
                if deviceObject.failsIOWhenNotInD0, q.powerManaged, !state.withLock({ $0.inD0 }) {
                    irp.complete(.deviceNotReady)
                    return .deviceNotReady
                }
                return q.enqueue(irp, inline: true)
            }
            if isFilter { return passDown(irp) }
            // The length `ls -l` shows: what the driver published (`deviceObject.publishedSize`), else 0.
            if major == .queryInformation { return irp.completeQueryStandardInformation(size: deviceObject.publishedSize ?? 0) }
            irp.complete(.invalidDeviceRequest)
            return .invalidDeviceRequest
        }
    }

    // MARK: - PnP

    func dispatchPnP(_ irp: IRP) -> NTStatus {
        if !preprocessors.isEmpty { runPreprocessors(irp) }
        if isFilter { return filterPnP(irp) }
        let locked = deviceObject.removeLock.acquire()
        guard locked.isSuccess else {
            irp.complete(locked)
            return locked
        }
        // Read once: after completion the IRP's current location is no longer this one.
        let minor = irp.pnpMinor
        defer { if minor != .removeDevice { deviceObject.removeLock.release() } }
        switch minor {
        case .startDevice:
            var status = PnP.forwardAndWait(deviceObject, irp)
            if status.isSuccess { status = startUp() }
            irp.complete(status)
            return status
        case .queryStopDevice:
            if let veto = queryStop?(self), veto.isError {
                irp.complete(veto)
                return veto
            }
            for q in queues { q.stop(Queue.pnp) }
            for q in queues { q.waitUntilIdle() }
            return passDown(irp, .success)
        case .cancelStopDevice:
            for q in queues { q.start(Queue.pnp) }
            return passDown(irp, .success)
        case .stopDevice:
            powerDown(to: .d3)
            releaseHardwareOnce()
            return passDown(irp, .success)
        case .queryRemoveDevice:
            if let veto = queryRemove?(self), veto.isError {
                irp.complete(veto)
                return veto
            }
            return passDown(irp, .success)
        case .cancelRemoveDevice:
            return passDown(irp, .success)
        case .surpriseRemoval:
            deviceObject.failsNewIO.store(true, ordering: .releasing)
            ioManager.deleteSymbolicLinks(of: deviceObject)
            setInterfaces(enabled: false)
            state.withLock { $0.surpriseRemoved = true }
            surpriseRemoval?(self)
            for q in queues { q.purgeAtSurpriseRemoval() }
            // The hardware is gone: nothing to wait for before D0 exit. What is in
            // flight is the driver's to finish; REMOVE_DEVICE waits for it.
            powerDown(to: .d3, waitForRequests: false)
            releaseHardwareOnce()
            return passDown(irp, .success)
        case .removeDevice:
            deviceObject.failsNewIO.store(true, ordering: .releasing)
            for q in queues { q.drain() }
            powerDown(to: .d3)
            releaseHardwareOnce()
            selfManagedCleanup?(self)
            setInterfaces(enabled: false)
            let status = passDown(irp, .success)
            deviceObject.removeLock.releaseAndWait()
            delete()
            ioManager.deleteSymbolicLinks(of: deviceObject)
            ioManager.detachAndDelete(deviceObject)
            return status
        default:
            return passDown(irp)
        }
    }

    func passDown(_ irp: IRP, _ status: NTStatus) -> NTStatus {
        irp.ioStatus.status = status
        return passDown(irp)
    }

    func filterPnP(_ irp: IRP) -> NTStatus {
        switch irp.pnpMinor {
        case .surpriseRemoval:
            surpriseRemoval?(self)
            for q in queues { q.purgeAtSurpriseRemoval() }
        case .removeDevice:
            for q in queues { q.drain() }
            let status = PnP.filterDispatch(deviceObject, irp)  // down, remove lock waited for, detached, deleted
            delete()
            return status
        default: break
        }
        return PnP.filterDispatch(deviceObject, irp)
    }

    /// START's work after the lower drivers started; undoes what ran if a step fails.
    func startUp() -> NTStatus {
        if let prepareHardware {
            let s = prepareHardware(self)
            guard s.isSuccess else { return s }
        }
        state.withLock { $0.hardwarePrepared = true }
        let s = powerUp(from: .d3)
        guard s.isSuccess else {
            releaseHardwareOnce()
            return s
        }
        for q in queues { q.start(Queue.pnp) }
        setInterfaces(enabled: true)
        return .success
    }

    func releaseHardwareOnce() {
        let was = state.withLock { s -> Bool in
            defer { s.hardwarePrepared = false }
            return s.hardwarePrepared
        }
        if was { releaseHardware?(self) }
    }

    // MARK: - Power

    /// D0 entry, power-managed queues started, self-managed I/O (re)started.
    func powerUp(from previous: DevicePowerState) -> NTStatus {
        guard !state.withLock({ $0.inD0 }) else { return .success }
        if let d0Entry {
            let s = d0Entry(self, previous)
            guard s.isSuccess else { return s }
        }
        ioManager.setPowerState(deviceObject, .d0, holdsIO: false)
        state.withLock { $0.inD0 = true }
        for q in queues where q.powerManaged { q.start(Queue.power) }
        let first = state.withLock { s -> Bool? in
            guard !s.selfManagedStarted, !s.surpriseRemoved else { return nil }
            s.selfManagedStarted = true
            defer { s.selfManagedEverStarted = true }
            return !s.selfManagedEverStarted
        }
        if let first { (first ? selfManagedInit : selfManagedRestart)?(self) }
        return .success
    }

    /// Self-managed I/O suspended, power-managed queues stopped and idle, D0 exit.
    func powerDown(to target: DevicePowerState, waitForRequests: Bool = true) {
        let was = state.withLock { s -> (inD0: Bool, selfManaged: Bool) in
            defer { s.inD0 = false; s.selfManagedStarted = false }
            return (s.inD0, s.selfManagedStarted)
        }
        guard was.inD0 else { return }
        if was.selfManaged { selfManagedSuspend?(self) }
        for q in queues where q.powerManaged { q.stop(Queue.power) }
        if waitForRequests { for q in queues where q.powerManaged { q.waitUntilIdle() } }
        d0Exit?(self, target)
        ioManager.setPowerState(deviceObject, target, holdsIO: false)
    }

    func dispatchPower(_ irp: IRP) -> NTStatus {
        if !preprocessors.isEmpty { runPreprocessors(irp) }
        if isFilter { return Power.filterDispatch(deviceObject, irp) }
        guard irp.powerMinor == .setPower, case .device(let d)? = irp.power?.target else {
            // System IRPs become device IRPs for the mapped state (the policy owner's work).
            return Power.functionDispatch(deviceObject, irp)
        }
        if d != .d0 {
            powerDown(to: d)
            return passDown(irp, .success)
        }
        var status = PnP.forwardAndWait(deviceObject, irp)
        if status == .notSupported { status = .success }
        if status.isSuccess { status = powerUp(from: deviceObject.powerState) }
        irp.complete(status)
        return status
    }
}
