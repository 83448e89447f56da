// DriverSetting: one value a driver reads from its device node's parameters
// (what a driver reads from its device's Parameters registry key, and what an
// INF's AddReg would document): its name, its type, its default and one line of
// help. A driver declares the settings it takes next to its DriverEntry and
// reads each one through its declaration, so the default and the range live in
// one place; a host (the tree file's check) checks a device's settings against
// the declarations before any driver sees them.

/// A setting a driver takes from its device node's parameters.
public struct DriverSetting: Sendable, Equatable, CustomStringConvertible {
    /// What values a setting takes.
    public enum Kind: Sendable, Equatable {
        /// A decimal integer in `range` that is a multiple of `multipleOf`;
        /// `bytes` says it counts bytes (its limits are shown in KiB, MiB, GiB too).
        case integer(ClosedRange<Int>, multipleOf: Int, bytes: Bool)
        /// One of these words, exactly.
        case choice([String])
        /// Any text of at most `maxLength` characters.
        case string(maxLength: Int)
        /// `true` or `false`.
        case boolean
        /// Text the driver's own check accepts; what it accepts, in words.
        case checked(String)
    }

    /// The parameter's name (`Size`). Names compare exactly.
    public let name: String
    public let kind: Kind
    /// The value when the parameter is absent, as the text a parameter would hold.
    public let defaultValue: String
    /// One line: what it does, and why its limits are what they are.
    public let help: String
    /// A `checked` setting's check: why a text is not one of its values, or nil.
    let check: (@Sendable (String) -> String?)?

    public static func == (a: DriverSetting, b: DriverSetting) -> Bool {
        a.name == b.name && a.kind == b.kind && a.defaultValue == b.defaultValue && a.help == b.help
    }

    init(name: String, kind: Kind, defaultValue: String, help: String, check: (@Sendable (String) -> String?)? = nil) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.help = help
        self.check = check
        assert(problem(with: defaultValue) == nil, "the default of \(name) is not one of its values")
    }

    /// An integer setting from `range`, a multiple of `multipleOf`.
    public static func integer(_ name: String, _ range: ClosedRange<Int>, multipleOf: Int = 1, bytes: Bool = false,
                               default value: Int, help: String) -> DriverSetting {
        DriverSetting(name: name, kind: .integer(range, multipleOf: max(multipleOf, 1), bytes: bytes), defaultValue: String(value), help: help)
    }

    /// A setting that is one of `words`.
    public static func choice(_ name: String, _ words: [String], default value: String, help: String) -> DriverSetting {
        DriverSetting(name: name, kind: .choice(words), defaultValue: value, help: help)
    }

    /// A text setting.
    public static func string(_ name: String, maxLength: Int = 255, default value: String, help: String) -> DriverSetting {
        DriverSetting(name: name, kind: .string(maxLength: maxLength), defaultValue: value, help: help)
    }

    /// A text setting whose values `check` accepts (it returns why a text is not
    /// one, or nil); `values` says what it accepts, for the listing.
    public static func checked(_ name: String, values: String, default value: String, help: String,
                               check: @escaping @Sendable (String) -> String?) -> DriverSetting {
        DriverSetting(name: name, kind: .checked(values), defaultValue: value, help: help, check: check)
    }

    /// A `true` / `false` setting.
    public static func boolean(_ name: String, default value: Bool, help: String) -> DriverSetting {
        DriverSetting(name: name, kind: .boolean, defaultValue: value ? "true" : "false", help: help)
    }

    // MARK: - Checking a value

    /// Why `text` is not a value of this setting (`must be an integer from 512 to
    /// 17179869184 (16 GiB)`), or nil when it is one.
    public func problem(with text: String) -> String? {
        switch kind {
        case .integer(let range, let step, _):
            guard let v = Self.decimal(text) else { return "must be an integer \(rangeText)" }
            guard range.contains(v) else { return "must be \(rangeText)" }
            guard v % step == 0 else { return "must be a multiple of \(step)" }
            return nil
        case .choice(let words):
            return words.contains(text) ? nil : "must be one of \(words.joined(separator: ", "))"
        case .string(let maxLength):
            return text.count <= maxLength ? nil : "must be at most \(maxLength) characters long"
        case .boolean:
            return text == "true" || text == "false" ? nil : "must be true or false"
        case .checked:
            return check?(text)
        }
    }

    /// A decimal integer, with an optional sign; nil for anything else (or one that overflows).
    static func decimal(_ text: String) -> Int? {
        let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        return Int(text)
    }

    // MARK: - Reading it (for the driver)

    /// The setting's text among a device node's parameters: the default when it is absent;
    /// STATUS_INVALID_PARAMETER when it is not one of its values (a host other than the
    /// tree file, which checks them first, may pass anything).
    public func text(in parameters: [String: String]) throws(NTStatus) -> String {
        let text = parameters[name] ?? defaultValue
        guard problem(with: text) == nil else { throw NTStatus.invalidParameter }
        return text
    }

    /// An integer setting's value (see `text(in:)`).
    public func integer(in parameters: [String: String]) throws(NTStatus) -> Int {
        guard case .integer = kind, let v = Self.decimal(try text(in: parameters)) else { throw NTStatus.invalidParameter }
        return v
    }

    /// A boolean setting's value (see `text(in:)`).
    public func boolean(in parameters: [String: String]) throws(NTStatus) -> Bool {
        guard case .boolean = kind else { throw NTStatus.invalidParameter }
        return try text(in: parameters) == "true"
    }

    // MARK: - Describing it

    /// `from 512 to 17179869184 (16 GiB)`, for an integer setting.
    var rangeText: String {
        guard case .integer(let range, _, let bytes) = kind else { return "" }
        func shown(_ v: Int) -> String { bytes ? Self.bytesText(v) : String(v) }
        return "from \(shown(range.lowerBound)) to \(shown(range.upperBound))"
    }

    /// What values it takes: `integer from 512 to 17179869184 (16 GiB), a multiple of 512`.
    public var typeText: String {
        switch kind {
        case .integer(_, let step, _): "integer \(rangeText)" + (step > 1 ? ", a multiple of \(step)" : "")
        case .choice(let words): "one of " + words.joined(separator: ", ")
        case .string(let maxLength): "text of at most \(maxLength) characters"
        case .boolean: "true or false"
        case .checked(let values): values
        }
    }

    /// The default as shown: bytes also in KiB, MiB or GiB.
    public var defaultText: String {
        if case .integer(_, _, true) = kind, let v = Self.decimal(defaultValue) { return Self.bytesText(v) }
        return defaultValue
    }

    /// `Size: integer from 512 to 17179869184 (16 GiB), a multiple of 512; default 67108864 (64 MiB)`.
    public var description: String { "\(name): \(typeText); default \(defaultText)" }

    /// A byte count, with its exact KiB, MiB or GiB when it has one: `67108864 (64 MiB)`.
    static func bytesText(_ v: Int) -> String {
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where v >= 1 << shift && v % (1 << shift) == 0 {
            return "\(v) (\(v >> shift) \(unit))"
        }
        return String(v)
    }
}
