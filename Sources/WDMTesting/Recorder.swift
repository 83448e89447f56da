// Recorders: a list of events that any thread can append to, and an observer
// that records the IRPs a stack sees on their way down (IoCallDriver).

import WDM

/// A thread-safe list of events.
public final class Recorder: Sendable {
    private let items = HandoffMutex<[String]>([])
    public init() {}
    public func add(_ s: String) { items.withLock { $0.append(s) } }
    public var all: [String] { items.withLock { $0 } }
}

/// Records each call down a stack (`callingDriver`) that `describe` turns into a
/// line (nil: not recorded). Install it with `io.addObserver`. It runs on the
/// thread of the call, as every observer does, so `describe` must not block.
public final class IRPRecorder: IRPObserver, Sendable {
    /// What was recorded, in order.
    public let events = Recorder()
    private let describe: @Sendable (_ device: DeviceObject, _ irp: IRP, _ location: Int) -> String?

    public init(_ describe: @escaping @Sendable (_ device: DeviceObject, _ irp: IRP, _ location: Int) -> String?) {
        self.describe = describe
    }

    public func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {
        if let line = describe(device, irp, location) { events.add(line) }
    }

    /// How many lines there are so far (to pass to `since`).
    public var mark: Int { events.all.count }
    /// What was recorded after `mark`.
    public func since(_ mark: Int) -> [String] { Array(events.all.dropFirst(mark)) }
}
