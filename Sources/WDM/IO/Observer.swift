// Observers at the I/O manager's two choke points: IoCallDriver (a call down
// and its return) and IoCompleteRequest (the walk up and the hand-back). The
// verifier's rules are one observer; a tracer or a fault injector plugs in the
// same way. With no observer installed the IRP path pays one branch per point.

/// Sees every IRP at the call-down and completion choke points. Every method
/// has an empty default; an observer implements what it needs. Observers run on
/// the thread of the event and must not block. `driverReturned` runs on the
/// dispatching thread after the routine returned: if it returned STATUS_PENDING
/// (or the IRP is being completed elsewhere) another thread may be completing,
/// freeing or reusing the IRP, so it should read no more than the arguments.
public protocol IRPObserver: AnyObject, Sendable {
    /// IoCallDriver: `device` is about to see `irp` at stack location `location` (1 is the bottom).
    func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int)
    /// `device`'s dispatch routine returned `status` for the location it was called with.
    func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus)
    /// IoCompleteRequest accepted a completion; `irp.ioStatus` is the final status.
    func completing(_ irp: IRP)
    /// A completion routine that `device` set ran; `pendingReturned` is what it saw.
    func completionRoutineReturned(_ device: DeviceObject?, _ irp: IRP, pendingReturned: Bool, result: NTStatus)
    /// The walk ended: the IRP is about to go back to its requester.
    func completed(_ irp: IRP)
    /// IoCancelIrp found a cancel routine set and is about to call it.
    func cancelling(_ irp: IRP)
}

extension IRPObserver {
    public func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {}
    public func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus) {}
    public func completing(_ irp: IRP) {}
    public func completionRoutineReturned(_ device: DeviceObject?, _ irp: IRP, pendingReturned: Bool, result: NTStatus) {}
    public func completed(_ irp: IRP) {}
    public func cancelling(_ irp: IRP) {}
}

/// The installed observers, called in order. Immutable: the I/O manager swaps
/// in a new chain when one is added. Driver Verifier's rules, when installed,
/// are called directly (a concrete class, no reference counting per call);
/// other observers through the protocol.
@usableFromInline final class ObserverChain: @unchecked Sendable {
    let list: [any IRPObserver]
    let rules: Unmanaged<VerifierRules>?
    let others: [any IRPObserver]
    init(_ list: [any IRPObserver]) {
        self.list = list
        let r = list.first { $0 is VerifierRules } as? VerifierRules
        rules = r.map(Unmanaged.passUnretained)
        others = list.filter { !($0 is VerifierRules) }
    }

    @inline(__always) func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {
        rules?._withUnsafeGuaranteedRef { $0.callingDriver(device, irp, location: location) }
        if others.isEmpty { return }
        for o in others { o.callingDriver(device, irp, location: location) }
    }
    /// `major` and `minor` are the location's, read before the routine ran (the
    /// rules must not read the locations of an IRP the thread no longer owns).
    @inline(__always) func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus, major: MajorFunction, minor: UInt8) {
        rules?._withUnsafeGuaranteedRef { $0.driverReturned(device, irp, location: location, status: status, major: major, minor: minor) }
        if others.isEmpty { return }
        for o in others { o.driverReturned(device, irp, location: location, status: status) }
    }
    @inline(__always) func completing(_ irp: IRP) {
        rules?._withUnsafeGuaranteedRef { $0.completing(irp) }
        if others.isEmpty { return }
        for o in others { o.completing(irp) }
    }
    @inline(__always) func completionRoutineReturned(_ device: DeviceObject?, _ irp: IRP, pendingReturned: Bool, result: NTStatus) {
        rules?._withUnsafeGuaranteedRef { $0.completionRoutineReturned(device, irp, pendingReturned: pendingReturned, result: result) }
        if others.isEmpty { return }
        for o in others { o.completionRoutineReturned(device, irp, pendingReturned: pendingReturned, result: result) }
    }
    @inline(__always) func completed(_ irp: IRP) {
        rules?._withUnsafeGuaranteedRef { $0.completed(irp) }
        if others.isEmpty { return }
        for o in others { o.completed(irp) }
    }
    func cancelling(_ irp: IRP) {
        for o in others { o.cancelling(irp) }
    }
}
