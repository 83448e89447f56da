// Power: the system goes to sleep children first and wakes parents first; each
// stack's policy owner maps S to D from its capabilities; I/O that arrives in
// D3 waits and completes once the device is back in D0 (or is cancelled).

import DefaultTree
import Foundation
import Synchronization
import Testing
import ToasterDrivers
import ToasterPublic
import WDM
import WDMTesting

@Suite struct PowerTests {
    /// toaster-bus -> a second bus plugged into it (serial 2) -> a toaster plugged into that (serial 3).
    func threeLevels() throws -> (IOManager, EmbeddedHost) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        // No tree gives a bus's child another bus (ToasterBus serves root devices only):
        // this test nests one to see three levels, so it matches that child itself.
        let treeMatcher = io.driverMatcher
        io.driverMatcher = { [unowned io] bus, hardwareIDs, compatibleIDs in
            if hardwareIDs == [ToasterBus.hardwareID], let b = io.loadedDrivers.first(where: { $0.name == "\\Driver\\ToasterBus" }) {
                return ([], b, [])
            }
            return treeMatcher?(bus, hardwareIDs, compatibleIDs)
        }
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: plugInBuffer(serial: 2, ids: [ToasterBus.hardwareID])).status == .success)
        io.waitForPnP()
        let inner = try host.open("toaster2", access: .readData)  // the inner bus's FDO
        #expect(host.deviceIoControl(inner, ToasterBus.plugIn, input: plugInBuffer(serial: 3)).status == .success)
        io.waitForPnP()
        #expect(io.symbolicLinks.contains("toaster3"))
        return (io, host)
    }

    @Test func sleepGoesChildrenFirstAndWakeParentsFirst() throws {
        let (io, _) = try threeLevels()
        let order = Recorder()
        io.powerLog = { order.add($0) }
        #expect(io.setSystemPower(.sleeping3) == .success)
        let asleep = order.all.filter { $0.hasPrefix("toaster") }
        #expect(asleep == ["toaster3 S3 D3", "toaster2 S3 D3", "toaster-bus S3 D3"])
        #expect(io.systemPowerState == .sleeping3)
        io.powerLog = nil
        let woken = Recorder()
        io.powerLog = { woken.add($0) }
        #expect(io.setSystemPower(.working) == .success)
        #expect(woken.all.filter { $0.hasPrefix("toaster") } == ["toaster-bus S0 D0", "toaster2 S0 D0", "toaster3 S0 D0"])
    }

    @Test func ioThatArrivesInD3WaitsAndCompletesAfterD0() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let host = EmbeddedHost(io)
        let zero = try host.open("zero")
        io.setSystemPower(.sleeping3)
        let read = host.beginRead(zero, count: 8)
        #expect(read.pended)
        #expect(!read.wait(seconds: 0.2))  // waits while the device is in D3
        let cancelled = host.beginRead(zero, count: 8)
        cancelled.cancel()  // a caller that gives up is let go
        #expect(cancelled.wait())
        #expect(cancelled.status == .cancelled)
        io.setSystemPower(.working)
        #expect(read.wait())
        #expect(read.status == .success && read.data == [UInt8](repeating: 0, count: 8))
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func theDeviceStateFollowsTheCapabilitiesMapping() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let fdo = try #require(io.device(forLink: "ramdisk0"))
        #expect(fdo.powerState == .d0)
        io.setSystemPower(.hibernate)
        #expect(fdo.powerState == .d3)
        io.setSystemPower(.working)
        #expect(fdo.powerState == .d0)
    }

    @Test func aDriverCanSayItsIOFailsWhileNotInD0() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let host = EmbeddedHost(io)
        let zero = try host.open("zero")
        try #require(io.device(forLink: "zero")).failsIOWhenNotInD0 = true
        io.setSystemPower(.sleeping3)
        #expect(host.read(zero, count: 4).status == .deviceNotReady)  // EAGAIN to a FUSE caller
        io.setSystemPower(.working)
        #expect(host.read(zero, count: 4).status == .success)
    }
}
