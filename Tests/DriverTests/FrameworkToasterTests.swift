// The toaster function driver and the toaster filter on the framework (WDF)
// pass the behaviour tests of their WDM versions: each test runs on both. A
// toaster plugged in with ToasterFx's hardware ID gets the framework driver,
// one with the sample's gets the WDM one; the filters are named by position
// (DevUpperFilter) or with Fx in front (FxDevUpperFilter).

import DefaultTree
import Foundation
import Synchronization
import Testing
import ToasterDrivers
import ToasterFxDrivers
import ToasterPublic
import WDF
import WDM
import WDMTesting

/// Which toaster function driver a test plugs in, and which filters it names.
enum ToasterFlavour: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case wdm, framework
    var hardwareID: String { self == .wdm ? ToasterBus.toasterHardwareID : ToasterFx.hardwareID }
    var driverName: String { self == .wdm ? "\\Driver\\Toaster" : "\\Driver\\ToasterFx" }
    var filterPrefix: String { self == .wdm ? "" : "Fx" }
    var testDescription: String { rawValue }
}

/// A tree with the toaster bus (and `filters`, a tree file's text), the bus open.
final class FlavouredRig: @unchecked Sendable {
    let io = IOManager()
    let host: EmbeddedHost
    let bus: FileObject
    let flavour: ToasterFlavour

    init(_ flavour: ToasterFlavour, tree: String? = nil) throws {
        self.flavour = flavour
        if let tree {
            try TreeFile.parse(tree, file: "t.yaml").build(into: io)
        } else {
            try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        }
        host = EmbeddedHost(io)
        bus = try host.open("toaster-bus", access: .readData)
    }

    func plug(_ serial: UInt32) {
        let r = host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: serial, hardwareIDs: [flavour.hardwareID]))
        #expect(r.status == .success)
        io.waitForPnP()
    }

    func unplug(_ serial: UInt32) {
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: serial)).status == .success)
        io.waitForPnP()
    }

    var busNode: DeviceNode { io.deviceNodes.first { $0.instanceName == "toaster-bus" }! }
    func node(_ name: String) -> DeviceNode? { io.allDeviceNodes.first { $0.instanceName == name && $0.state == .started } }
}

@Suite struct FrameworkToasterTests {
    @Test(arguments: ToasterFlavour.allCases)
    func aToasterToastsAndItsReaderWaitsForBread(_ flavour: ToasterFlavour) throws {
        let rig = try FlavouredRig(flavour)
        rig.plug(1)
        #expect(rig.io.loadedDrivers.contains { $0.name == flavour.driverName && !$0.deviceObjects.isEmpty })
        let t = try rig.host.open("toaster1")
        let waiting = rig.host.beginRead(t, count: 100)  // no bread yet
        #expect(waiting.pended && !waiting.wait(seconds: 0.1))
        #expect(rig.host.write(t, [1]).status == .success)
        #expect(waiting.wait())
        #expect(String(decoding: waiting.data, as: UTF8.self) == "toaster1: 1 slices toasted\n")
        _ = rig.host.write(t, [1, 2])
        #expect(String(decoding: rig.host.read(t, count: 100).data, as: UTF8.self) == "toaster1: 2 slices toasted\n")
        #expect(rig.host.read(t, count: 100, offset: 1000).status == .endOfFile)
        #expect(rig.host.flush(t) == .success)  // fsync: both toasters answer it, and it toasts nothing
        #expect(String(decoding: rig.host.read(t, count: 100).data, as: UTF8.self) == "toaster1: 2 slices toasted\n")
        rig.host.close(t)
        // A waiting read of a handle that closes is cancelled at CLEANUP.
        rig.unplug(1)
        rig.plug(4)
        let t2 = try rig.host.open("toaster4")
        let left = rig.host.beginRead(t2, count: 10)
        #expect(left.pended && !left.wait(seconds: 0.05))
        rig.host.close(t2)
        #expect(left.wait() && left.status == .cancelled)
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    @Test(arguments: ToasterFlavour.allCases)
    func aReaderWaitingForBreadGetsNoSuchDeviceWhenTheToasterIsUnplugged(_ flavour: ToasterFlavour) throws {
        let rig = try FlavouredRig(flavour)
        rig.plug(2)
        let node = try #require(rig.node("toaster2"))
        let t = try rig.host.open("toaster2")
        let waiting = rig.host.beginRead(t, count: 100)
        #expect(waiting.pended && !waiting.wait(seconds: 0.1))
        rig.unplug(2)
        #expect(waiting.wait())
        #expect(waiting.status == .noSuchDevice)
        #expect(node.state == .surpriseRemoved)
        #expect(rig.host.read(t, count: 10).status == .noSuchDevice)  // new I/O fails too
        #expect(throws: NTStatus.noSuchDevice) { try rig.host.open("toaster2") }
        rig.host.close(t)
        rig.io.waitForPnP()
        #expect(node.state == .removed)
        #expect(rig.busNode.children.isEmpty)
        let driver = try #require(rig.io.loadedDrivers.first { $0.name == flavour.driverName })
        #expect(driver.deviceObjects.isEmpty)
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    @Test(arguments: ToasterFlavour.allCases)
    func anOpenHandleVetoesRemovalAndTheToasterKeepsServing(_ flavour: ToasterFlavour) throws {
        let rig = try FlavouredRig(flavour)
        rig.plug(1)
        rig.plug(2)
        let t = try rig.host.open("toaster2")
        for result in [rig.io.remove(rig.busNode), rig.io.disable(rig.node("toaster2")!)] {
            #expect(result.vetoType == .outstandingOpen && result.vetoingNode == "toaster2", "\(result)")
        }
        #expect(rig.host.write(t, [1]).status == .success)
        #expect(rig.host.read(t, count: 64).status == .success)
        #expect(rig.busNode.children.allSatisfy { $0.state == .started })
        rig.host.close(t)
        #expect(rig.io.disable(rig.node("toaster2")!).isSuccess)
        rig.host.close(rig.bus)
        #expect(rig.io.remove(rig.busNode).isSuccess)
        #expect(rig.io.loadedDrivers.first { $0.name == flavour.driverName }?.deviceObjects.isEmpty == true)
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    @Test(arguments: ToasterFlavour.allCases)
    func ioThatArrivesWhileTheToasterSleepsWaitsForD0AndCanBeCancelled(_ flavour: ToasterFlavour) throws {
        let rig = try FlavouredRig(flavour)
        rig.plug(3)
        let t = try rig.host.open("toaster3")
        let fdo = try #require(rig.io.allDeviceNodes.first { $0.instanceName == "toaster3" }?.pdo?.attachedDevice)
        #expect(rig.io.setSystemPower(.sleeping3) == .success)
        #expect(fdo.powerState == .d3)
        let write = rig.host.beginWrite(t, [1])
        #expect(write.pended && !write.wait(seconds: 0.2))  // waits while the toaster is in D3
        let given = rig.host.beginWrite(t, [1])
        #expect(given.cancel())
        #expect(given.wait() && given.status == .cancelled)
        #expect(rig.io.setSystemPower(.working) == .success)
        #expect(write.wait() && write.status == .success)
        #expect(fdo.powerState == .d0)
        #expect(String(decoding: rig.host.read(t, count: 100).data, as: UTF8.self) == "toaster3: 1 slices toasted\n")
        rig.host.close(t)
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    @Test(arguments: ToasterFlavour.allCases)
    func theFilterInSixPositionsLogsThePnPAndPowerOrder(_ flavour: ToasterFlavour) throws {
        let p = flavour.filterPrefix
        let rig = try FlavouredRig(flavour, tree: """
            classes:
              Toaster: {upper_filters: [\(p)ClassUpperFilter], lower_filters: [\(p)ClassLowerFilter]}
            hardware_filters:
              '\(flavour.hardwareID)': {upper_filters: [\(p)DevUpperFilter], lower_filters: [\(p)DevLowerFilter]}
            devices:
              - name: toaster-bus
                hardware_ids: ['Root\\ToasterBus']
                upper_filters: [\(p)BusUpperFilter]
                lower_filters: [\(p)BusLowerFilter]
            """)
        rig.plug(1)
        let toaster = try #require(rig.busNode.children.first)
        #expect(rig.busNode.log.filter { $0.hasSuffix("IRP_MN_START_DEVICE") } == ["BusUpperFilter IRP_MN_START_DEVICE", "BusLowerFilter IRP_MN_START_DEVICE"])
        #expect(toaster.log.filter { $0.hasSuffix("IRP_MN_START_DEVICE") } == [
            "ClassUpperFilter IRP_MN_START_DEVICE", "DevUpperFilter IRP_MN_START_DEVICE",
            "ClassLowerFilter IRP_MN_START_DEVICE", "DevLowerFilter IRP_MN_START_DEVICE",
        ])
        #expect(toaster.pdo?.topOfStack.driverObject.name == "\\Driver\\\(p)ClassUpperFilter")
        // I/O goes through the four filters to the function driver and back.
        let t = try rig.host.open("toaster1")
        #expect(rig.host.write(t, [1]).status == .success)
        #expect(String(decoding: rig.host.read(t, count: 100).data, as: UTF8.self) == "toaster1: 1 slices toasted\n")
        rig.host.close(t)
        rig.io.setSystemPower(.sleeping3)
        #expect(toaster.log.contains("ClassUpperFilter IRP_MN_SET_POWER system S3"))
        #expect(toaster.log.contains("DevLowerFilter IRP_MN_SET_POWER device D3"))
        rig.io.setSystemPower(.working)
        rig.unplug(1)
        #expect(toaster.log.filter { $0.hasPrefix("ClassUpperFilter IRP_MN") }.suffix(2) == ["ClassUpperFilter IRP_MN_SURPRISE_REMOVAL", "ClassUpperFilter IRP_MN_REMOVE_DEVICE"])
        #expect(rig.io.loadedDrivers.filter { $0.name.hasPrefix("\\Driver\\\(p)") && $0.name.hasSuffix("Filter") }.allSatisfy { d in
            d.name.contains("Bus") || d.deviceObjects.isEmpty
        })
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    /// Source lines that are not blank and not comments.
    static func codeLines(_ relative: String) throws -> Int {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent(relative), encoding: .utf8)
        return text.split(separator: "\n").filter { line in
            let t = line.trimmingCharacters(in: .whitespaces)
            return !t.isEmpty && !t.hasPrefix("//")
        }.count
    }

    @Test func theFrameworkToasterIsAtMost40LinesAndItsFilterAtMost20() throws {
        let toaster = try Self.codeLines("Drivers/ToasterFx/ToasterFx.swift")
        let filter = try Self.codeLines("Drivers/ToasterFx/ToasterFxFilter.swift")
        #expect(toaster <= 40, "ToasterFx.swift: \(toaster) lines of code")
        #expect(filter <= 20, "ToasterFxFilter.swift: \(filter) lines of code")
        // The WDM versions, for the record (the teaching ones stay).
        #expect(try Self.codeLines("Drivers/Toaster/Function/ToasterDriver.swift") > toaster)
    }

    /// The default tree's drivers that are shorter on the framework are on it:
    /// every device of their stacks is a framework device. Echo keeps its ring and
    /// readiness routine on WDM (docs/framework.md says why).
    @Test func theDefaultTreesDriversThatAreShorterOnTheFrameworkAreOnIt() throws {
        let (io, _) = try defaultTree()
        for name in ["null", "zero", "ramdisk0", "ioctl-demo", "echo"] {
            let pdo = try #require(io.allDeviceNodes.first { $0.instanceName == name }?.pdo, "\(name)")
            var above: [DeviceObject] = []
            var d = pdo.attachedDevice
            while let device = d { above.append(device); d = device.attachedDevice }
            let framework = above.map { ($0.driverObject.name, $0.deviceExtension is AnyDevice) }
            let expected = name == "echo" ? false : true
            #expect(framework.first { $0.0.hasSuffix("PassThroughFilter") }?.1 != false, "\(name): \(framework)")
            #expect(framework.last { !$0.0.hasSuffix("PassThroughFilter") }?.1 == expected, "\(name): \(framework)")
        }
        for (driver, wdm, fx) in [("Null/NullDriver", 20, 12), ("Zero/ZeroDriver", 24, 14), ("IoctlDemo/IoctlDemoDriver", 136, 84),
                                  ("RamDisk/RamDiskDriver", 91, 64), ("PassThroughFilter/PassThroughFilter", 32, 25)] {
            // The counts docs/framework.md gives (their WDM versions are in git history).
            #expect(try Self.codeLines("Drivers/\(driver).swift") <= fx, "\(driver): more than the \(fx) lines the docs say (\(wdm) on WDM)")
        }
    }
}
