// FileObject: one open handle to a device, with the access granted at open
// and the driver's per-open context.

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

    public init(deviceObject: DeviceObject, grantedAccess: AccessMask, fileName: String) {
        self.deviceObject = deviceObject
        self.grantedAccess = grantedAccess
        self.fileName = fileName
    }
}
