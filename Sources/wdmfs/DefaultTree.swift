// DefaultTree: the devices `wdmfs mount` shows when no configuration is given.

import EchoDriver
import IoctlDemoDriver
import NullDriver
import PassThroughFilter
import RamDiskDriver
import WDM
import ZeroDriver

enum DefaultTree {
    /// Loads the drivers and builds one stack per device:
    /// null, zero, ramdisk0 (RAM disk under a pass-through filter), echo, ioctl-demo;
    /// the bench tree adds zero-stacked (zero under two pass-through filters).
    static func build(into io: IOManager, bench: Bool = false) throws(NTStatus) {
        let null = try io.loadDriver(name: NullDriver.name, entry: NullDriver.driverEntry)
        let zero = try io.loadDriver(name: ZeroDriver.name, entry: ZeroDriver.driverEntry)
        let ramdisk = try io.loadDriver(name: RamDiskDriver.name, entry: RamDiskDriver.driverEntry)
        let filter = try io.loadDriver(name: PassThroughFilter.name, entry: PassThroughFilter.driverEntry)
        let echo = try io.loadDriver(name: EchoDriver.name, entry: EchoDriver.driverEntry)
        let demo = try io.loadDriver(name: IoctlDemoDriver.name, entry: IoctlDemoDriver.driverEntry)

        try io.addRootDevice(instanceName: "null", hardwareIDs: ["Root\\Null"], functionDriver: null)
        try io.addRootDevice(instanceName: "zero", hardwareIDs: ["Root\\Zero"], functionDriver: zero)
        try io.addRootDevice(
            instanceName: "ramdisk0", hardwareIDs: ["Root\\RamDisk"],
            parameters: ["Size": String(RamDiskDriver.defaultSize), "Buffering": "direct"],
            functionDriver: ramdisk, upperFilters: [filter])
        try io.addRootDevice(instanceName: "echo", hardwareIDs: ["Root\\Echo"], functionDriver: echo)
        try io.addRootDevice(instanceName: "ioctl-demo", hardwareIDs: ["Root\\IoctlDemo"], functionDriver: demo)
        if bench {
            // What each layer costs: the zero device under two pass-through filters.
            try io.addRootDevice(
                instanceName: "zero-stacked", hardwareIDs: ["Root\\Zero"], functionDriver: zero, upperFilters: [filter, filter])
        }
    }
}
