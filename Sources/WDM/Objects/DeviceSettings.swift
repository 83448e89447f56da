// DeviceSettings: a small text file a driver publishes for one of its devices,
// under the device's node directory (`.devices/NODE/NAME`). Reading it shows the
// device's settings and counters, one `key value` per line; writing `key value`
// lines changes them while the device runs. Windows drivers expose such knobs
// through WMI or private IOCTLs; a file is what a shell user can cat and echo to.
// The fault-injection filters publish one each.

/// A device's settings file.
public protocol DeviceSettings: AnyObject, Sendable {
    /// The file's name under the node's directory (`error`).
    var fileName: String { get }
    /// The settings and counters, one `key value` per line.
    func text() -> String
    /// Applies one `key value` line: nil when it was applied, else why not
    /// (`unknown key "rat": rate, seed, ...`). Called on a host thread.
    func apply(_ line: String) -> String?
}

extension DeviceObject {
    /// Publishes `settings` as this device's settings file (once; a second call is ignored).
    public func publish(_ settings: any DeviceSettings) {
        _ = publishedSettings.storeIfNil(SettingsBox(settings))
    }

    /// The settings file this device published, if any.
    public var settings: (any DeviceSettings)? { publishedSettings.load()?.settings }
}

/// Holds a published settings file (`AtomicLazyReference` holds a class).
final class SettingsBox: Sendable {
    let settings: any DeviceSettings
    init(_ s: any DeviceSettings) { settings = s }
}

extension DeviceNode {
    /// The settings files of the node's stack, top first, each with a name unique
    /// in the node's directory (a second `error` is `error.2`).
    public var publishedSettings: [(name: String, settings: any DeviceSettings)] {
        var out: [(name: String, settings: any DeviceSettings)] = []
        var d = pdo?.topOfStack
        while let device = d {
            if let s = device.settings {
                var name = s.fileName, n = 1
                while out.contains(where: { $0.name == name }) {
                    n += 1
                    name = "\(s.fileName).\(n)"
                }
                out.append((name, s))
            }
            d = device.lowerDevice
        }
        return out
    }
}
