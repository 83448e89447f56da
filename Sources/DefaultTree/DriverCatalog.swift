// DriverCatalog: the drivers wdmfs ships, with what an INF would say of each:
// its name, whether it is a function driver or a filter, the hardware or
// compatible IDs it serves, and where those devices are: root devices of the
// tree, or the children of one bus, and the settings it takes (its device
// parameters, each with its type, range, default and help). The PnP manager's
// match uses it; the tree file's check checks each device's settings by it.

import EchoDriver
import FaultFilters
import HostFileDriver
import IoctlDemoDriver
import MisbehaveDriver
import NullDriver
import PassThroughFilter
import RamDiskDriver
import ToasterDrivers
import ToasterFxDrivers
import ToasterPublic
import WDM
import WDMHost
import ZeroDriver

public enum DriverCatalog {
    public enum Role: String, Sendable { case function, filter }

    /// Where a function driver's devices are.
    public enum Parent: Hashable, Sendable, CustomStringConvertible {
        /// A device of the tree (a root-enumerated device).
        case root
        /// A child the named bus driver reports (`ToasterBus`).
        case bus(String)

        public var description: String {
            switch self {
            case .root: "root devices"
            case .bus(let b): "the devices \(b) reports"
            }
        }
    }

    /// The names a bus gives the children it reports: a prefix and a number
    /// (the toaster bus names its children `toaster1`, `toaster2`, ...). No device
    /// of a tree with that bus may take one.
    public struct ChildNames: Sendable, Equatable, CustomStringConvertible {
        public let prefix: String
        public init(prefix: String) { self.prefix = prefix }

        /// The prefix followed by one or more ASCII digits.
        public func matches(_ name: String) -> Bool {
            guard name.hasPrefix(prefix) else { return false }
            let rest = name.unicodeScalars.dropFirst(prefix.unicodeScalars.count)
            return !rest.isEmpty && rest.allSatisfy { ("0"..."9").contains($0) }
        }

        public var description: String { prefix + "<N>" }
    }

    public struct Entry: Sendable {
        public let name: String
        public let role: Role
        /// The IDs it serves (an INF's models section); empty for filters.
        public let serves: [String]
        public let entry: DriverEntry
        /// The device setup class its devices belong to (an INF's Class=); class filters apply by it.
        public var className = "System"
        /// Where the devices it serves are (function drivers): a child a bus reports
        /// matches it only if it serves that bus's children.
        public var parents: Set<Parent> = [.root]
        /// For a bus driver: the names of the children it reports.
        public var childNames: ChildNames? = nil
        /// A driver that breaks the rules on purpose, for tests: a tree may name it
        /// on its own devices (the `test` tree does), a bus's child never matches it.
        public var testOnly = false
        /// The settings (device parameters) it reads, as the driver declares them.
        public var settings: [DriverSetting] = []

        init(name: String, role: Role, serves: [String], entry: @escaping DriverEntry, className: String = "System",
             parents: Set<Parent> = [.root], childNames: ChildNames? = nil, testOnly: Bool = false, settings: [DriverSetting] = []) {
            self.name = name
            self.role = role
            self.serves = serves
            self.entry = entry
            self.className = className
            self.parents = parents
            self.childNames = childNames
            self.testOnly = testOnly
            self.settings = settings
        }

        /// `\Driver\RamDisk`: the driver object's name, as messages show it.
        public var driverName: String { "\\Driver\\" + name }

        /// Whether a child that `bus` (a bus driver's name) reports may have this driver.
        public func servesChildren(of bus: String) -> Bool { !testOnly && parents.contains(.bus(bus)) }
    }

    public static let all: [Entry] = [
        Entry(name: NullDriver.name, role: .function, serves: ["Root\\Null"], entry: NullDriver.driverEntry),
        Entry(name: ZeroDriver.name, role: .function, serves: ["Root\\Zero"], entry: ZeroDriver.driverEntry),
        Entry(name: RamDiskDriver.name, role: .function, serves: ["Root\\RamDisk", "GenDisk"], entry: RamDiskDriver.driverEntry,
              settings: RamDiskDriver.settings),
        Entry(name: EchoDriver.name, role: .function, serves: ["Root\\Echo"], entry: EchoDriver.driverEntry, settings: EchoDriver.settings),
        Entry(name: IoctlDemoDriver.name, role: .function, serves: ["Root\\IoctlDemo"], entry: IoctlDemoDriver.driverEntry),
        Entry(name: MisbehaveDriver.name, role: .function, serves: ["Root\\Misbehave"], entry: MisbehaveDriver.driverEntry, testOnly: true,
              settings: MisbehaveDriver.settings),
        // The bus reports each child as `toaster` + its serial (its instance ID, hence its file name).
        Entry(name: ToasterBus.name, role: .function, serves: [ToasterBus.hardwareID], entry: ToasterBus.driverEntry,
              childNames: ChildNames(prefix: "toaster")),
        Entry(name: ToasterDriver.name, role: .function, serves: [ToasterBus.toasterHardwareID, ToasterBus.toasterCompatibleID],
              entry: ToasterDriver.driverEntry, className: "Toaster", parents: [.bus(ToasterBus.name)]),
        // The toaster on the framework (WDF): for toasters plugged in with its hardware ID.
        Entry(name: ToasterFx.name, role: .function, serves: [ToasterFx.hardwareID],
              entry: ToasterFx.driverEntry, className: "Toaster", parents: [.bus(ToasterBus.name)]),
        Entry(name: HostFileDriver.name, role: .function, serves: ["Root\\HostFile"], entry: HostFileDriver.driverEntry,
              settings: HostFileDriver.settings),
        // The daemon's side of a device whose driver runs in a driver host (`isolation: host`): serves no ID.
        Entry(name: HostProxy.name, role: .function, serves: [], entry: HostProxy.driverEntry, settings: HostProxy.settings),
        Entry(name: PassThroughFilter.name, role: .filter, serves: [], entry: PassThroughFilter.driverEntry),
        // The fault-injection filters: in a tree file's filters, or attached live (`wdmfs attach`).
        Entry(name: ErrorFilter.name, role: .filter, serves: [], entry: ErrorFilter.driverEntry, settings: ErrorFilter.settings),
        Entry(name: DelayFilter.name, role: .filter, serves: [], entry: DelayFilter.driverEntry, settings: DelayFilter.settings),
        Entry(name: RateFilter.name, role: .filter, serves: [], entry: RateFilter.driverEntry, settings: RateFilter.settings),
        Entry(name: CorruptFilter.name, role: .filter, serves: [], entry: CorruptFilter.driverEntry, settings: CorruptFilter.settings),
        Entry(name: LazyFilter.name, role: .filter, serves: [], entry: LazyFilter.driverEntry, testOnly: true),
        Entry(name: ForgetfulRemove.name, role: .function, serves: [ForgetfulRemove.hardwareID], entry: ForgetfulRemove.driverEntry, testOnly: true),
        Entry(name: CancelLeftSet.name, role: .filter, serves: [], entry: CancelLeftSet.driverEntry, testOnly: true),
        Entry(name: PendingForgotten.name, role: .filter, serves: [], entry: PendingForgotten.driverEntry, testOnly: true),
        Entry(name: PowerSwallower.name, role: .filter, serves: [], entry: PowerSwallower.driverEntry, testOnly: true),
        Entry(name: RemoveLockKept.name, role: .function, serves: [RemoveLockKept.hardwareID], entry: RemoveLockKept.driverEntry, testOnly: true),
    ] + ToasterFilter.positions.map { Entry(name: $0, role: .filter, serves: [], entry: ToasterFilter.driverEntry(position: $0)) }
      + ToasterFxFilter.positions.map { Entry(name: "Fx" + $0, role: .filter, serves: [], entry: ToasterFxFilter.driverEntry(position: $0)) }

    public static func named(_ name: String) -> Entry? { all.first { $0.name == name } }

    /// The catalog entry of a loaded driver (`\Driver\ToasterBus`).
    public static func entry(of driver: DriverObject) -> Entry? {
        let prefix = "\\Driver\\"
        guard driver.name.hasPrefix(prefix) else { return nil }
        return named(String(driver.name.dropFirst(prefix.count)))
    }

    /// The best function driver for a device: the first hardware ID any driver
    /// serves, then the first compatible ID (in order), as the PnP manager ranks them.
    public static func match(hardwareIDs: [String], compatibleIDs: [String]) -> Entry? {
        for id in hardwareIDs + compatibleIDs {
            // IDs compare without regard to case, as Windows compares them.
            if let e = all.first(where: { $0.role == .function && $0.serves.contains { $0.lowercased() == id.lowercased() } }) {
                return e
            }
        }
        return nil
    }

    /// The function driver for a child `bus` (a bus driver's name) reported: the best
    /// match for its IDs, if that driver serves the children of that bus and is not
    /// for tests only; nil otherwise (the child stays without a driver, as a device
    /// whose best driver refuses it does: a hardware ID of a root device's driver
    /// or of another bus does not fall back to a compatible ID).
    public static func matchChild(of bus: String, hardwareIDs: [String], compatibleIDs: [String]) -> Entry? {
        guard let e = match(hardwareIDs: hardwareIDs, compatibleIDs: compatibleIDs), e.servesChildren(of: bus) else { return nil }
        return e
    }

    /// The function drivers a tree whose own devices have `drivers` may load: those,
    /// then the drivers that serve the children of a bus among them, and so on.
    /// Test-only drivers come in only as a device of the tree.
    public static func reachable(from drivers: [Entry]) -> [Entry] {
        var names = Set(drivers.map(\.name))
        var out = drivers.filter { e in names.remove(e.name) != nil }  // in order, once each
        var i = 0
        while i < out.count {
            let bus = out[i].name
            for e in all where e.role == .function && e.servesChildren(of: bus) && !out.contains(where: { $0.name == e.name }) {
                out.append(e)
            }
            i += 1
        }
        return out
    }

    /// The buses (drivers that name their children) a tree with these function drivers has.
    public static func buses(reachableFrom drivers: [Entry]) -> [Entry] {
        reachable(from: drivers).filter { $0.childNames != nil }
    }
}
