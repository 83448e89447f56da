// FileObject: one open handle to a device, with the access granted at open
// and the driver's per-open context. Made only by `IOManager.open`, after
// IRP_MJ_CREATE succeeded.

import Synchronization

/// `FILE_OBJECT`.
public final class FileObject: @unchecked Sendable {
    /// `DeviceObject`: the device that was opened (the named one; IRPs go to the top of its stack).
    public let deviceObject: DeviceObject
    /// The access granted at IRP_MJ_CREATE time.
    public let grantedAccess: AccessMask
    /// `FileName`: the name the device was opened by.
    public let fileName: String
    /// `FsContext`: the driver's per-open context.
    public var fsContext: AnyObject?
    /// `FsContext2`.
    public var fsContext2: AnyObject?
    /// What the host keeps per handle (the bridge: the reply buffers this handle's
    /// reads use again). Set once, by the host only.
    public let hostData = AtomicLazyReference<AnyObject>()

    /// The top of the stack when it was opened.
    var top: DeviceObject?
    /// The device node whose handle count this handle holds (the PnP manager's
    /// open-handle veto and the end of a surprise removal look at it).
    var node: DeviceNode?

    enum State: UInt8 { case creating = 0, open = 1, closed = 2 }
    let state = Atomic<UInt8>(State.creating.rawValue)

    /// True between a successful IRP_MJ_CREATE and the close.
    public var isOpen: Bool { state.load(ordering: .acquiring) == State.open.rawValue }

    init(deviceObject: DeviceObject, grantedAccess: AccessMask, fileName: String) {
        self.deviceObject = deviceObject
        self.grantedAccess = grantedAccess
        self.fileName = fileName
    }
}
