// Driver logging: each driver object has a swift-log `Logger` (`driver.logger`)
// whose level is the driver's own, settable at mount and while mounted: the
// component filter of DbgPrintEx, in Swift's idiom. Every line names the driver
// and lands where the host's log goes (the daemon's log file). A message below
// the driver's level costs one atomic load: it is never built.

@_exported import Logging
import Synchronization

/// The levels, in order (swift-log's, from trace to critical).
extension Logger.Level {
    static let ordered: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
    var index: UInt8 { UInt8(Self.ordered.firstIndex(of: self)!) }
}

/// The handler behind every driver's logger: the level is the driver object's
/// (so every copy of the logger follows a change), the line goes to the host's log.
struct DriverLogHandler: LogHandler {
    unowned(unsafe) let driver: DriverObject
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    var logLevel: Logger.Level {
        get { Logger.Level.ordered[Int(driver.logLevelWord.load(ordering: .relaxed))] }
        set { driver.logLevelWord.store(newValue.index, ordering: .relaxed) }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = "\(driver.name) \(event.level): \(event.message)"
        let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { line += " \(k)=\(v)" }
        driver.ioManager.log?(line)
    }
}

extension DriverObject {
    /// The driver's logger: `driver.logger.info("started", metadata: ["size": "\(n)"])`.
    public var logger: Logger {
        Logger(label: name, factory: { _ in DriverLogHandler(driver: self) })
    }

    /// The driver's log level (info unless the host says otherwise).
    public var logLevel: Logger.Level {
        get { Logger.Level.ordered[Int(logLevelWord.load(ordering: .relaxed))] }
        set { logLevelWord.store(newValue.index, ordering: .relaxed) }
    }
}

extension IOManager {
    /// Sets the log level of the drivers `spec` names: `debug` (every driver, and
    /// those loaded later), `RamDisk=trace,Echo=debug`, or both (`info,RamDisk=trace`).
    /// Returns why the spec is wrong, or nil.
    @discardableResult
    public func setLogLevels(_ spec: String) -> String? {
        let all: Logger.Level?, named: [(String, Logger.Level)]
        switch Self.parseLogLevels(spec) {
        case .success(let parsed): (all, named) = parsed
        case .failure(let why): return why.message
        }
        logLevels.withLock { l in
            if let all {
                l.all = all
                l.named = [:]
            }
            for (n, level) in named { l.named[n] = level }
        }
        for d in loadedDrivers { d.logLevel = logLevel(for: d.name) }
        return nil
    }

    public struct LogLevelError: Error { public let message: String }

    /// `info,RamDisk=trace` taken apart: the level for all (if given) and the named ones.
    public static func parseLogLevels(_ spec: String) -> Result<(Logger.Level?, [(String, Logger.Level)]), LogLevelError> {
        var all: Logger.Level?
        var named: [(String, Logger.Level)] = []
        for item in spec.split(separator: ",").map({ String($0) }) where !item.isEmpty {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard let level = Logger.Level(rawValue: parts.last!.lowercased()) else {
                return .failure(LogLevelError(message: "`\(parts.last!)` is not a level: " + Logger.Level.ordered.map(\.rawValue).joined(separator: ", ")))
            }
            if parts.count == 1 {
                all = level
            } else {
                let name = parts[0].hasPrefix("\\") ? parts[0] : "\\Driver\\" + parts[0]
                named.append((name, level))
            }
        }
        return .success((all, named))
    }

    /// The level a driver named `name` logs at: its own if one was set, else everyone's.
    func logLevel(for name: String) -> Logger.Level {
        logLevels.withLock { $0.named[name] ?? $0.all }
    }

    /// `info,\Driver\RamDisk=trace`: the levels now, as `setLogLevels` takes them.
    public var logLevelText: String {
        logLevels.withLock { l in ([l.all.rawValue] + l.named.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }).joined(separator: ",") }
    }
}
