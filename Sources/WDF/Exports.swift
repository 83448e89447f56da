// A driver on the framework imports WDF alone: WDM's types (DeviceObject, IRP,
// NTStatus...) come with it, as KMDF drivers see WDM's through wdf.h.
@_exported import WDM

/// The context of a device whose driver keeps nothing of its own.
public final class NoContext: Sendable {
    public init() {}
}
