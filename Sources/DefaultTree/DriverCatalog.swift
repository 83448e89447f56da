// DriverCatalog: the drivers wdmfs ships, with what an INF would say of each:
// its name, whether it is a function driver or a filter, and the hardware or
// compatible IDs it serves. The PnP manager's match uses it.

import EchoDriver
import IoctlDemoDriver
import MisbehaveDriver
import NullDriver
import PassThroughFilter
import RamDiskDriver
import ToasterDrivers
import WDM
import ZeroDriver

public enum DriverCatalog {
    public enum Role: String, Sendable { case function, filter }

    public struct Entry: Sendable {
        public let name: String
        public let role: Role
        /// The IDs it serves (an INF's models section); empty for filters.
        public let serves: [String]
        public let entry: DriverEntry
        /// The device setup class its devices belong to (an INF's Class=); class filters apply by it.
        public var className = "System"
    }

    public static let all: [Entry] = [
        Entry(name: NullDriver.name, role: .function, serves: ["Root\\Null"], entry: NullDriver.driverEntry),
        Entry(name: ZeroDriver.name, role: .function, serves: ["Root\\Zero"], entry: ZeroDriver.driverEntry),
        Entry(name: RamDiskDriver.name, role: .function, serves: ["Root\\RamDisk", "GenDisk"], entry: RamDiskDriver.driverEntry),
        Entry(name: EchoDriver.name, role: .function, serves: ["Root\\Echo"], entry: EchoDriver.driverEntry),
        Entry(name: IoctlDemoDriver.name, role: .function, serves: ["Root\\IoctlDemo"], entry: IoctlDemoDriver.driverEntry),
        Entry(name: MisbehaveDriver.name, role: .function, serves: ["Root\\Misbehave"], entry: MisbehaveDriver.driverEntry),
        Entry(name: ToasterBus.name, role: .function, serves: [ToasterBus.hardwareID], entry: ToasterBus.driverEntry),
        Entry(name: ToasterDriver.name, role: .function, serves: [ToasterBus.toasterHardwareID, ToasterBus.toasterCompatibleID],
              entry: ToasterDriver.driverEntry, className: "Toaster"),
        Entry(name: PassThroughFilter.name, role: .filter, serves: [], entry: PassThroughFilter.driverEntry),
        Entry(name: LazyFilter.name, role: .filter, serves: [], entry: LazyFilter.driverEntry),
    ] + ToasterFilter.positions.map { Entry(name: $0, role: .filter, serves: [], entry: ToasterFilter.driverEntry(position: $0)) }

    public static func named(_ name: String) -> Entry? { all.first { $0.name == name } }

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
}

