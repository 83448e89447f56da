// Plug and Play: the minor codes of IRP_MJ_PNP, what a PnP IRP carries, the
// device node's state and problem codes, and the dispatch routines a function
// driver and a filter driver use for the minors they do not handle themselves.

import Dispatch
import Synchronization

/// `IRP_MN_*` for IRP_MJ_PNP, with the real values.
public enum PnPMinor: UInt8, Sendable, CaseIterable {
    case startDevice = 0x00, queryRemoveDevice = 0x01, removeDevice = 0x02, cancelRemoveDevice = 0x03
    case stopDevice = 0x04, queryStopDevice = 0x05, cancelStopDevice = 0x06, queryDeviceRelations = 0x07
    case queryInterface = 0x08, queryCapabilities = 0x09, queryResources = 0x0A
    case queryResourceRequirements = 0x0B, queryDeviceText = 0x0C, filterResourceRequirements = 0x0D
    case eject = 0x11, queryId = 0x13, queryPnpDeviceState = 0x14, queryBusInformation = 0x15
    case deviceUsageNotification = 0x16, surpriseRemoval = 0x17

    /// The WDK name (`IRP_MN_START_DEVICE`).
    public var wdmName: String {
        var out = "IRP_MN_"
        for (i, c) in String(describing: self).enumerated() {
            if c.isUppercase, i > 0 { out += "_" }
            out += c.uppercased()
        }
        return out
    }
}

/// `BUS_QUERY_ID_TYPE`.
public enum BusQueryIdType: UInt32, Sendable {
    case deviceID = 0, hardwareIDs = 1, compatibleIDs = 2, instanceID = 3
}

/// `DEVICE_RELATION_TYPE`.
public enum DeviceRelationType: UInt32, Sendable {
    case busRelations = 0, ejectionRelations = 1, powerRelations = 2, removalRelations = 3, targetDeviceRelation = 4
}

/// `DEVICE_CAPABILITIES` (the parts the model uses). Each driver in the stack
/// may adjust it on the way up; the bus driver fills it first.
public final class DeviceCapabilities: @unchecked Sendable {
    /// `Size` and `Version`, as the PnP manager sends them.
    public var size: UInt16 = 64
    public var version: UInt16 = 1
    /// `Address` and `UINumber`: 0xFFFFFFFF until the bus says otherwise.
    public var address: UInt32 = 0xFFFF_FFFF
    public var uiNumber: UInt32 = 0xFFFF_FFFF
    public var removable = false
    public var surpriseRemovalOK = false
    public var uniqueID = false
    public var ejectSupported = false
    /// `DeviceWake`: the lowest device state from which the device can wake the system (D1...).
    public var deviceWake: UInt8 = 0
    /// `DeviceState[S0...S5]`: the device power state for each system state
    /// (root-enumerated devices: S0 -> D0, every other -> D3).
    public var deviceState: [UInt8] = [1, 4, 4, 4, 4, 4]
    public init() {}
}

/// What a PnP IRP asks and what it answers. The WDM puts these in the stack
/// location's Parameters union and IoStatus.Information; in the model they
/// travel with the IRP (`IRP.pnp`).
public final class PnPRequest: @unchecked Sendable {
    /// `Parameters.QueryId.IdType`
    public var idType = BusQueryIdType.deviceID
    /// `Parameters.QueryDeviceRelations.Type`
    public var relationType = DeviceRelationType.busRelations
    /// `Parameters.DeviceCapabilities.Capabilities`
    public var capabilities = DeviceCapabilities()
    /// IoStatus.Information of QUERY_ID: the IDs (one for DeviceID and InstanceID).
    public var ids: [String]?
    /// IoStatus.Information of QUERY_DEVICE_RELATIONS: the PDOs.
    public var relations: [DeviceObject]?
    /// IoStatus.Information of QUERY_PNP_DEVICE_STATE: PNP_DEVICE_STATE bits.
    public var deviceState: UInt32 = 0
    /// `Parameters.QueryDeviceText.DeviceTextType`: 0 DeviceTextDescription, 1 DeviceTextLocationInformation.
    public var deviceTextType: UInt32 = 0
    /// IoStatus.Information of QUERY_DEVICE_TEXT.
    public var text: String?
    /// IoStatus.Information of QUERY_BUS_INFORMATION (`PNP_BUS_INFORMATION`).
    public var busInformation: BusInformation?
    /// `Parameters.QueryInterface`: InterfaceType (a GUID), Size and Version asked.
    public var interfaceType = ""
    public var interfaceSize = 0
    public var interfaceVersion = 0
    /// What QUERY_INTERFACE answered: the interface (the provider referenced it).
    public var interface: AnyObject?
    /// The device whose driver completed the IRP (who vetoed a QUERY_REMOVE).
    public internal(set) var completedBy: DeviceObject?
    public init() {}
}

/// `PNP_BUS_INFORMATION`.
public struct BusInformation: Sendable, Equatable {
    public var busTypeGuid: String
    /// `INTERFACE_TYPE` (PNPBus = 15).
    public var legacyBusType: UInt32
    public var busNumber: UInt32
    public init(busTypeGuid: String, legacyBusType: UInt32 = 15, busNumber: UInt32 = 0) {
        self.busTypeGuid = busTypeGuid
        self.legacyBusType = legacyBusType
        self.busNumber = busNumber
    }
}

extension IOManager {
    /// A PnP IRP a driver builds and sends down its own stack (IRP_MN_QUERY_INTERFACE
    /// to the device below, as the toaster asks its bus), waited for. It starts with
    /// STATUS_NOT_SUPPORTED, as every PnP IRP does.
    public func callPnP(_ minor: PnPMinor, to device: DeviceObject, _ configure: (PnPRequest) -> Void = { _ in }) -> (NTStatus, PnPRequest) {
        sendPnP(minor, to: device, configure)
    }

    /// A device whose driver runs in a driver host: the host ended (`status`, its
    /// device shows CM_PROB_FAILED_START with it) or serves again (nil). One action
    /// of the PnP manager, queued.
    public func setDriverHostProblem(_ pdo: DeviceObject, _ status: NTStatus?) {
        pnp.enqueue { [self] in
            guard let node = pdo.deviceNode, pnp.isInTree(node), node.state == .started else { return }
            node.problem = status == nil ? nil : .failedStart
            node.problemStatus = status
            pnp.dirty = true
        }
    }

    /// `IoInvalidateDeviceState(pdo)`: the stack's PNP_DEVICE_STATE changed; the PnP
    /// manager sends IRP_MN_QUERY_PNP_DEVICE_STATE and records the answer.
    public func invalidateDeviceState(_ pdo: DeviceObject) {
        pnp.enqueue { [self] in
            guard let node = pdo.deviceNode, pnp.isInTree(node), node.state == .started else { return }
            let (status, answer) = sendPnP(.queryPnpDeviceState, to: pdo.topOfStack)
            if status.isSuccess, node.deviceState != answer.deviceState {
                node.deviceState = answer.deviceState
                pnp.dirty = true
            }
        }
    }
}



extension IRP {
    /// The PnP parameters and answers of an IRP_MJ_PNP IRP (nil for others).
    public var pnp: PnPRequest? { packet.pnp }
    /// The current location's minor function as a PnP minor.
    public var pnpMinor: PnPMinor? { PnPMinor(rawValue: minorFunction) }
}

/// The PnP dispatch routines drivers use for what they do not handle themselves.
/// They do what the WDM samples do: the remove lock is acquired for every IRP the
/// driver forwards and released after it (REMOVE_DEVICE: released and waited for
/// with IoReleaseRemoveLockAndWait, before the device is detached and deleted);
/// after SURPRISE_REMOVAL the function driver fails new I/O with
/// STATUS_NO_SUCH_DEVICE and gives up its device's names; between a successful
/// QUERY_STOP and START or CANCEL_STOP it holds the I/O that arrives.
public enum PnP {
    /// A function driver's IRP_MJ_PNP: START goes down first and the driver acts
    /// after the lower drivers succeeded (the forward-and-wait pattern);
    /// REMOVE_DEVICE goes down, then the driver waits for its I/O (remove lock),
    /// detaches and deletes its device; everything else is passed down untouched.
    /// `start`, `surpriseRemoval` and `remove`, if given, run at those points
    /// (`remove` before the remove lock is waited for: complete what waits in the
    /// device there).
    public static func functionDispatch(
        start: (@Sendable (DeviceObject, IRP) -> NTStatus)? = nil,
        surpriseRemoval: (@Sendable (DeviceObject) -> Void)? = nil,
        remove: (@Sendable (DeviceObject) -> Void)? = nil
    ) -> DispatchRoutine {
        { device, irp in
            let io = device.driverObject.ioManager
            // IoAcquireRemoveLock for every PnP IRP, as the samples do.
            let locked = device.removeLock.acquire()
            guard locked.isSuccess else {
                irp.complete(locked)
                return locked
            }
            switch irp.pnpMinor {
            case .startDevice:
                var status = forwardAndWait(device, irp)
                if status.isSuccess, let start { status = start(device, irp) }
                irp.complete(status)
                if status.isSuccess { io.hold(device, .stop, false) }  // a START after a STOP lets held I/O go
                device.removeLock.release()
                return status
            case .removeDevice:
                // No new I/O; what waits in the device is completed before its I/O is waited for.
                device.failsNewIO.store(true, ordering: .releasing)
                io.hold(device, .stop, false)
                remove?(device)
                irp.ioStatus.status = .success
                irp.skipCurrentStackLocation()
                let status = device.callLower(irp)
                // IoReleaseRemoveLockAndWait: this IRP's acquire and the initial count go, then it waits.
                device.removeLock.releaseAndWait()
                io.deleteSymbolicLinks(of: device)
                io.detachAndDelete(device)
                return status
            case .surpriseRemoval:
                // The device is gone: new I/O fails, its names go (a device plugged in
                // again may take them), nothing is detached or deleted until REMOVE.
                device.failsNewIO.store(true, ordering: .releasing)
                io.hold(device, .stop, false)
                io.deleteSymbolicLinks(of: device)
                surpriseRemoval?(device)
                return passDown(device, irp, status: .success)
            case .queryStopDevice:
                // Says yes, and holds the I/O that arrives from now until START or CANCEL_STOP.
                io.hold(device, .stop, true)
                return passDown(device, irp, status: .success)
            case .cancelStopDevice:
                io.hold(device, .stop, false)
                return passDown(device, irp, status: .success)
            case .queryRemoveDevice, .cancelRemoveDevice, .stopDevice:
                // A function driver that has nothing to veto says yes, and passes it on.
                return passDown(device, irp, status: .success)
            default:
                return passDown(device, irp, status: nil)
            }
        }
    }

    /// Passes an IRP down untouched (with `status` set first, if given) and
    /// releases the remove lock the dispatch routine acquired.
    static func passDown(_ device: DeviceObject, _ irp: IRP, status: NTStatus?) -> NTStatus {
        if let status { irp.ioStatus.status = status }
        irp.skipCurrentStackLocation()
        let result = device.callLower(irp)
        device.removeLock.release()
        return result
    }

    /// A filter's IRP_MJ_PNP: everything goes down untouched, under the remove
    /// lock; after REMOVE_DEVICE went down the filter waits for its I/O, detaches
    /// and deletes its device.
    public static let filterDispatch: DispatchRoutine = { device, irp in
        let locked = device.removeLock.acquire()
        guard locked.isSuccess else {
            irp.complete(locked)
            return locked
        }
        if irp.pnpMinor == .removeDevice {
            irp.skipCurrentStackLocation()
            let status = device.callLower(irp)
            device.removeLock.releaseAndWait()
            device.driverObject.ioManager.detachAndDelete(device)
            return status
        }
        return passDown(device, irp, status: nil)
    }

    /// What a PDO answers, for bus drivers: QUERY_ID from `ids` (nil: not answered),
    /// QUERY_CAPABILITIES through `capabilities`, success for the state changes a PDO
    /// must accept (START, the queries and cancels, STOP, SURPRISE_REMOVAL,
    /// REMOVE_DEVICE, EJECT, QUERY_PNP_DEVICE_STATE), itself for TargetDeviceRelation;
    /// anything else keeps the status it carries. Completes the IRP; returns its status.
    public static func completeAsPDO(
        _ device: DeviceObject, _ irp: IRP, ids: (BusQueryIdType) -> [String]?,
        capabilities: (DeviceCapabilities) -> Void = { _ in }
    ) -> NTStatus {
        var status = irp.ioStatus.status
        switch irp.pnpMinor {
        case .queryId:
            if let q = irp.pnp, let answer = ids(q.idType) {
                q.ids = answer
                status = .success
            }
        case .queryCapabilities:
            if let caps = irp.pnp?.capabilities {
                capabilities(caps)
                status = .success
            }
        case .startDevice, .queryRemoveDevice, .cancelRemoveDevice, .removeDevice, .surpriseRemoval,
             .queryStopDevice, .cancelStopDevice, .stopDevice, .queryPnpDeviceState, .eject:
            status = .success
        case .queryDeviceRelations:
            if irp.pnp?.relationType == .targetDeviceRelation {
                irp.pnp?.relations = [device]
                status = .success
            }
        default:
            break
        }
        irp.complete(status)
        return status
    }

    /// Sends the IRP down with a completion routine that hands it back, waits for
    /// the lower drivers to finish, and returns their status. The caller owns the
    /// IRP again and completes it.
    public static func forwardAndWait(_ device: DeviceObject, _ irp: IRP) -> NTStatus {
        let done = Event()
        irp.copyCurrentStackLocationToNext()
        irp.setCompletionRoutine({ _, _, context in
            (context as! Event).signal()
            return .moreProcessingRequired
        }, context: done)
        _ = device.callLower(irp)
        done.wait()
        return irp.ioStatus.status
    }
}

/// `KEVENT` (notification event), enough for forward-and-wait: once signalled it
/// stays signalled.
public final class Event: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let signalled = Atomic<Bool>(false)
    public init() {}
    public func signal() {
        if !signalled.exchange(true, ordering: .acquiringAndReleasing) { semaphore.signal() }
    }
    public func wait() {
        semaphore.wait()
        semaphore.signal()  // let any other waiter through too
    }
}

/// `IO_REMOVE_LOCK`: counts the I/O a device has in flight so REMOVE_DEVICE can
/// wait for it. The count starts at 1; acquiring adds one, or fails with
/// STATUS_DELETE_PENDING once removal began; `releaseAndWait` (called holding an
/// acquire) marks the lock removed, drops that acquire and the initial count, and
/// waits for zero.
public final class RemoveLock: @unchecked Sendable {
    private let state = HandoffMutex((count: 1, removed: false, used: false))
    private let zero = DispatchSemaphore(value: 0)

    public init() {}

    /// `IoAcquireRemoveLock`.
    public func acquire() -> NTStatus {
        state.withLock { s in
            guard !s.removed else { return .deletePending }
            s.count += 1
            s.used = true
            return .success
        }
    }

    /// `IoReleaseRemoveLock`.
    public func release() {
        let last = state.withLock { s -> Bool in
            s.count -= 1
            return s.count == 0
        }
        if last { zero.signal() }
    }

    /// `IoReleaseRemoveLockAndWait`: called once, at REMOVE_DEVICE, by a dispatch
    /// routine that holds an acquire of its own (as every sample's does): marks the
    /// lock removed (later acquires fail with STATUS_DELETE_PENDING), drops that
    /// acquire and the initial count, and waits until the I/O still holding the
    /// lock has released it.
    public func releaseAndWait() {
        let wait = state.withLock { s -> Bool in
            guard !s.removed else { return false }
            s.removed = true
            s.count -= 2
            return s.count > 0
        }
        if wait { zero.wait() }
    }

    /// True once `releaseAndWait` ran.
    public var isRemoved: Bool { state.withLock { $0.removed } }
    /// True once the driver acquired it (a driver that never uses its remove lock
    /// owes it no release at REMOVE_DEVICE).
    public var isUsed: Bool { state.withLock { $0.used } }
}
