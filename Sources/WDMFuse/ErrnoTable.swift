// ErrnoTable: the one translation from NTSTATUS to errno, used for open, read,
// write, fsync and close. (IOCTLs do not use it: their envelope carries the
// NTSTATUS itself.) docs/ioctl.md shows the same table to users.

import Glibc
import WDM

/// NTSTATUS → errno.
public enum ErrnoTable {
    /// The mapped statuses. Anything not listed becomes EIO.
    public static let entries: [(status: NTStatus, errno: Int32, name: String)] = [
        (.accessDenied, EACCES, "EACCES"),
        (.diskFull, ENOSPC, "ENOSPC"),
        (.cancelled, EINTR, "EINTR"),
        (.noSuchDevice, ENODEV, "ENODEV"),
        (.deviceRemoved, ENODEV, "ENODEV"),
        (.deletePending, ENODEV, "ENODEV"),
        (.invalidParameter, EINVAL, "EINVAL"),
        (.invalidDeviceRequest, EINVAL, "EINVAL"),
        (.bufferTooSmall, EINVAL, "EINVAL"),
        (.notImplemented, ENOSYS, "ENOSYS"),
        (.notSupported, EOPNOTSUPP, "EOPNOTSUPP"),
        (.insufficientResources, ENOMEM, "ENOMEM"),
        (.deviceNotReady, EAGAIN, "EAGAIN"),
        (.deviceBusy, EBUSY, "EBUSY"),
        (.ioTimeout, ETIMEDOUT, "ETIMEDOUT"),
        (.mediaWriteProtected, EROFS, "EROFS"),
        (.unsuccessful, EIO, "EIO"),
    ]

    /// The errno for a status that is not a success. Reads treat STATUS_END_OF_FILE
    /// as an empty read and STATUS_BUFFER_OVERFLOW as a short one before asking here.
    public static func errno(for status: NTStatus) -> Int32 {
        for e in entries where e.status == status { return e.errno }
        return EIO
    }
}
