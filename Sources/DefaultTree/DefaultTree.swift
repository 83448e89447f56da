// DefaultTree: the devices `wdmfs mount` shows when no configuration is given.
// The tool mounts it; the driver tests build it in-process, smaller.

import EchoDriver
import IoctlDemoDriver
import MisbehaveDriver
import NullDriver
import PassThroughFilter
import RamDiskDriver
import WDM
import ZeroDriver

public enum DefaultTree {
    public struct Options: Sendable {
        /// ramdisk0's length in bytes.
        public var ramdiskSize = RamDiskDriver.defaultSize
        /// echo's buffer in bytes.
        public var echoBufferSize = EchoDriver.defaultBufferSize
        /// Adds zero-stacked: zero under two pass-through filters (for benchmarks).
        public var bench = false
        /// Adds `misbehave` (a driver that breaks the rules on purpose) and `lazy-null`
        /// (null under a filter that copies nothing from below), for tests.
        public var test = false

        public init(ramdiskSize: Int = RamDiskDriver.defaultSize, echoBufferSize: Int = EchoDriver.defaultBufferSize, bench: Bool = false, test: Bool = false) {
            self.ramdiskSize = ramdiskSize
            self.echoBufferSize = echoBufferSize
            self.bench = bench
            self.test = test
        }
    }

    /// Loads the drivers and builds one stack per device: null, zero, ramdisk0
    /// (a RAM disk under a pass-through filter), echo, ioctl-demo.
    public static func build(into io: IOManager, options: Options = Options()) throws(NTStatus) {
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
            parameters: ["Size": String(options.ramdiskSize), "Buffering": "direct"],
            functionDriver: ramdisk, upperFilters: [filter])
        try io.addRootDevice(
            instanceName: "echo", hardwareIDs: ["Root\\Echo"],
            parameters: ["BufferSize": String(options.echoBufferSize)], functionDriver: echo)
        try io.addRootDevice(instanceName: "ioctl-demo", hardwareIDs: ["Root\\IoctlDemo"], functionDriver: demo)
        if options.test {
            let misbehave = try io.loadDriver(name: MisbehaveDriver.name, entry: MisbehaveDriver.driverEntry)
            let lazy = try io.loadDriver(name: LazyFilter.name, entry: LazyFilter.driverEntry)
            try io.addRootDevice(instanceName: "misbehave", hardwareIDs: ["Root\\Misbehave"], functionDriver: misbehave)
            try io.addRootDevice(instanceName: "lazy-null", hardwareIDs: ["Root\\Null"], functionDriver: null, upperFilters: [lazy])
        }
        if options.bench {
            try io.addRootDevice(
                instanceName: "zero-stacked", hardwareIDs: ["Root\\Zero"], functionDriver: zero, upperFilters: [filter, filter])
        }
    }
}
