// Removal as Windows does it, IRP by IRP, on the toaster bus and its children:
// the whole subtree is queried children first, a veto cancels every node that
// was asked and removes nothing, an open handle vetoes, disable keeps the node,
// restart removes and builds the stack again, eject queries, removes and ejects,
// a child removed while its bus still reports it comes back on a rescan and is
// deleted after its second REMOVE, a removed root device comes back on a root
// rescan, and the sample's own REMOVE handler works unchanged.

import DefaultTree
import Dispatch
import Foundation
import Synchronization
import Testing
import ToasterDrivers
import ToasterPublic
@testable import WDM
import WDMTesting

/// Records the PnP IRPs each stack's top sees: "node MINOR".
func pnpLog() -> IRPRecorder {
    IRPRecorder { device, irp, _ in
        guard irp.majorFunction == .pnp, let minor = irp.pnpMinor, device.attachedDevice == nil else { return nil }
        let who = device.deviceNode?.instanceName ?? device.name ?? "?"
        return "\(who) \(minor.wdmName.dropFirst(7))"
    }
}

/// The default tree, the bus open, toasters plugged in; `veto` makes the named
/// toaster's function driver refuse QUERY_REMOVE.
final class ToasterRig: @unchecked Sendable {
    let io = IOManager()
    let host: EmbeddedHost
    let bus: FileObject
    let log = pnpLog()
    final class Names: Sendable {
        let set = Mutex<Set<String>>([])
        func insert(_ n: String) { _ = set.withLock { $0.insert(n) } }
        func contains(_ n: String) -> Bool { set.withLock { $0.contains(n) } }
    }
    let vetoing = Names()

    init(_ serials: [UInt32] = []) throws {
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        io.addObserver(log)
        host = EmbeddedHost(io)
        bus = try host.open("toaster-bus", access: .readData)
        // A filter over every toaster that vetoes QUERY_REMOVE when asked to.
        let vetoing = self.vetoing
        let veto = try io.loadDriver(name: "VetoFilter") { d in
            d.addDevice = { d, pdo in d.createFilterDevice(for: pdo); return .success }
            d.majorFunction.setAll { device, irp in
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            d.majorFunction[.pnp] = { device, irp in
                if irp.pnpMinor == .queryRemoveDevice, let n = device.deviceNode, vetoing.contains(n.instanceName) {
                    irp.complete(.deviceBusy)
                    return .deviceBusy
                }
                return PnP.filterDispatch(device, irp)
            }
            return .success
        }
        let matcher = io.driverMatcher!
        io.driverMatcher = { bus, hw, compat in
            guard let m = matcher(bus, hw, compat) else { return nil }
            return (m.lower, m.function, m.upper + [veto])
        }
        for s in serials { try plug(s) }
    }

    func plug(_ serial: UInt32) throws {
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: serial)).status == .success)
        io.waitForPnP()
    }

    func unplug(_ serial: UInt32) {
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: serial)).status == .success)
        io.waitForPnP()
    }

    var busNode: DeviceNode { io.deviceNodes.first { $0.instanceName == "toaster-bus" }! }
    func node(_ name: String) -> DeviceNode? { io.allDeviceNodes.first { $0.instanceName == name && $0.state != .removed && $0.state != .surpriseRemoved } }
    /// The devices the toaster bus driver still has (its FDO and its child PDOs).
    var busDevices: Int { io.loadedDrivers.first { $0.name == "\\Driver\\ToasterBus" }!.deviceObjects.count }
    var visible: [String] { io.pnp.snapshot.all.map(\.path) }
}

@Suite struct RemovalTests {
    @Test func removingABusQueriesEveryChildFirstAndAVetoCancelsEveryNodeAskedAndRemovesNothing() throws {
        let rig = try ToasterRig([1, 2])
        rig.vetoing.insert("toaster2")
        let mark = rig.log.mark
        let r = rig.io.remove(rig.busNode)
        #expect(r.status == .deviceBusy && r.vetoType == .device && r.vetoingNode == "toaster2")
        #expect(r.vetoedBy?.driverObject.name == "\\Driver\\VetoFilter")
        #expect(rig.log.since(mark) == [
            "toaster1 QUERY_REMOVE_DEVICE", "toaster2 QUERY_REMOVE_DEVICE",
            "toaster2 CANCEL_REMOVE_DEVICE", "toaster1 CANCEL_REMOVE_DEVICE",
        ])
        // Nothing was removed: the bus still has both children, and they work.
        #expect(rig.busNode.children.map(\.state) == [.started, .started])
        let t = try rig.host.open("toaster1")
        #expect(rig.host.write(t, [1]).status == .success)
        rig.host.close(t)
        #expect(rig.io.verifier.violations.isEmpty, "\(rig.io.verifier.violations)")
    }

    @Test func anOpenHandleVetoesRemoveDisableRestartAndEjectAndTheDeviceKeepsServing() throws {
        let rig = try ToasterRig([1, 2])
        let t = try rig.host.open("toaster2")
        for (verb, result) in [("remove", rig.io.remove(rig.busNode)), ("disable", rig.io.disable(rig.node("toaster2")!)),
                               ("restart", rig.io.restart(rig.node("toaster2")!)), ("eject", rig.io.eject(rig.node("toaster2")!))] {
            #expect(result.vetoType == .outstandingOpen && result.vetoingNode == "toaster2", "\(verb): \(result)")
            #expect(result.description.contains("PNP_VetoOutstandingOpen: 1 handle open"), "\(verb): \(result)")
        }
        // Every node that was asked was told the removal is off.
        let cancels = rig.log.events.all.filter { $0.hasSuffix("CANCEL_REMOVE_DEVICE") }
        #expect(cancels.contains("toaster-bus CANCEL_REMOVE_DEVICE") && cancels.contains("toaster1 CANCEL_REMOVE_DEVICE"))
        #expect(rig.host.write(t, [1]).status == .success)
        #expect(rig.host.read(t, count: 64).status == .success)
        #expect(rig.busNode.children.allSatisfy { $0.state == .started })
        rig.host.close(t)
        #expect(rig.io.disable(rig.node("toaster2")!).isSuccess)  // closed: now it may go
    }

    @Test func disableRemovesTheStackAndKeepsTheNodeAndASecondDisableSaysSo() throws {
        let rig = try ToasterRig([1])
        let node = try #require(rig.node("toaster1"))
        let mark = rig.log.mark
        #expect(rig.io.disable(node).isSuccess)
        #expect(rig.log.since(mark) == ["toaster1 QUERY_REMOVE_DEVICE", "toaster1 REMOVE_DEVICE"])
        #expect(node.state == .disabled && node.problem == .disabled)
        #expect(!rig.io.isPresent("toaster1") && rig.visible.contains("toaster-bus/toaster1"))
        let again = rig.io.disable(node)
        #expect(!again.isSuccess && again.description.contains("already disabled"))
        #expect(rig.io.enable(node).isSuccess)
        #expect(node.state == .started && rig.io.isPresent("toaster1"))
    }

    @Test func restartIsRemoveThenAddDeviceAndStartAgain() throws {
        let rig = try ToasterRig([1])
        let node = try #require(rig.node("toaster1"))
        let before = try #require(rig.io.device(forLink: "toaster1"))
        let mark = rig.log.mark
        #expect(rig.io.restart(node).isSuccess)
        let seen = rig.log.since(mark)
        #expect(Array(seen.prefix(3)) == ["toaster1 QUERY_REMOVE_DEVICE", "toaster1 REMOVE_DEVICE", "toaster1 START_DEVICE"], "\(seen)")
        let after = try #require(rig.io.device(forLink: "toaster1"))
        #expect(after !== before && before.deleted)  // a new function device, from AddDevice
        #expect(node.state == .started)
    }

    @Test func ejectQueriesRemovesAndEjectsAndTheBusDeletesThePDOAfterItsSecondRemove() throws {
        let rig = try ToasterRig([1])
        #expect(rig.busDevices == 2)
        let mark = rig.log.mark
        #expect(rig.host.deviceIoControl(rig.bus, ToasterBus.eject, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        rig.io.waitForPnP()
        #expect(rig.log.since(mark) == [
            "toaster1 QUERY_REMOVE_DEVICE", "toaster1 REMOVE_DEVICE", "toaster1 EJECT",
            "toaster-bus QUERY_DEVICE_RELATIONS", "toaster1 REMOVE_DEVICE",
        ])
        #expect(rig.busDevices == 1)  // the PDO was deleted after its second REMOVE
        #expect(rig.busNode.children.isEmpty && !rig.io.isPresent("toaster1"))
        // Ejecting a toaster someone has open is vetoed: it stays.
        try rig.plug(2)
        let t = try rig.host.open("toaster2")
        #expect(rig.host.deviceIoControl(rig.bus, ToasterBus.eject, input: ToasterBus.unplugRequest(serial: 2)).status == .success)
        rig.io.waitForPnP()
        #expect(rig.node("toaster2")?.state == .started && rig.host.write(t, [1]).status == .success)
        rig.host.close(t)
    }

    @Test func aChildRemovedWhileStillReportedComesBackOnRescanAndIsDeletedOnceUnplugged() throws {
        let rig = try ToasterRig([1])
        let first = try #require(rig.node("toaster1"))
        #expect(rig.io.remove(first).isSuccess)
        #expect(!rig.visible.contains("toaster-bus/toaster1") && rig.busDevices == 2)  // the PDO stays with its bus
        #expect(rig.io.enable(first).status == .noSuchDevice)  // the node is gone
        #expect(rig.io.rescan(rig.busNode).isSuccess)
        let second = try #require(rig.node("toaster1"))
        #expect(second !== first && second.state == .started && rig.io.isPresent("toaster1"))
        #expect(rig.io.remove(second).isSuccess)
        let mark = rig.log.mark
        rig.unplug(1)
        #expect(rig.log.since(mark) == ["toaster-bus QUERY_DEVICE_RELATIONS", "toaster1 REMOVE_DEVICE"])
        #expect(rig.busDevices == 1 && rig.busNode.children.isEmpty)
    }

    @Test func aToasterPluggedAndUnpluggedAtOnceLeavesNothing() throws {
        let rig = try ToasterRig()
        for i in 1...200 {
            #expect(rig.host.deviceIoControl(rig.bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: UInt32(i))).status == .success)
            #expect(rig.host.deviceIoControl(rig.bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: UInt32(i))).status == .success)
        }
        rig.io.waitForPnP()
        rig.io.invalidateDeviceRelations(rig.busNode.pdo!)
        rig.io.waitForPnP()
        #expect(rig.busDevices == 1 && rig.busNode.children.isEmpty)
        #expect(rig.io.loadedDrivers.first { $0.name == "\\Driver\\Toaster" }?.deviceObjects.isEmpty ?? true)
    }

    @Test func aRemovedRootDeviceComesBackOnARootRescanAsANewNode() throws {
        let rig = try ToasterRig()
        let echo = try #require(rig.io.deviceNodes.first { $0.instanceName == "echo" })
        #expect(rig.io.remove(echo).isSuccess)
        #expect(!rig.io.deviceNodes.contains { $0.instanceName == "echo" } && !rig.io.isPresent("echo"))
        #expect(rig.io.enable(echo).status == .noSuchDevice && rig.io.rescan(echo).status == .noSuchDevice)
        #expect(rig.io.rescan(nil).isSuccess)
        let back = try #require(rig.io.deviceNodes.first { $0.instanceName == "echo" })
        #expect(back !== echo && back.state == .started && rig.io.isPresent("echo"))
        let f = try rig.host.open("echo")
        #expect(rig.host.write(f, Array("hi".utf8)).status == .success)
        #expect(rig.host.read(f, count: 2).data == Array("hi".utf8))
        rig.host.close(f)
    }

    @Test func aToasterPluggedAgainWhileItsOldHandleIsOpenStartsAndIsListedOnce() throws {
        let rig = try ToasterRig([1])
        let old = try rig.host.open("toaster1")
        rig.unplug(1)
        try rig.plug(1)
        let node = try #require(rig.node("toaster1"))
        #expect(node.state == .started && node.problem == nil)
        #expect(rig.visible.filter { $0 == "toaster-bus/toaster1" }.count == 1)
        let new = try rig.host.open("toaster1")
        #expect(rig.host.write(new, [1]).status == .success)
        #expect(rig.host.read(old, count: 8).status == .noSuchDevice)
        rig.host.close(old)
        rig.io.waitForPnP()
        #expect(rig.host.read(new, count: 64).status == .success)
        rig.host.close(new)
        #expect(rig.busDevices == 2)  // the bus and the new toaster's PDO
    }

    @Test func readersInAToasterThatIsUnpluggedDoNotKeepItsRemoveLock() throws {
        let rig = try ToasterRig([1])
        let t = try rig.host.open("toaster1")
        // Two readers wait for bread while the toaster goes.
        let readers = (0..<2).map { _ in rig.host.beginRead(t, count: 64) }
        #expect(readers.allSatisfy { $0.pended })
        rig.unplug(1)
        #expect(readers.allSatisfy { $0.wait() && $0.status == .noSuchDevice })
        for _ in 0..<50 { #expect(rig.host.read(t, count: 8).status == .noSuchDevice) }
        rig.host.close(t)
        // REMOVE_DEVICE ran (the remove lock was free); the PnP manager still serves.
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = rig.io.rescan(rig.busNode)
            done.signal()
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(rig.busDevices == 1)
        try rig.plug(3)
        #expect(rig.io.isPresent("toaster3"))
    }

    @Test func aStackEnabledWhileTheSystemSleepsFollowsItAndItsIOWaitsForS0() throws {
        let rig = try ToasterRig([1])
        let node = try #require(rig.node("toaster1"))
        #expect(rig.io.disable(node).isSuccess)
        #expect(rig.io.setSystemPower(.sleeping3) == .success)
        #expect(rig.io.enable(node).isSuccess)
        #expect(node.powerState == .d3)  // it followed the system into sleep
        let t = try rig.host.open("toaster1")
        let waiting = rig.host.beginWrite(t, [1])
        #expect(waiting.pended && !waiting.wait(seconds: 0.1))
        #expect(rig.io.setSystemPower(.working) == .success)
        #expect(waiting.wait() && waiting.status == .success)
        rig.host.close(t)
    }

    @Test func aRequestHeldBySleepIsAnsweredWhenTheTreeIsTornDown() throws {
        let rig = try ToasterRig([1])
        let t = try rig.host.open("toaster1")
        #expect(rig.io.setSystemPower(.sleeping3) == .success)
        let parked = rig.host.beginWrite(t, [1])
        #expect(parked.pended)
        rig.io.unloadAll()  // unmount: REMOVE_DEVICE down every stack
        #expect(parked.wait() && parked.status == .noSuchDevice)
    }
}

@Suite struct RemoveLockContractTests {
    /// A function driver written as the WDM sample writes its PnP dispatch:
    /// IoAcquireRemoveLock first; at REMOVE_DEVICE, pass it down, then
    /// IoReleaseRemoveLockAndWait, IoDetachDevice, IoDeleteDevice.
    @Test func theSamplesRemoveHandlerWorksUnchangedAndWaitsForTheIOInFlight() throws {
        let io = IOManager()
        let inFlight = Mutex<IRP?>(nil)
        let driver = try io.loadDriver(name: "Sample") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
            d.majorFunction.succeed([.create, .cleanup, .close])
            d.majorFunction[.read] = { device, irp in
                // Holds the remove lock while the read is in flight (the sample's queue).
                guard device.removeLock.acquire().isSuccess else {
                    irp.complete(.deletePending)
                    return .deletePending
                }
                irp.markPending()
                inFlight.withLock { $0 = irp }
                return .pending
            }
            d.majorFunction[.pnp] = { device, irp in
                let status = device.removeLock.acquire()
                guard status.isSuccess else {
                    irp.complete(status)
                    return status
                }
                switch irp.pnpMinor {
                case .startDevice:
                    let s = PnP.forwardAndWait(device, irp)
                    irp.complete(s)
                    device.removeLock.release()
                    return s
                case .removeDevice:
                    irp.ioStatus.status = .success
                    irp.skipCurrentStackLocation()
                    let s = device.callLower(irp)
                    device.removeLock.releaseAndWait()
                    device.driverObject.ioManager.detachDevice(device.lowerDevice!)
                    device.driverObject.ioManager.deleteDevice(device)
                    return s
                default:
                    irp.skipCurrentStackLocation()
                    let s = device.callLower(irp)
                    device.removeLock.release()
                    return s
                }
            }
            return .success
        }
        try io.addRootDevice(instanceName: "sample", functionDriver: driver)
        let host = EmbeddedHost(io)
        let f = try host.open("sample")
        let read = host.beginRead(f, count: 1)
        #expect(read.pended)
        host.close(f)  // nothing cancels it: the driver keeps it
        let node = try #require(io.deviceNodes.first)
        let removed = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = io.remove(node)
            removed.signal()
        }
        // REMOVE reaches IoReleaseRemoveLockAndWait (the lock says removal began) and
        // waits there for the read, which holds the remove lock.
        let fdo = try #require(io.device(forLink: "sample"))
        for _ in 0..<1000 where !fdo.removeLock.isRemoved { _ = removed.wait(timeout: .now() + 0.005) }
        #expect(fdo.removeLock.isRemoved)
        #expect(removed.wait(timeout: .now()) == .timedOut)
        let irp = try #require(inFlight.withLock { $0 })
        irp.complete(.success, information: 0)
        fdo.removeLock.release()
        #expect(removed.wait(timeout: .now() + 5) == .success)
        #expect(node.state == .removed && fdo.deleted)
        #expect(read.wait())
    }
}

@Suite struct ToasterSampleTests {
    @Test func theToasterFamilyHasTheSamplesFlagsCapabilitiesTextAndBusInformation() throws {
        let rig = try ToasterRig([1])
        let busFDO = try #require(rig.io.device(forLink: "toaster-bus"))
        #expect(busFDO.flags.contains(.exclusive) && busFDO.characteristics & 0x100 != 0)  // DO_EXCLUSIVE, FILE_DEVICE_SECURE_OPEN
        let node = try #require(rig.node("toaster1"))
        let pdo = try #require(node.pdo)
        #expect(pdo.characteristics == 0x180)  // FILE_AUTOGENERATED_DEVICE_NAME | FILE_DEVICE_SECURE_OPEN
        let fdo = try #require(rig.io.loadedDrivers.first { $0.name == "\\Driver\\Toaster" }?.deviceObjects.first)
        #expect(fdo.deviceType == 0x22 && fdo.flags.isSuperset(of: [.bufferedIO, .powerPagable]))
        let caps = node.capabilities
        #expect(!caps.uniqueID && caps.address == 1 && caps.ejectSupported && caps.deviceWake == 2)
        #expect(caps.deviceState == [1, 2, 4, 4, 4, 4])  // S1 -> D1, S2..S5 -> D3
        #expect(node.description == "Microsoft_Eliyas_Toaster_01")
        #expect(node.busInformation == BusInformation(busTypeGuid: ToasterBus.busTypeGuid, legacyBusType: 15, busNumber: 0))
        // An unknown bus IOCTL fails as the sample's does.
        #expect(rig.host.deviceIoControl(rig.bus, ControlCode(rawValue: 0x002A_4010), input: [0, 0, 0, 0]).status == .invalidParameter)
        // DONT_DISPLAY_IN_UI: the PDO reports PNP_DEVICE_DONT_DISPLAY_IN_UI after IoInvalidateDeviceState.
        #expect(rig.host.deviceIoControl(rig.bus, ToasterBus.dontDisplayInUI, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        rig.io.waitForPnP()
        #expect(node.deviceState & 0x2 != 0)
    }

    @Test func theToasterTakesItsBusInterfaceAndAReferencedPDORefusesItsRemoval() throws {
        let rig = try ToasterRig([1])
        let fdo = try #require(rig.io.device(forLink: "toaster1"))
        let held = try #require(ToasterDriver.busInterface(of: fdo))
        #expect(held.setCrispinessLevel(7) == .success && held.getCrispinessLevel() == 7 && held.isSafetyLockEnabled())
        // Someone else takes a reference too: the PDO refuses the query while it is held.
        let pdo = try #require(rig.node("toaster1")?.pdo)
        let (status, q) = rig.io.callPnP(.queryInterface, to: pdo) { $0.interfaceType = ToasterBus.interfaceStandard; $0.interfaceVersion = 1 }
        let other = try #require(q.interface as? ToasterInterfaceStandard)
        #expect(status == .success && other.getCrispinessLevel() == 7)
        let vetoed = rig.io.remove(try #require(rig.node("toaster1")))
        #expect(vetoed.vetoType == .device && vetoed.vetoedBy?.driverObject.name == "\\Driver\\ToasterBus" && vetoed.status == .unsuccessful)
        // The toaster took its own reference again after the CANCEL_REMOVE.
        #expect(ToasterDriver.busInterface(of: fdo) != nil)
        other.interfaceDereference()
        #expect(rig.io.remove(try #require(rig.node("toaster1"))).isSuccess)  // its own reference went at QUERY_REMOVE
    }

    @Test func theToasterAsksItsPDOThroughAnInternalIOCTLThatNoUserCanSend() throws {
        let rig = try ToasterRig([3])
        let fdo = try #require(rig.io.device(forLink: "toaster3"))
        #expect(ToasterDriver.serialNumber(of: fdo) == 3)  // IRP_MJ_INTERNAL_DEVICE_CONTROL, answered by the bus
        // From user mode the same code is an IRP_MJ_DEVICE_CONTROL: the toaster does not take it.
        let t = try rig.host.open("toaster3")
        #expect(rig.host.deviceIoControl(t, ToasterBus.internalGetSerial, outputLength: 4).status == .invalidDeviceRequest)
        rig.host.close(t)
    }
}
