// Driver Verifier's stress options, each seeded: forced pending finds the
// completion routine that does not propagate the pending mark (0x228), which a
// normal run misses; low resources makes allocations fail, and a driver's
// error path run; IRP logging keeps each device's last N IRPs; a user IRP not
// completed within the deadline is reported and can still be cancelled.

import DefaultTree
import Foundation
import Testing
import ToasterDrivers
import ToasterPublic
import WDM
import WDMTesting

/// A tree of `devices`, built (Verifier's scope is `all` in process).
func stressTree(_ devices: [DeviceDescription]) throws -> (io: IOManager, host: EmbeddedHost) {
    let io = IOManager()
    try TreeDescription(devices: devices).build(into: io)
    return (io, EmbeddedHost(io))
}

func stress(_ text: String) -> Verifier.Stress {
    guard case .success(let s) = Verifier.Stress.parse(text) else { fatalError("bad stress \(text)") }
    return s
}

@Suite struct StressTests {
    @Test func forcedPendingFindsTheCompletionRoutineThatDoesNotPropagateThePendingMark() throws {
        let (io, host) = try stressTree([
            DeviceDescription(name: "bad", hardwareIDs: ["Root\\Zero"], upperFilters: ["PendingForgotten"]),
            DeviceDescription(name: "good", hardwareIDs: ["Root\\Zero"], upperFilters: ["CorruptFilter", "ErrorFilter"],
                              settings: ["CorruptRate": "0", "ErrorRate": "0"]),
        ])
        let bad = try host.open("bad"), good = try host.open("good")
        // A normal run: zero completes at once, the bug does not show.
        for _ in 0..<20 { #expect(host.read(bad, count: 512).status == .success) }
        #expect(io.verifier.violations.isEmpty)
        io.verifier.stress = stress("pending=1")
        let r = host.read(bad, count: 512)
        #expect(r.status == .success && r.data == [UInt8](repeating: 0, count: 512))
        #expect(waitUntil { io.verifier.violations.contains { $0.rule == .pendingNotPropagated } })
        let v = io.verifier.violations.first { $0.rule == .pendingNotPropagated }
        #expect(v?.rule.windowsCode == "0xC9/0x228")
        #expect(v?.driver == "\\Driver\\PendingForgotten")
        // Drivers that propagate it are clean under the same stress, and their data is right.
        let before = io.verifier.count
        for _ in 0..<20 { #expect(host.read(good, count: 512).data == [UInt8](repeating: 0, count: 512)) }
        #expect(io.verifier.count == before, "\(io.verifier.violations.suffix(2))")
        #expect(io.statistics.irpsPended >= 20)
    }

    @Test func forcedPendingPendsTheSameCallsForTheSameSeed() throws {
        let (io, host) = try stressTree([DeviceDescription(name: "z", hardwareIDs: ["Root\\Zero"], upperFilters: ["ErrorFilter"], settings: ["ErrorRate": "0"])])
        let z = try host.open("z")
        func pattern(_ seed: Int) -> [Bool] {
            io.verifier.stress = stress("pending=0.5,seed=\(seed)")
            return (0..<40).map { _ in
                let before = io.statistics.irpsPended
                _ = host.read(z, count: 16)
                return io.statistics.irpsPended > before
            }
        }
        let a = pattern(3), b = pattern(3), c = pattern(4)
        #expect(a == b)
        #expect(a != c)
        #expect((8...32).contains(a.filter { $0 }.count))
    }

    @Test func lowResourcesFailsAllocationsAndADriversErrorPathRuns() throws {
        let (io, host) = try stressTree([DeviceDescription(name: "disk", hardwareIDs: ["Root\\RamDisk"], settings: ["Size": "65536"])])
        let disk = try host.open("disk")
        io.verifier.stress = stress("low-resources=0.5,seed=9")
        let a = (0..<40).map { _ in host.read(disk, count: 512).status }
        io.verifier.stress = stress("low-resources=0.5,seed=9")
        let b = (0..<40).map { _ in host.read(disk, count: 512).status }
        #expect(a == b)
        #expect(Set(a) == [.success, .insufficientResources])
        _ = host.close(disk)
        // The RAM disk's AddDevice cannot allocate its storage: it fails, and the node says so.
        io.verifier.stress = stress("low-resources=1")
        let node = io.deviceNodes[0]
        #expect(!io.restart(node).isSuccess)
        #expect(io.deviceNodes[0].problem == .failedAdd)
        io.verifier.stress = stress("none")
        let again = io.restart(io.deviceNodes[0])
        #expect(again.isSuccess, "\(again)")
        #expect(try host.read(host.open("disk"), count: 8).status == .success)
    }

    @Test func theIRPLogKeepsEachDevicesLastIRPs() throws {
        let (io, host) = try stressTree([DeviceDescription(name: "disk", hardwareIDs: ["Root\\RamDisk"], settings: ["Size": "65536"])])
        let disk = try host.open("disk")
        io.verifier.stress = stress("irp-log=3")
        for i in 0..<5 { _ = host.read(disk, count: 512, offset: Int64(i * 512)) }
        let log = io.deviceNodes[0].irpLog
        #expect(log.count == 3)
        #expect(log.last?.hasSuffix("IRP_MJ_READ offset=2048 length=512 STATUS_SUCCESS information=512") == true, "\(log)")
        io.verifier.stress = stress("none")
        _ = host.read(disk, count: 512)
        #expect(io.deviceNodes[0].irpLog.count == 3)
    }

    @Test func aUserIRPPastItsDeadlineIsReportedAndCanStillBeCancelled() throws {
        let (io, host) = try stressTree([DeviceDescription(name: "echo", hardwareIDs: ["Root\\Echo"])])
        io.verifier.stress = stress("deadline=0.2")
        let echo = try host.open("echo")
        let read = host.beginRead(echo, count: 16)  // echo has no data: the read waits
        #expect(read.status == .pending)
        #expect(waitUntil { io.verifier.violations.contains { $0.rule == .deadlineMissed } })
        let v = io.verifier.violations.first { $0.rule == .deadlineMissed }
        #expect(v.map { "\($0)" }?.contains("IRP_MJ_READ on echo not completed within 0.2 s (it can still be cancelled)") == true)
        #expect(read.cancel())
        #expect(read.wait(seconds: 5))
        #expect(read.status == .cancelled)
        // A request that completes in time is not reported.
        let before = io.verifier.count, checked = io.verifier.deadlinesChecked
        _ = host.write(echo, [1])
        _ = host.read(echo, count: 1)
        // Both deadlines have passed and been looked at: neither was reported.
        #expect(waitUntil { io.verifier.deadlinesChecked >= checked + 2 })
        #expect(io.verifier.count == before)
    }

    @Test func badStressOptionsAreRefusedSayingWhy() {
        func why(_ t: String) -> String? {
            if case .failure(let e) = Verifier.Stress.parse(t) { return e.description }
            return nil
        }
        #expect(why("pending=2") == "pending must be a decimal from 0 to 1, not `2`")
        #expect(why("pendign=1") == "no stress option `pendign`: pending, low-resources, irp-log, deadline, seed")
        #expect(why("irp-log") == "`irp-log` is not OPTION=VALUE")
        #expect(why("deadline=soon") == "deadline must be seconds from 0 to 86400, not `soon`")
        #expect((try? Verifier.Stress.parse("pending=0.5 seed=7").get())?.description == "pending=0.5 low-resources=0.0 irp-log=0 deadline=0.0 seed=7")
    }

    @Test func theDefectiveSamplesOfThePowerAndRemoveLockClassesAreCaught() throws {
        let io = IOManager()
        try TreeDescription(devices: [
            DeviceDescription(name: "swallows-power", hardwareIDs: ["Root\\Zero"], upperFilters: ["PowerSwallower"]),
            DeviceDescription(name: "keeps-remove-lock", hardwareIDs: ["Root\\RemoveLockKept"]),
        ]).build(into: io)
        #expect(io.verifier.violations.isEmpty)
        #expect(io.setSystemPower(.sleeping3).isSuccess)
        #expect(io.setSystemPower(.working).isSuccess)
        let power = io.verifier.violations.filter { $0.rule == .successfulPowerNotForwarded }
        #expect(!power.isEmpty && power.allSatisfy { $0.driver == "\\Driver\\PowerSwallower" && $0.rule.windowsCode == "0xC9/0x231" })
        let node = try #require(io.deviceNodes.first { $0.instanceName == "keeps-remove-lock" })
        #expect(io.remove(node).isSuccess)
        let lock = io.verifier.violations.filter { $0.rule == .removeLockNotReleasedAtRemove }
        #expect(lock.count == 1 && lock[0].driver == "\\Driver\\RemoveLockKept")
        #expect(lock[0].rule.windowsCode == "bug check 0xC4 (DDI compliance rule RemoveLockMnRemove)")
    }
}

/// The rules about what a driver does to device objects while the PnP manager
/// removes a bus's child: detaching or deleting during SURPRISE_REMOVAL (0x241,
/// 0x242) and deleting a PDO the bus still reports (0x221).
@Suite struct SurpriseRemovalRuleTests {
    func toaster() throws -> (IOManager, DeviceNode, FileObject, EmbeddedHost) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let host = EmbeddedHost(io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: 1, hardwareIDs: [ToasterBus.toasterHardwareID])).status == .success)
        io.waitForPnP()
        let node = try #require(io.deviceNodes.first { $0.instanceName == "toaster-bus" }?.children.first)
        return (io, node, bus, host)
    }

    @Test func aFilterThatDetachesAndDeletesAtSurpriseRemovalIs0x241And0x242() throws {
        let (io, node, bus, host) = try toaster()
        let hasty = try io.loadDriver(name: "Hasty") { d in
            d.addDevice = { d, pdo in
                d.createFilterDevice(for: pdo)
                return .success
            }
            d.majorFunction.setAll { device, irp in
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            d.majorFunction[.power] = Power.filterDispatch
            d.majorFunction[.pnp] = { device, irp in
                guard irp.pnpMinor == .surpriseRemoval else { return PnP.filterDispatch(device, irp) }
                irp.skipCurrentStackLocation()
                let status = device.callLower(irp)
                device.driverObject.ioManager.detachAndDelete(device)  // the bug: this is REMOVE_DEVICE's work
                return status
            }
            return .success
        }
        #expect(io.attachFilter(hasty, to: node).isSuccess)
        #expect(io.verifier.violations.isEmpty)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        io.waitForPnP()
        let rules = io.verifier.violations.filter { $0.driver == "\\Driver\\Hasty" }.map(\.rule.windowsCode)
        #expect(rules == ["0xC9/0x241", "0xC9/0x242"], "\(io.verifier.violations)")
    }

    @Test func deletingAPDOTheBusStillReportsIs0x221() throws {
        let (io, node, _, _) = try toaster()
        let pdo = try #require(node.pdo)
        io.deleteDevice(pdo)  // what a bus does too early
        let v = io.verifier.violations.first { $0.rule == .reportedPDODeleted }
        #expect(v?.rule.windowsCode == "0xC9/0x221")
        #expect(v?.driver == "\\Driver\\ToasterBus")
        // Unplugged and removed in order, the toaster's PDO goes without a report.
        let (io2, _, bus2, host2) = try toaster()
        #expect(host2.deviceIoControl(bus2, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        io2.waitForPnP()
        #expect(!io2.verifier.violations.contains { $0.rule == .reportedPDODeleted }, "\(io2.verifier.violations)")
    }
}
