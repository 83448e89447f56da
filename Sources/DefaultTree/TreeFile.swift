// TreeFile: a device tree described in YAML. Each device names its hardware
// and compatible IDs (the PnP manager picks the function driver that serves
// them, hardware IDs first), its filters, its symbolic link, its settings and
// its node's permissions. A bad file is rejected before anything is mounted,
// with the file, line, column and reason; so is a setting that no driver of
// the device's stack takes, or a value its driver does not take.
//
//   devices:
//     - name: ramdisk0
//       hardware_ids: ['Root\RamDisk']
//       upper_filters: [PassThroughFilter]
//       settings: {Size: 67108864, Buffering: direct}
//       mode: '0666'

import Foundation
import WDM
import WDMHost
import Yams

/// One device of a tree file.
public struct DeviceDescription: Sendable, Equatable {
    public var name: String
    public var hardwareIDs: [String]
    public var compatibleIDs: [String] = []
    public var lowerFilters: [String] = []
    public var upperFilters: [String] = []
    /// The symbolic link (the file name under the mount); the name by default.
    public var link: String?
    public var settings: [String: String] = [:]
    public var mode: UInt32 = 0o666
    public var owner: UInt32?
    public var group: UInt32?
    /// `isolation: host`: the function driver runs in a driver host process of its own.
    public var isolatedInHost = false
    /// `driver_package: PATH` and `driver: NAME`: the function driver is NAME, from a
    /// driver package's host executable at PATH (always isolated).
    public var package: (executable: String, driver: String)?

    public static func == (a: DeviceDescription, b: DeviceDescription) -> Bool {
        a.name == b.name && a.hardwareIDs == b.hardwareIDs && a.compatibleIDs == b.compatibleIDs && a.lowerFilters == b.lowerFilters
            && a.upperFilters == b.upperFilters && a.link == b.link && a.settings == b.settings && a.mode == b.mode && a.owner == b.owner
            && a.group == b.group && a.isolatedInHost == b.isolatedInHost && a.package?.executable == b.package?.executable
            && a.package?.driver == b.package?.driver
    }

    public init(name: String, hardwareIDs: [String], compatibleIDs: [String] = [], lowerFilters: [String] = [],
                upperFilters: [String] = [], link: String? = nil, settings: [String: String] = [:], mode: UInt32 = 0o666) {
        self.name = name
        self.hardwareIDs = hardwareIDs
        self.compatibleIDs = compatibleIDs
        self.lowerFilters = lowerFilters
        self.upperFilters = upperFilters
        self.link = link
        self.settings = settings
        self.mode = mode
    }
}

/// Class filters: for every device of a setup class (the function driver's class).
public struct ClassFilters: Sendable, Equatable {
    public var lower: [String] = []
    public var upper: [String] = []
    public init(lower: [String] = [], upper: [String] = []) { self.lower = lower; self.upper = upper }
}

/// A device tree: what `wdmfs mount --tree FILE` builds.
public struct TreeDescription: Sendable, Equatable {
    public var devices: [DeviceDescription]
    /// Class filters by class name (`Toaster`, `System`).
    public var classes: [String: ClassFilters] = [:]
    /// Device filters for devices a bus reports, by hardware ID (the registry's
    /// per-device UpperFilters / LowerFilters).
    public var hardwareFilters: [String: ClassFilters] = [:]
    public init(devices: [DeviceDescription], classes: [String: ClassFilters] = [:], hardwareFilters: [String: ClassFilters] = [:]) {
        self.devices = devices
        self.classes = classes
        self.hardwareFilters = hardwareFilters
    }
}

/// Why a tree file was rejected.
public struct TreeError: Error, CustomStringConvertible, Equatable {
    public let file: String
    /// The line and column (from 1) of what is wrong; 0 when the whole file is
    /// (it cannot be read).
    public let line: Int
    public let column: Int
    public let reason: String
    /// `file:line:column: reason`, or `file: reason` for the whole file.
    public var description: String { line > 0 ? "\(file):\(line):\(column): \(reason)" : "\(file): \(reason)" }
}

public enum TreeFile {
    static let deviceKeys: Set<String> = [
        "name", "hardware_ids", "compatible_ids", "lower_filters", "upper_filters", "link", "settings", "mode", "owner", "group",
        "isolation", "driver_package", "driver",
    ]

    /// Reads and checks a tree file.
    public static func load(path: String) throws(TreeError) -> TreeDescription {
        let bytes = try contents(of: path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw TreeError(file: path, line: 0, column: 0, reason: "not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    /// A file's bytes; or why it cannot be read, as the system says it
    /// (`No such file or directory`, `Is a directory`...).
    static func contents(of path: String) throws(TreeError) -> [UInt8] {
        func failure() -> TreeError { TreeError(file: path, line: 0, column: 0, reason: String(cString: strerror(errno))) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure() }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return out }
            if n < 0 {
                if errno == EINTR { continue }
                throw failure()
            }
            out += chunk[..<n]
        }
    }

    /// Parses and checks tree text: YAML, the shape above, known drivers, unique
    /// names and links, IDs some driver serves.
    public static func parse(_ text: String, file: String) throws(TreeError) -> TreeDescription {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw yamlError(e, text: text, file: file)
        } catch {
            throw TreeError(file: file, line: 1, column: 1, reason: "\(error)")
        }
        func fail(_ node: Node?, _ reason: String) -> TreeError {
            TreeError(file: file, line: node?.mark?.line ?? 1, column: node?.mark?.column ?? 1, reason: reason)
        }
        guard let root, case .mapping(let top) = root else { throw fail(root, "the tree must be a mapping with a `devices` list") }
        for (key, _) in top where !["devices", "classes", "hardware_filters"].contains(key.string ?? "") {
            throw fail(key, "unknown key `\(key.string ?? "?")` (expected `devices`, `classes` or `hardware_filters`)")
        }
        var filterMaps: [String: [String: ClassFilters]] = [:]
        for section in ["classes", "hardware_filters"] {
          var classes: [String: ClassFilters] = [:]
          if let c = top[section] {
            guard case .mapping(let cm) = c else { throw fail(c, "`\(section)` must map names to their filters") }
            for (k, v) in cm {
                guard case .scalar(let name) = k, case .mapping(let fm) = v else { throw fail(k, "each class maps to `upper_filters` / `lower_filters`") }
                var f = ClassFilters()
                for (fk, fv) in fm {
                    guard let which = fk.string, which == "upper_filters" || which == "lower_filters" else {
                        throw fail(fk, "unknown key `\(fk.string ?? "?")` in a class (expected upper_filters, lower_filters)")
                    }
                    guard case .sequence(let seq) = fv else { throw fail(fv, "`\(which)` must be a list of filter drivers") }
                    var names: [String] = []
                    for e in seq {
                        guard let n = e.string, let entry = DriverCatalog.named(n) else { throw fail(e, "unknown driver `\(e.string ?? "?")`") }
                        guard entry.role == .filter else { throw fail(e, "`\(n)` is a function driver, not a filter") }
                        guard !entry.testOnly else {
                            throw fail(e, "`\(n)` is for tests only: name it in a device's `upper_filters` or `lower_filters` (`\(section)` reach the devices a bus reports)")
                        }
                        names.append(n)
                    }
                    if which == "upper_filters" { f.upper = names } else { f.lower = names }
                }
                classes[name.string] = f
            }
          }
          filterMaps[section] = classes
        }
        guard let devicesNode = top["devices"] else { throw fail(root, "missing `devices`") }
        guard case .sequence(let list) = devicesNode else { throw fail(devicesNode, "`devices` must be a list") }
        var devices: [DeviceDescription] = []
        var names: [String: Node] = [:], links: [String: Node] = [:]
        var placed: [(DeviceDescription, name: Node?, link: Node?)] = []
        for item in list {
            guard case .mapping(let m) = item else { throw fail(item, "each device must be a mapping") }
            for (key, _) in m where !deviceKeys.contains(key.string ?? "") {
                throw fail(key, "unknown key `\(key.string ?? "?")` in a device (expected one of \(deviceKeys.sorted().joined(separator: ", ")))")
            }
            func string(_ key: String, required: Bool = false) throws(TreeError) -> String? {
                guard let n = m[key] else {
                    if required { throw fail(item, "a device needs `\(key)`") }
                    return nil
                }
                guard case .scalar(let s) = n else { throw fail(n, "`\(key)` must be a string") }
                return s.string
            }
            func strings(_ key: String) throws(TreeError) -> [String] {
                guard let n = m[key] else { return [] }
                guard case .sequence(let seq) = n else { throw fail(n, "`\(key)` must be a list of strings") }
                var out: [String] = []
                for e in seq {
                    guard case .scalar(let s) = e else { throw fail(e, "`\(key)` must be a list of strings") }
                    out.append(s.string)
                }
                return out
            }
            guard let name = try string("name", required: true) else { throw fail(item, "a device needs `name`") }
            if let problem = nameProblem(name) { throw fail(m["name"], "device name \(shown(name)) cannot be a file name under `.devices`: \(problem)") }
            if let first = names[name] {
                throw fail(m["name"], "duplicate device name \(shown(name)) (first at line \(first.mark?.line ?? 0))")
            }
            names[name] = m["name"]
            var d = DeviceDescription(name: name, hardwareIDs: try strings("hardware_ids"))
            d.compatibleIDs = try strings("compatible_ids")
            d.lowerFilters = try strings("lower_filters")
            d.upperFilters = try strings("upper_filters")
            d.link = try string("link")
            let link = d.link ?? name
            let linkNode = m["link"] ?? m["name"]
            if let problem = fileNameProblem(link) { throw fail(linkNode, "\(shown(link)) cannot be a file name under the mount: \(problem)") }
            if let first = links[link] {
                throw fail(linkNode, "duplicate file name \(shown(link)) (first at line \(first.mark?.line ?? 0))")
            }
            links[link] = linkNode
            var settingNodes: [(key: Node, value: Node)] = []
            if let s = m["settings"] {
                guard case .mapping(let sm) = s else { throw fail(s, "`settings` must be a mapping") }
                for (k, v) in sm {
                    guard case .scalar(let ks) = k, case .scalar(let vs) = v else { throw fail(k, "settings are names and scalar values") }
                    // The file name is `link`, checked above; a setting must not name another one.
                    guard ks.string.lowercased() != "symboliclinkname" else {
                        throw fail(k, "`\(ks.string)` is not a setting: a device's file name under the mount is its `link`")
                    }
                    d.settings[ks.string] = vs.string
                    settingNodes.append((k, v))
                }
            }
            if let isolation = try string("isolation") {
                guard isolation == "host" || isolation == "none" else {
                    throw fail(m["isolation"], "`isolation` must be `host` (the driver in a process of its own) or `none`, not `\(isolation)`")
                }
                d.isolatedInHost = isolation == "host"
            }
            switch (try string("driver_package"), try string("driver")) {
            case (let path?, let driver?):
                // Relative to the tree file's folder.
                let base = (file as NSString).deletingLastPathComponent
                let full = path.hasPrefix("/") || base.isEmpty ? path : base + "/" + path
                guard access(full, X_OK) == 0 else {
                    throw fail(m["driver_package"], "driver package \(shown(path)): \(String(cString: strerror(errno))) (the host executable its package builds)")
                }
                d.package = (full, driver)
                d.isolatedInHost = true
            case (nil, nil): break
            case (_?, nil): throw fail(m["driver_package"], "`driver_package` needs `driver`: the name of the package's driver")
            case (nil, _?): throw fail(m["driver"], "`driver` names a driver of a `driver_package`; without one the hardware IDs choose the driver")
            }
            if let modeText = try string("mode") {
                guard let mode = UInt32(modeText.hasPrefix("0o") ? String(modeText.dropFirst(2)) : modeText, radix: 8), mode <= 0o777 else {
                    throw fail(m["mode"], "`mode` must be octal permission bits like '0640', not `\(modeText)`")
                }
                d.mode = mode
            }
            for key in ["owner", "group"] {
                guard let text = try string(key) else { continue }
                guard let id = UInt32(text) ?? (key == "owner" ? userID(text) : groupID(text)) else {
                    throw fail(m[key], "unknown \(key == "owner" ? "user" : "group") `\(text)`")
                }
                if key == "owner" { d.owner = id } else { d.group = id }
            }
            for (key, filters) in [("lower_filters", d.lowerFilters), ("upper_filters", d.upperFilters)] {
                for f in filters {
                    guard let e = DriverCatalog.named(f) else { throw fail(m[key], "unknown driver `\(f)`") }
                    guard e.role == .filter else { throw fail(m[key], "`\(f)` is a function driver, not a filter") }
                }
            }
            if d.hardwareIDs.isEmpty && d.compatibleIDs.isEmpty { throw fail(item, "device `\(name)` needs `hardware_ids`") }
            if d.package != nil {  // its driver and its settings are the package's
                devices.append(d)
                placed.append((d, m["name"], linkNode))
                continue
            }
            guard let function = DriverCatalog.match(hardwareIDs: d.hardwareIDs, compatibleIDs: d.compatibleIDs) else {
                throw fail(m["hardware_ids"] ?? item,
                           "no driver serves \((d.hardwareIDs + d.compatibleIDs).joined(separator: ", ")) (served: \(DriverCatalog.all.flatMap(\.serves).joined(separator: ", ")))")
            }
            guard function.parents.contains(.root) else {
                throw fail(m["hardware_ids"] ?? m["compatible_ids"] ?? item,
                           "`\(function.name)` serves only \(function.parents.map(\.description).sorted().joined(separator: " and ")), not a device of the tree")
            }
            // Each setting is one some driver of the device's stack takes (its function
            // driver, its filters and its class's), with a value that driver takes.
            let cls = filterMaps["classes"]?[function.className] ?? ClassFilters()
            // An isolated device's settings may be the driver host's (HostTimeout) too.
            let filters = (d.lowerFilters + cls.lower + d.upperFilters + cls.upper + (d.isolatedInHost ? [HostProxy.name] : []))
                .compactMap(DriverCatalog.named)
            for (k, v) in settingNodes {
                if let problem = settingProblem(name: k.string ?? "", value: v.string ?? "", function: function, filters: filters) {
                    throw fail(problem.atValue ? v : k, problem.reason)
                }
            }
            devices.append(d)
            placed.append((d, m["name"], linkNode))
        }
        // A device of the tree may not take a name a bus in the tree gives its
        // children (a root `toaster1` beside the toaster bus's toaster1).
        let buses = DriverCatalog.buses(reachableFrom: devices.compactMap { DriverCatalog.match(hardwareIDs: $0.hardwareIDs, compatibleIDs: $0.compatibleIDs) })
        for (d, nameNode, linkNode) in placed {
            for bus in buses {
                guard let pattern = bus.childNames else { continue }
                if pattern.matches(d.name) {
                    throw fail(nameNode, "device name \(shown(d.name)) is one \(bus.name) gives the children it reports (\(pattern)); a device of the tree cannot take it")
                }
                if let link = d.link, pattern.matches(link) {
                    throw fail(linkNode, "file name \(shown(link)) is one \(bus.name) gives the children it reports (\(pattern)); a device of the tree cannot take it")
                }
            }
        }
        return TreeDescription(devices: devices, classes: filterMaps["classes"] ?? [:], hardwareFilters: filterMaps["hardware_filters"] ?? [:])
    }

    /// Why a device whose stack has `function` and `filters` cannot have the setting
    /// `name` with `value`, and whether the value (not the name) is wrong; nil when it can.
    static func settingProblem(name: String, value: String, function: DriverCatalog.Entry,
                               filters: [DriverCatalog.Entry]) -> (atValue: Bool, reason: String)? {
        let drivers = [function] + filters.filter { !$0.settings.isEmpty }
        let takers = drivers.filter { $0.settings.contains { $0.name == name } }
        guard !takers.isEmpty else {
            let known = drivers.flatMap(\.settings).map(\.name)
            let whose = function.driverName + (drivers.count > 1 ? " or its filters" : "")
            let hint = closest(to: name, among: known).map { "did you mean `\($0)`?" }
                ?? (known.isEmpty ? "it takes no settings" : "it takes " + known.map { "`\($0)`" }.joined(separator: ", "))
            return (false, "unknown setting \(shown(name)) for \(whose) (\(hint))")
        }
        for driver in takers {
            guard let setting = driver.settings.first(where: { $0.name == name }), let problem = setting.problem(with: value) else { continue }
            var reason = "setting `\(name)` of \(driver.driverName) \(problem), not \(shown(value))"
            if case .choice(let words) = setting.kind, let word = closest(to: value, among: words) { reason += " (did you mean `\(word)`?)" }
            return (true, reason)
        }
        return nil
    }

    /// The name among `names` closest to `name` (ignoring case), if it is close enough
    /// to be a misspelling of it: at most one edit in four characters (one at least).
    static func closest(to name: String, among names: [String]) -> String? {
        // Levenshtein: insertions, deletions and substitutions, a row at a time.
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var previous = Array(0...b.count)
            for (i, ca) in a.enumerated() {
                var current = [i + 1]
                for (j, cb) in b.enumerated() {
                    current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)))
                }
                previous = current
            }
            return previous[b.count]
        }
        let lowered = Array(name.lowercased())
        let ranked = names.map { (name: $0, distance: distance(lowered, Array($0.lowercased()))) }.min { $0.distance < $1.distance }
        guard let ranked, ranked.distance <= max(1, min(lowered.count, ranked.name.count) / 4) else { return nil }
        return ranked.name
    }

    static func yamlError(_ e: YamlError, text: String, file: String) -> TreeError {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return TreeError(file: file, line: mark.line, column: mark.column, reason: "not valid YAML: \(problem)")
        case .reader(let problem, _, _, _):
            return TreeError(file: file, line: 1, column: 1, reason: "not valid YAML: \(problem)")
        case .duplicatedKeysInMapping(let keys, let context):
            // Yams gives the first use of the key and the whole file as context: point at the second use.
            let key = keys.first ?? "?"
            let first = (line: context.mark.line, column: context.mark.column)
            guard let second = secondUse(of: key, firstAt: first, in: text) else {
                return TreeError(file: file, line: first.line, column: first.column, reason: "duplicate key \(shown(key))")
            }
            return TreeError(file: file, line: second.line, column: second.column,
                             reason: "duplicate key \(shown(key)) (first at line \(first.line))")
        default:
            return TreeError(file: file, line: 1, column: 1, reason: "not valid YAML: \(e)")
        }
    }

    /// Where a mapping's key is used the second time, given its first use: the first
    /// use is renamed and the text composed again, so the key is unique and the
    /// composer shows where it is.
    static func secondUse(of key: String, firstAt first: (line: Int, column: Int), in text: String) -> (line: Int, column: Int)? {
        let rename = "wdmfs-first-use-"
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0.unicodeScalars) }
        guard first.line >= 1, first.line <= lines.count, first.column >= 1, first.column <= lines[first.line - 1].count + 1 else { return nil }
        lines[first.line - 1].insert(contentsOf: rename.unicodeScalars, at: first.column - 1)
        let renamed = lines.map { String(String.UnicodeScalarView($0)) }.joined(separator: "\n")
        // Marks on the first use's line after it moved right by the rename.
        func unshift(_ m: Mark) -> (line: Int, column: Int) {
            (m.line, m.line == first.line && m.column > first.column ? m.column - rename.unicodeScalars.count : m.column)
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: renamed)
        } catch YamlError.duplicatedKeysInMapping(let keys, let context) where keys.first == key {
            // Used three times: the second use is now the first of two.
            let m = unshift(context.mark)
            return m.line > first.line || (m.line == first.line && m.column > first.column) ? m : nil
        } catch {
            return nil
        }
        // The mapping that holds the renamed key holds the second use.
        func find(_ node: Node) -> (line: Int, column: Int)? {
            switch node {
            case .mapping(let m):
                if m.keys.contains(where: { $0.string?.hasPrefix(rename) == true }),
                   let second = m.keys.first(where: { $0.string == key })?.mark {
                    return unshift(second)
                }
                for (k, v) in m { if let found = find(k) ?? find(v) { return found } }
                return nil
            case .sequence(let s):
                for e in s { if let found = find(e) { return found } }
                return nil
            case .scalar, .alias:
                return nil
            }
        }
        return root.flatMap(find)
    }

    /// The names the bridge shows beside the device files at the mount's root.
    public static let reservedFileNames: Set<String> = [".stats", ".power", ".devices", ".interfaces"]
    /// The longest file name Linux takes, in bytes (NAME_MAX); FUSE refuses a longer one.
    public static let nameMax = 255

    /// Why `name` cannot be a file name (a directory under `.devices`), or nil.
    static func nameProblem(_ name: String) -> String? {
        if name.isEmpty { return "it is empty" }
        if name == "." || name == ".." { return "`.` and `..` are the directory and its parent" }
        if name == ".control" { return "`.devices/.control` is the tree's own control file" }
        let bytes = name.utf8.count
        if bytes > nameMax { return "it is \(bytes) bytes long, and a file name has at most \(nameMax) (NAME_MAX)" }
        for u in name.unicodeScalars {
            switch u {
            case "\0": return "it contains a NUL"
            case "/": return "it contains `/`"
            case "\n": return "it contains a newline"
            case _ where u.value < 0x20 || u.value == 0x7F:
                return "it contains the control character " + String(format: "U+%04X", u.value)
            default: continue
            }
        }
        return nil
    }

    /// Why `name` cannot be a device's file name under the mount's root, or nil.
    static func fileNameProblem(_ name: String) -> String? {
        if reservedFileNames.contains(name) { return "the mount shows its own `\(name)` there" }
        return nameProblem(name)
    }

    /// A name for a message: in backticks, control characters escaped, a long one cut.
    static func shown(_ name: String) -> String {
        var out = ""
        for (i, u) in name.unicodeScalars.enumerated() {
            if i == 40 { out += "…"; break }
            switch u {
            case "\0": out += "\\0"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where u.value < 0x20 || u.value == 0x7F: out += "\\u{\(String(u.value, radix: 16))}"
            default: out.unicodeScalars.append(u)
            }
        }
        return "`" + out + "`"
    }

    static func userID(_ name: String) -> UInt32? { getpwnam(name).map { $0.pointee.pw_uid } }
    static func groupID(_ name: String) -> UInt32? { getgrnam(name).map { $0.pointee.gr_gid } }

    /// A catalog entry for the file's comment: its role, the IDs it serves and where.
    static func describe(_ e: DriverCatalog.Entry) -> String {
        var out = "#   \(e.name) (\(e.role.rawValue)\(e.testOnly ? ", tests only" : ""))"
        if !e.serves.isEmpty { out += ": " + e.serves.joined(separator: ", ") }
        if e.role == .function && e.parents != [.root] { out += "; for " + e.parents.map(\.description).sorted().joined(separator: " and ") }
        if let c = e.childNames { out += "; names its children \(c)" }
        // Its settings: name, type and range, default; then the help.
        for setting in e.settings {
            out += "\n#     setting \(setting)"
            for line in wrapped(setting.help, width: 80) { out += "\n#       " + line }
        }
        return out
    }

    /// `text` in lines of at most `width` characters (a longer word has a line of its own).
    static func wrapped(_ text: String, width: Int) -> [String] {
        var lines: [String] = [], line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        return line.isEmpty ? lines : lines + [line]
    }

    /// The tree as a file users can copy and edit.
    public static func text(of tree: TreeDescription) -> String {
        // Single-quoted scalars: a quote is written twice.
        func q(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }
        func list(_ a: [String]) -> String { "[" + a.map(q).joined(separator: ", ") + "]" }
        // A setting as it reads best: bare when it is a word or a number (`Size: 67108864`).
        func plain(_ s: String) -> String {
            let word = s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }
            return !s.isEmpty && word ? s : q(s)
        }
        var out = """
            # wdmfs device tree: `wdmfs mount MOUNTPOINT --tree THIS_FILE`.
            # Each device: name (unique), hardware_ids and compatible_ids (the PnP manager
            # picks the function driver that serves them, hardware IDs first, in order),
            # lower_filters / upper_filters (filter drivers, bottom first), link (the file
            # name under the mount; the name by default), settings (the device parameters
            # its drivers read: each one a setting of its function driver or of a filter
            # of its stack, listed below with its values), mode (octal), owner and group
            # (names or numbers).
            # Names and links are file names (at most 255 bytes, no `/`, NUL or control
            # characters, not .stats, .power, .devices or .interfaces) and no device takes
            # a name a bus of the tree gives its children. A bus's children get only the
            # drivers that serve that bus's children, never a driver for tests.
            # Drivers, the IDs they serve and the settings they take:
            \(DriverCatalog.all.map(describe).joined(separator: "\n"))
            devices:

            """
        for d in tree.devices {
            out += "  - name: \(q(d.name))\n"
            out += "    hardware_ids: \(list(d.hardwareIDs))\n"
            if !d.compatibleIDs.isEmpty { out += "    compatible_ids: \(list(d.compatibleIDs))\n" }
            if !d.lowerFilters.isEmpty { out += "    lower_filters: \(list(d.lowerFilters))\n" }
            if !d.upperFilters.isEmpty { out += "    upper_filters: \(list(d.upperFilters))\n" }
            if let link = d.link { out += "    link: \(q(link))\n" }
            if !d.settings.isEmpty {
                out += "    settings: {" + d.settings.sorted { $0.key < $1.key }.map { "\(plain($0.key)): \(plain($0.value))" }.joined(separator: ", ") + "}\n"
            }
            out += "    mode: '0" + String(d.mode, radix: 8) + "'\n"
            if let owner = d.owner { out += "    owner: \(owner)\n" }
            if let group = d.group { out += "    group: \(group)\n" }
        }
        // Filters per setup class and per hardware ID of the devices buses report.
        for (key, map) in [("classes", tree.classes), ("hardware_filters", tree.hardwareFilters)] where !map.isEmpty {
            out += "\(key):\n"
            for (name, f) in map.sorted(by: { $0.key < $1.key }) {
                let parts = (f.upper.isEmpty ? [] : ["upper_filters: \(list(f.upper))"]) + (f.lower.isEmpty ? [] : ["lower_filters: \(list(f.lower))"])
                out += "  \(q(name)): {\(parts.joined(separator: ", "))}\n"
            }
        }
        return out
    }
}

extension TreeDescription {
    /// Loads the drivers the tree needs and brings every device up through the
    /// PnP manager, in file order. A child a bus reports later gets the driver that
    /// serves its IDs only if that driver serves that bus's children (the catalog
    /// says which) and is not for tests; any other child stays without a driver
    /// (CM_PROB_FAILED_ADD).
    public func build(into io: IOManager) throws(NTStatus) {
        func driver(_ name: String) throws(NTStatus) -> DriverObject {
            if let d = io.loadedDrivers.first(where: { $0.name == "\\Driver\\" + name }) { return d }
            guard let e = DriverCatalog.named(name) else { throw NTStatus.noSuchDevice }
            return try io.loadDriver(name: e.name, entry: e.entry)
        }
        var functions: [DriverCatalog.Entry] = []
        for d in devices {
            if d.package != nil, let proxy = DriverCatalog.named(HostProxy.name) {
                functions.append(proxy)
                continue
            }
            guard let match = DriverCatalog.match(hardwareIDs: d.hardwareIDs, compatibleIDs: d.compatibleIDs),
                  match.parents.contains(.root)
            else { throw NTStatus.noSuchDevice }
            functions.append(match)
        }
        // The drivers the tree allows for the children its buses report.
        let allowed = Set(DriverCatalog.reachable(from: functions).filter { !$0.testOnly }.map(\.name))
        // Children that buses report later find their driver, and their class's filters, the same way.
        let classes = self.classes, hardwareFilters = self.hardwareFilters
        io.driverMatcher = { [unowned io] bus, hardwareIDs, compatibleIDs in
            guard let bus, let busEntry = DriverCatalog.entry(of: bus),
                  let e = DriverCatalog.matchChild(of: busEntry.name, hardwareIDs: hardwareIDs, compatibleIDs: compatibleIDs),
                  allowed.contains(e.name)
            else { return nil }
            let cls = classes[e.className] ?? ClassFilters()
            let dev = hardwareIDs.lazy.compactMap { hardwareFilters[$0] }.first ?? ClassFilters()
            // Bottom up: device lower, class lower, function, device upper, class upper.
            let lowerNames = dev.lower + cls.lower, upperNames = dev.upper + cls.upper
            // A filter for tests only never stacks on a bus's child.
            let filters = (lowerNames + upperNames).map(DriverCatalog.named)
            guard filters.allSatisfy({ $0.map { $0.role == .filter && !$0.testOnly } ?? false }) else { return nil }
            func load(_ name: String) -> DriverObject? {
                if let d = io.loadedDrivers.first(where: { $0.name == "\\Driver\\" + name }) { return d }
                guard let c = DriverCatalog.named(name) else { return nil }
                return try? io.loadDriver(name: c.name, entry: c.entry)
            }
            guard let function = load(e.name) else { return nil }
            let lower = lowerNames.compactMap(load), upper = upperNames.compactMap(load)
            guard lower.count == lowerNames.count, upper.count == upperNames.count else { return nil }
            return (lower, function, upper)
        }
        // One action of the PnP manager for the whole tree: it is published once.
        let built: Result<Void, NTStatus> = io.changeTree {
            do throws(NTStatus) {
                for (d, match) in zip(devices, functions) {
                    var parameters = d.settings
                    // The file name is the link (the name by default), never a setting's.
                    parameters["SymbolicLinkName"] = d.link ?? d.name
                    // Isolated: the daemon's function driver is the host's proxy, which
                    // runs the real one in a driver host.
                    if d.isolatedInHost { parameters["HostDriver"] = d.package?.driver ?? match.name }
                    if let package = d.package { parameters["HostExecutable"] = package.executable }
                    let function = try driver(d.isolatedInHost ? HostProxy.name : match.name)
                    var lower: [DriverObject] = [], upper: [DriverObject] = []
                    // Bottom up: lower device filters, lower class filters, the function
                    // driver, upper device filters, upper class filters.
                    let cls = classes[match.className] ?? ClassFilters()
                    for f in d.lowerFilters + cls.lower { lower.append(try driver(f)) }
                    for f in d.upperFilters + cls.upper { upper.append(try driver(f)) }
                    try io.addRootDevice(
                        instanceName: d.name, hardwareIDs: d.hardwareIDs, compatibleIDs: d.compatibleIDs, parameters: parameters,
                        functionDriver: function, lowerFilters: lower, upperFilters: upper)
                }
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try built.get()
    }

    /// Mode, owner and group per file name under the mount.
    public var permissions: [String: (mode: UInt32, owner: UInt32?, group: UInt32?)] {
        var out: [String: (mode: UInt32, owner: UInt32?, group: UInt32?)] = [:]
        for d in devices { out[d.link ?? d.name] = (d.mode, d.owner, d.group) }
        return out
    }
}
