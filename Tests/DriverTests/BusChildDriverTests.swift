// Who may make the PnP manager load a driver: a child a bus reports gets only a
// driver that serves that bus's children (the catalog says which) and that the
// mounted tree allows; never a driver for tests, a root device's driver or
// another bus. The toaster bus, which takes such requests, is root's only.

import DefaultTree
import Testing
import ToasterDrivers
import ToasterPublic
import WDM
import WDMTesting

@Suite struct BusChildDriverTests {
    func tree(_ options: DefaultTree.Options = .init(ramdiskSize: 1 << 20)) throws -> (IOManager, EmbeddedHost, FileObject) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: options)
        let host = EmbeddedHost(io)
        return (io, host, try host.open("toaster-bus", access: .readData))
    }

    /// Plugs in a child with these hardware IDs and returns its node.
    func plug(_ io: IOManager, _ host: EmbeddedHost, _ bus: FileObject, serial: UInt32, ids: [String]) throws -> DeviceNode {
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: serial, hardwareIDs: ids)).status == .success)
        io.waitForPnP()
        let busNode = try #require(io.deviceNodes.first { $0.instanceName == "toaster-bus" })
        return try #require(busNode.children.first { $0.instanceName == "toaster\(serial)" })
    }

    @Test(arguments: [
        ["Root\\Misbehave"],  // the driver that breaks the rules on purpose
        ["root\\misbehave"],  // IDs compare without regard to case
        ["Root\\RamDisk"],  // 64 MiB per serial by default
        ["GenDisk"],  // RamDisk again, by its compatible ID
        ["Root\\ToasterBus"],  // another bus, and another in it...
        ["Root\\Null", ToasterBus.toasterHardwareID],  // the best match is a root device's driver: no fall back
    ])
    func aChildNamingADriverThatDoesNotServeTheBusGetsNone(ids: [String]) throws {
        let (io, host, bus) = try tree()
        let drivers = io.loadedDrivers.map(\.name)
        let links = io.symbolicLinks
        let ramdisks = io.loadedDrivers.first { $0.name == "\\Driver\\RamDisk" }?.deviceObjects.count
        let node = try plug(io, host, bus, serial: 1, ids: ids)
        #expect(node.problem == .failedAdd, "\(ids): \(String(describing: node.problem)) \(node.state)")
        #expect(node.drivers == nil)
        #expect(io.symbolicLinks == links)  // no new device file
        #expect(!io.loadedDrivers.contains { $0.name == "\\Driver\\Misbehave" })
        #expect(io.loadedDrivers.map(\.name) == drivers)  // nothing loaded, not even Toaster
        #expect(io.loadedDrivers.first { $0.name == "\\Driver\\RamDisk" }?.deviceObjects.count == ramdisks)
        #expect(io.loadedDrivers.first { $0.name == "\\Driver\\ToasterBus" }?.deviceObjects.count == 2)  // the bus FDO and this PDO
        // A real toaster still works beside it, and the driverless child unplugs.
        let toaster = try plug(io, host, bus, serial: 2, ids: [ToasterBus.toasterHardwareID])
        #expect(toaster.state == .started && toaster.problem == nil)
        #expect(io.symbolicLinks.contains("toaster2"))
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 0)).status == .success)
        io.waitForPnP()
        #expect(!io.symbolicLinks.contains("toaster2"))
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aToasterMatchesByItsHardwareIDOrItsCompatibleID() throws {
        let (io, host, bus) = try tree()
        #expect(try plug(io, host, bus, serial: 1, ids: [ToasterBus.toasterHardwareID]).drivers?.function.name == "\\Driver\\Toaster")
        #expect(try plug(io, host, bus, serial: 2, ids: [ToasterBus.toasterCompatibleID]).drivers?.function.name == "\\Driver\\Toaster")
        // The bus gives every child the toaster compatible ID: an ID no driver serves falls back to it.
        #expect(try plug(io, host, bus, serial: 3, ids: ["Vendor\\Unknown"]).drivers?.function.name == "\\Driver\\Toaster")
        #expect(["toaster1", "toaster2", "toaster3"].allSatisfy(io.symbolicLinks.contains))
    }

    @Test func evenTheTestTreeNeverGivesABusChildATestDriver() throws {
        // The test tree has misbehave and lazy-null as devices of its own (Misbehave is loaded);
        // a child naming Misbehave still gets nothing.
        let (io, host, bus) = try tree(.init(ramdiskSize: 1 << 20, test: true))
        #expect(io.loadedDrivers.contains { $0.name == "\\Driver\\Misbehave" })
        let misbehaving = io.loadedDrivers.first { $0.name == "\\Driver\\Misbehave" }?.deviceObjects.count
        let node = try plug(io, host, bus, serial: 3, ids: ["Root\\Misbehave"])
        #expect(node.problem == .failedAdd)
        #expect(io.loadedDrivers.first { $0.name == "\\Driver\\Misbehave" }?.deviceObjects.count == misbehaving)
    }

    @Test func aTestFilterInADescriptionBuiltInCodeNeverStacksOnABusChild() throws {
        // A tree file cannot name one in `hardware_filters` or `classes`; a description built in code is refused at the child.
        let tree = TreeDescription(devices: [DeviceDescription(name: "toaster-bus", hardwareIDs: [ToasterBus.hardwareID])],
                                   hardwareFilters: [ToasterBus.toasterHardwareID: ClassFilters(upper: ["LazyFilter"])])
        let io = IOManager()
        try tree.build(into: io)
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(try plug(io, host, bus, serial: 1, ids: [ToasterBus.toasterHardwareID]).problem == .failedAdd)
        #expect(!io.loadedDrivers.contains { $0.name == "\\Driver\\LazyFilter" })
    }

    @Test func theMatcherAnswersOnlyForABusOfTheTree() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let matcher = try #require(io.driverMatcher)
        let ramdisk = try #require(io.loadedDrivers.first { $0.name == "\\Driver\\RamDisk" })
        let toasterBus = try #require(io.loadedDrivers.first { $0.name == "\\Driver\\ToasterBus" })
        let ids = [ToasterBus.toasterHardwareID], compatible = [ToasterBus.toasterCompatibleID]
        #expect(matcher(nil, ids, compatible) == nil)  // no bus
        #expect(matcher(ramdisk, ids, compatible) == nil)  // not a bus whose children Toaster serves
        #expect(matcher(toasterBus, ids, compatible)?.function.name == "\\Driver\\Toaster")
        #expect(matcher(toasterBus, ["Root\\Echo"], compatible) == nil)
        // The catalog says so.
        #expect(DriverCatalog.matchChild(of: "ToasterBus", hardwareIDs: ["Root\\Misbehave"], compatibleIDs: compatible) == nil)
        #expect(DriverCatalog.matchChild(of: "ToasterBus", hardwareIDs: ["X"], compatibleIDs: compatible)?.name == "Toaster")
        #expect(DriverCatalog.all.filter(\.testOnly).map(\.name).sorted() == ["CancelLeftSet", "ForgetfulRemove", "LazyFilter", "Misbehave", "PendingForgotten", "PowerSwallower", "RemoveLockKept"])
        #expect(DriverCatalog.all.filter { $0.role == .function && $0.parents != [.root] }.map(\.name) == ["Toaster", "ToasterFx"])
    }

    @Test func theDefaultBusIsRootsOnlyAndTheOtherFilesStayOpenToAll() {
        let p = DefaultTree.description().permissions
        #expect(p["toaster-bus"]?.mode == 0o600)
        for name in ["null", "zero", "ramdisk0", "echo", "ioctl-demo"] { #expect(p[name]?.mode == 0o666, "\(name)") }
        #expect(TreeFile.text(of: DefaultTree.description()).contains("  - name: 'toaster-bus'\n    hardware_ids: ['Root\\ToasterBus']\n    mode: '0600'\n"))
    }
}
