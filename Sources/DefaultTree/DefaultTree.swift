// DefaultTree: the devices `wdmfs mount` shows when no configuration is given.
// The tool mounts it; the driver tests build it in-process, smaller.

import EchoDriver
import MisbehaveDriver
import PassThroughFilter
import RamDiskDriver
import WDM

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

    /// The default tree as a description: null, zero, ramdisk0 (a RAM disk under a
    /// pass-through filter), echo, ioctl-demo, toaster-bus (no toasters plugged in; mode 0600,
    /// the others 0666; toasters get the sample's filter as their class upper filter); `test` adds misbehave and lazy-null, `bench` adds zero-stacked.
    public static func description(_ options: Options = Options()) -> TreeDescription {
        var devices = [
            DeviceDescription(name: "null", hardwareIDs: ["Root\\Null"]),
            DeviceDescription(name: "zero", hardwareIDs: ["Root\\Zero"]),
            DeviceDescription(name: "ramdisk0", hardwareIDs: ["Root\\RamDisk"], upperFilters: [PassThroughFilter.name],
                              settings: ["Size": String(options.ramdiskSize), "Buffering": "direct"]),
            DeviceDescription(name: "echo", hardwareIDs: ["Root\\Echo"], settings: ["BufferSize": String(options.echoBufferSize)]),
            DeviceDescription(name: "ioctl-demo", hardwareIDs: ["Root\\IoctlDemo"]),
            // Whoever opens the bus makes the PnP manager load drivers: root only, as the
            // sample's bus is for administrators only.
            DeviceDescription(name: "toaster-bus", hardwareIDs: ["Root\\ToasterBus"], mode: 0o600),
        ]
        if options.test {
            devices.append(DeviceDescription(name: "misbehave", hardwareIDs: ["Root\\Misbehave"]))
            devices.append(DeviceDescription(name: "lazy-null", hardwareIDs: ["Root\\Null"], upperFilters: [LazyFilter.name]))
            // Defective samples the verifier catches: PnP (removal) and cancel.
            devices.append(DeviceDescription(name: "forgetful", hardwareIDs: [ForgetfulRemove.hardwareID]))
            devices.append(DeviceDescription(name: "cancel-left", hardwareIDs: ["Root\\Zero"], upperFilters: [CancelLeftSet.name]))
            devices.append(DeviceDescription(name: "forgets-pending", hardwareIDs: ["Root\\Zero"], upperFilters: [PendingForgotten.name]))
            devices.append(DeviceDescription(name: "swallows-power", hardwareIDs: ["Root\\Zero"], upperFilters: [PowerSwallower.name]))
            devices.append(DeviceDescription(name: "keeps-remove-lock", hardwareIDs: [RemoveLockKept.hardwareID]))
        }
        if options.bench {
            devices.append(DeviceDescription(name: "zero-stacked", hardwareIDs: ["Root\\Zero"],
                                             upperFilters: [PassThroughFilter.name, PassThroughFilter.name]))
        }
        // The toaster sample's filter as the Toaster class's upper filter: each toaster's
        // `.devices/.../filter.log` shows the PnP and power IRPs that went down its stack.
        return TreeDescription(devices: devices, classes: ["Toaster": ClassFilters(upper: ["ClassUpperFilter"])])
    }

    /// Loads the drivers and builds the default tree (see `description`).
    public static func build(into io: IOManager, options: Options = Options()) throws(NTStatus) {
        try description(options).build(into: io)
    }
}
