// Readiness: whether a read or a write on a device would complete now or pend.
// WDM has no poll; applications use overlapped I/O instead. wdmfs users have
// select and poll, so this is a small wdmfs extension: a driver that can pend
// says how ready it is, and tells the I/O manager when that changes.

import Synchronization

/// What a device can do without pending.
public struct Readiness: OptionSet, Sendable, Hashable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// A read would complete now (data, or end of file).
    public static let readable = Readiness(rawValue: 1)
    /// A write would complete now.
    public static let writable = Readiness(rawValue: 2)
}

/// A driver's answer to "how ready is this device for this open file?" (wdmfs extension).
public typealias ReadinessRoutine = @Sendable (_ device: DeviceObject, _ file: FileObject?) -> Readiness

/// Told when a device's readiness may have changed (the FUSE bridge wakes pollers).
public protocol ReadinessObserver: AnyObject, Sendable {
    func readinessChanged(_ device: DeviceObject)
}

extension IOManager {
    /// The readiness of `file`'s stack: the first device from the top whose driver
    /// has a readiness routine answers (filters are transparent); a stack with none
    /// is always ready, as a regular file is.
    public func readiness(of file: FileObject) -> Readiness {
        var device: DeviceObject? = file.deviceObject.topOfStack
        while let d = device {
            if let routine = d.driverObject.readiness { return routine(d, file) }
            device = d.lowerDevice
        }
        return [.readable, .writable]
    }

    /// Drivers call this after something that may make a waiting reader or writer
    /// able to go on (data arrived, room appeared).
    public func readinessChanged(_ device: DeviceObject) {
        readinessObserver?.readinessChanged(device)
    }
}
