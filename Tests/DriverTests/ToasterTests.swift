// The toaster bus: plugging in makes a device node, a stack and a file appear;
// unplugging surprise-removes it (open handles get STATUS_DELETE_PENDING) and
// REMOVE_DEVICE follows when the last handle closes; bad requests fail as the
// WDM sample fails them.

import DefaultTree
import Foundation
import Testing
import ToasterDrivers
import ToasterPublic
import WDM
import WDMTesting

func plugInBuffer(serial: UInt32, ids: [String] = [ToasterBus.toasterHardwareID], size: UInt32 = 8) -> [UInt8] {
    ToasterBus.plugInRequest(serial: serial, hardwareIDs: ids, size: size)
}

func unplugBuffer(serial: UInt32) -> [UInt8] { ToasterBus.unplugRequest(serial: serial) }

@Suite struct ToasterTests {
    func tree() throws -> (IOManager, EmbeddedHost, FileObject) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let host = EmbeddedHost(io)
        return (io, host, try host.open("toaster-bus", access: .readData))
    }

    @Test func plugginInAToasterMakesItsDeviceAndUnpluggingRemovesIt() throws {
        let (io, host, bus) = try tree()
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 1)).status == .success)
        io.waitForPnP()
        #expect(io.symbolicLinks.contains("toaster1"))
        let node = try #require(io.deviceNodes.first { $0.instanceName == "toaster-bus" }?.children.first)
        #expect(node.state == .started && node.hardwareIDs == [ToasterBus.toasterHardwareID])
        let t = try host.open("toaster1")
        _ = host.write(t, [1])
        #expect(String(decoding: host.read(t, count: 100).data, as: UTF8.self) == "toaster1: 1 slices toasted\n")
        // Unplugged while open: new I/O fails, and the stack waits for the handle to close.
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 1)).status == .success)
        io.waitForPnP()
        #expect(node.state == .surpriseRemoved)
        #expect(host.read(t, count: 10).status == .noSuchDevice)
        #expect(!io.symbolicLinks.contains("toaster1") || node.state == .surpriseRemoved)
        host.close(t)
        io.waitForPnP()
        #expect(node.state == .removed)
        #expect(!io.symbolicLinks.contains("toaster1"))
        #expect(throws: NTStatus.noSuchDevice) { try host.open("toaster1") }
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aReaderWaitingForBreadGetsNoSuchDeviceWhenTheToasterIsUnplugged() throws {
        let (io, host, bus) = try tree()
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 2)).status == .success)
        io.waitForPnP()
        let t = try host.open("toaster2")
        let waiting = host.beginRead(t, count: 100)  // no bread yet: it waits
        #expect(waiting.pended)
        #expect(!waiting.wait(seconds: 0.1))
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 2)).status == .success)
        io.waitForPnP()
        #expect(waiting.wait())
        #expect(waiting.status == .noSuchDevice)  // ENODEV to a FUSE reader
        #expect(throws: NTStatus.noSuchDevice) { try host.open("toaster2") }  // a later open fails
        host.close(t)
        io.waitForPnP()
        #expect(io.deviceNodes.first { $0.instanceName == "toaster-bus" }?.children.isEmpty == true)
    }

    @Test func theSamplesBadRequestsFailAsItFailsThem() throws {
        let (io, host, bus) = try tree()
        // Unplugging with no children: STATUS_NO_SUCH_DEVICE (the WDM sample).
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 0)).status == .noSuchDevice)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 5)).status == .success)
        io.waitForPnP()
        // A serial in use, a bad Size, a malformed multi-string, an unknown serial.
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 5)).status == .invalidParameter)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 6, size: 12)).status == .invalidParameter)
        var bad = plugInBuffer(serial: 7)
        bad.removeLast(2)  // not double-NUL terminated
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: bad).status == .invalidParameter)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 9)).status == .invalidParameter)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: Array(unplugBuffer(serial: 5).prefix(12))).status == .invalidParameter)
        // The bus is exclusive.
        #expect(throws: NTStatus.accessDenied) { try host.open("toaster-bus", access: .readData) }
        // Serial 0 unplugs every toaster; a surprise-removed serial may be plugged in again.
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 0)).status == .success)
        io.waitForPnP()
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 5)).status == .success)
        io.waitForPnP()
        #expect(io.symbolicLinks.contains("toaster5"))
    }

    @Test func aThousandToastersPlugAndUnplugWithNothingLeft() throws {
        let (io, host, bus) = try tree()
        let drivers = io.loadedDrivers.count
        for i in 1...1000 {
            #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: UInt32(i))).status == .success)
            io.waitForPnP()
            let t = try host.open("toaster\(i)")
            _ = host.write(t, [1])
            _ = host.read(t, count: 10)
            host.close(t)
            #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: UInt32(i))).status == .success)
            io.waitForPnP()
        }
        let busNode = try #require(io.deviceNodes.first { $0.instanceName == "toaster-bus" })
        #expect(busNode.children.isEmpty)
        #expect(!io.symbolicLinks.contains { $0.hasPrefix("toaster") && $0 != "toaster-bus" })
        let toaster = try #require(io.loadedDrivers.first { $0.name == "\\Driver\\Toaster" })
        #expect(toaster.deviceObjects.isEmpty)
        #expect(io.loadedDrivers.first { $0.name == "\\Driver\\ToasterBus" }?.deviceObjects.count == 1)  // the bus FDO only
        #expect(io.loadedDrivers.count == drivers + 2)  // Toaster and its class filter, loaded once each
    }
}

@Suite struct ToasterFilterTests {
    @Test func oneFilterSourceInSixPositionsLogsThePnPOrder() throws {
        let tree = try TreeFile.parse("""
            classes:
              Toaster: {upper_filters: [ClassUpperFilter], lower_filters: [ClassLowerFilter]}
            hardware_filters:
              '{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster': {upper_filters: [DevUpperFilter], lower_filters: [DevLowerFilter]}
            devices:
              - name: toaster-bus
                hardware_ids: ['Root\\ToasterBus']
                upper_filters: [BusUpperFilter]
                lower_filters: [BusLowerFilter]
            """, file: "t.yaml")
        let io = IOManager()
        try tree.build(into: io)
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 1)).status == .success)
        io.waitForPnP()
        let busNode = try #require(io.deviceNodes.first { $0.instanceName == "toaster-bus" })
        let toaster = try #require(busNode.children.first)
        // The bus's own stack: its filters saw START, top first.
        #expect(busNode.log.filter { $0.hasSuffix("IRP_MN_START_DEVICE") } == ["BusUpperFilter IRP_MN_START_DEVICE", "BusLowerFilter IRP_MN_START_DEVICE"])
        // The toaster's stack, bottom up: device lower, class lower, FDO, device upper, class upper.
        #expect(toaster.log.filter { $0.hasSuffix("IRP_MN_START_DEVICE") } == [
            "ClassUpperFilter IRP_MN_START_DEVICE", "DevUpperFilter IRP_MN_START_DEVICE",
            "ClassLowerFilter IRP_MN_START_DEVICE", "DevLowerFilter IRP_MN_START_DEVICE",
        ])
        #expect(toaster.pdo?.topOfStack.driverObject.name == "\\Driver\\ClassUpperFilter")
        io.setSystemPower(.sleeping3)
        #expect(toaster.log.contains("ClassUpperFilter IRP_MN_SET_POWER system S3"))
        #expect(toaster.log.contains("DevLowerFilter IRP_MN_SET_POWER device D3"))
        io.setSystemPower(.working)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 1)).status == .success)
        io.waitForPnP()
        #expect(toaster.log.filter { $0.hasPrefix("ClassUpperFilter IRP_MN") }.suffix(2) == ["ClassUpperFilter IRP_MN_SURPRISE_REMOVAL", "ClassUpperFilter IRP_MN_REMOVE_DEVICE"])
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }
}

@Suite struct DeviceInterfaceTests {
    @Test func aToastersInterfaceIsEnabledAtStartAndDisabledWhenItGoes() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(io.enabledInterfaces(classGUID: ToasterBus.interfaceClass).map(\.instance) == ["toaster-bus"])
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 4)).status == .success)
        io.waitForPnP()
        let toasters = io.enabledInterfaces(classGUID: ToasterBus.toasterInterfaceClass)
        #expect(toasters.map(\.instance) == ["toaster4"])
        #expect(io.link(forInstance: "toaster4") == "toaster4")
        // Enabling an enabled interface: STATUS_OBJECT_NAME_EXISTS, as on Windows.
        #expect(io.setDeviceInterfaceState(toasters[0].name, enabled: true) == .objectNameExists)
        #expect(io.setDeviceInterfaceState("nonsense", enabled: true) == .objectNameNotFound)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: unplugBuffer(serial: 4)).status == .success)
        io.waitForPnP()
        #expect(io.enabledInterfaces(classGUID: ToasterBus.toasterInterfaceClass).isEmpty)
    }
}
