// Every verifier rule, each triggered by a deliberately wrong driver, through
// the same seam every host uses. The rules are observers at IoCallDriver and
// IoCompleteRequest, so what is a violation here is one when mounted.

import Dispatch
import Foundation
import Synchronization
import Testing
@testable import WDM
import WDMTesting

@Suite struct VerifierRuleTests {
    /// A read on a fresh stack built from `function` (and `filters` above it); returns the rules reported.
    func rules(
        flags: DeviceFlags = [], function: @escaping DispatchRoutine, filters: [DispatchRoutine] = [],
        wait: Bool = true
    ) throws -> [Verifier.Rule] {
        let io = IOManager()
        _ = try buildStack(io, flags: flags, function: [.read: function], filters: filters.map { [.read: $0] })
        let host = EmbeddedHost(io)
        let r = host.beginRead(try host.open("dev"), count: 4)
        // Waits for the completion (a driver here may complete later, on another thread):
        // returning before it would free the I/O manager under it.
        if wait { #expect(r.wait(seconds: 60), "the read never completed") }
        return io.verifier.violations.map(\.rule)
    }

    static let pendLater: DispatchRoutine = { _, irp in
        irp.markPending()
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { irp.complete(.success, information: 1) }
        return .pending
    }

    @Test func returningPendingWithoutMarkingIsReportedOnTheAsynchronousPathToo() throws {
        // The filter returns the lower driver's STATUS_PENDING and its completion
        // routine never marks its own location: 0x228 at completion, and 0x23D.
        let filter: DispatchRoutine = { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { _, _, _ in .success }
            return device.callLower(irp)
        }
        let r = try rules(function: Self.pendLater, filters: [filter])
        #expect(r.contains(.pendingNotPropagated))
        #expect(r.contains(.pendingWithoutMark))
    }

    @Test func aFilterWhoseRoutinePropagatesThePendingMarkIsClean() throws {
        let filter = propagatingFilter
        #expect(try rules(function: Self.pendLater, filters: [filter]) == [])
    }

    @Test func markingPendingAndReturningAnotherStatusIsReported() throws {
        #expect(try rules(function: { _, irp in
            irp.markPending()
            irp.complete(.success)
            return .success
        }) == [.markedPendingReturnedOther])
    }

    @Test func returningWithoutCompletingIsReportedAndTheRequestStaysWithTheDriver() throws {
        let kept = Mutex<[IRP]>([])
        #expect(try rules(function: { _, irp in
            kept.withLock { $0.append(irp) }
            return .success
        }, wait: false) == [.returnedWithoutCompleting])
    }

    @Test func aFilterThatReturnsBeforeTheLowerDriverCompletedIsReported() throws {
        // The lower driver pends; the filter returns STATUS_SUCCESS as if it were done.
        let filter: DispatchRoutine = { device, irp in
            irp.skipCurrentStackLocation()
            _ = device.callLower(irp)
            return .success
        }
        #expect(try rules(function: Self.pendLater, filters: [filter]).contains(.returnedWithoutCompleting))
    }

    @Test func returningAStatusOtherThanTheCompletedOneIsReportedAtEveryLevel() throws {
        let filter: DispatchRoutine = { device, irp in
            irp.skipCurrentStackLocation()
            _ = device.callLower(irp)
            return .unsuccessful  // the lower driver completed with success
        }
        let fdo: DispatchRoutine = { _, irp in
            irp.complete(.success)
            return .success
        }
        #expect(try rules(function: fdo, filters: [filter]) == [.statusMismatch])
    }

    @Test func completingWithStatusPendingIsReported() throws {
        #expect(try rules(function: { _, irp in
            irp.complete(.pending)
            return .pending
        }).contains(.completedWithPendingStatus))
    }

    @Test func completingWithACancelRoutineSetIsReported() throws {
        #expect(try rules(function: { _, irp in
            irp.setCancelRoutine { _, _ in }
            irp.complete(.success)
            return .success
        }) == [.completedWithCancelRoutine])
    }

    @Test func informationLargerThanAReadIsReportedButIsNotVerifiers0x312() throws {
        #expect(try rules(function: { _, irp in
            irp.complete(.success, information: 4096)
            return .success
        }) == [.informationExceedsLength])
        #expect(Verifier.Rule.informationExceedsLength.windowsCode.hasPrefix("none"))
    }

    /// 0x312 is about METHOD_BUFFERED output; a direct method's Information is
    /// checked against its output too, under the rule with no Windows code.
    @Test func informationLargerThanTheOutputIs0x312OnlyForMethodBuffered() throws {
        var found: [TransferMethod: [Verifier.Rule]] = [:]
        for method in [TransferMethod.buffered, .outDirect] {
            let io = IOManager()
            _ = try buildStack(io, function: [.deviceControl: { _, irp in
                irp.complete(.success, information: irp.parameters.deviceIoControl.outputBufferLength + 1)
                return .success
            }])
            let host = EmbeddedHost(io)
            _ = host.deviceIoControl(try host.open("dev"), ControlCode(deviceType: DeviceType.unknown, function: 0x800, method: method, access: []), outputLength: 8)
            found[method] = io.verifier.violations.map(\.rule)
        }
        #expect(found[.buffered] == [.informationExceedsBuffer])
        #expect(found[.outDirect] == [.informationExceedsLength])
        #expect(Verifier.Rule.informationExceedsBuffer.windowsCode == "0xC9/0x312")
    }

    @Test func callingDownFromTheBottomIsReported() throws {
        let r = try rules(function: { device, irp in
            irp.copyCurrentStackLocationToNext()
            return device.lowerDevice!.callLower(irp)  // the PDO has nothing below it
        })
        #expect(r == [.callDownWithNoLowerDevice], "\(r)")
        #expect(Verifier.Rule.callDownWithNoLowerDevice.windowsCode == "0xC9/0x204")
    }

    @Test func runningOutOfStackLocationsIsReported() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { device, irp in
            // Calls itself with a new location each time until none is left.
            irp.copyCurrentStackLocationToNext()
            return device.driverObject.ioManager.callDriver(device, irp)
        }])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        #expect(io.verifier.violations.map(\.rule).contains(.noStackLocationsLeft))
    }

    @Test func freeingAnIrpWhileADriverOwnsItIsReportedAndIgnored() throws {
        let r = try rules(function: { device, irp in
            device.driverObject.ioManager.freeIrp(irp)
            irp.complete(.success)
            return .success
        })
        #expect(r == [.freedInFlight])
    }

    @Test func completingTwiceIsReportedWithBugCheck0x44() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success)
            irp.complete(.success)
            return .success
        }])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        let v = try #require(io.verifier.violations.first)
        #expect(v.rule == .completedTwice)
        let text = v.description
        for part in ["completedTwice", "bug check 0x44", "IRP_MJ_READ", "\\Driver\\TestFunction", "(dev)", "irp 0x"] {
            #expect(text.contains(part), "\(text) lacks \(part)")
        }
    }

    @Test func eachReportNamesRuleCodeDriverDeviceMajorAndIrp() throws {
        let io = IOManager()
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success)
            return .pending
        }])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        let text = try #require(io.verifier.violations.first).description
        #expect(text.hasPrefix("verifier: pendingWithoutMark [0xC9/0x23D] on IRP_MJ_READ by \\Driver\\TestFunction device (dev) irp 0x"), "\(text)")
    }

    @Test func addDeviceThatLeavesDeviceInitializingSetIsReported() throws {
        let io = IOManager()
        let d = try io.loadDriver(name: "Sloppy") { d in
            d.addDevice = { d, pdo in
                let fdo = d.ioManager.createDevice(driver: d, deviceType: DeviceType.unknown)
                d.ioManager.attachDeviceToDeviceStack(fdo, to: pdo)
                return .success
            }
            d.majorFunction[.pnp] = PnP.functionDispatch()
            return .success
        }
        try io.addRootDevice(instanceName: "x", functionDriver: d)
        #expect(io.verifier.violations.map(\.rule) == [.deviceInitializingLeftSet])
    }

    @Test func attachingCopiesNothingAndAFilterThatForgetsIsReported() throws {
        let io = IOManager()
        let disk = try io.loadDriver(name: "Disk") { d in
            d.addDevice = { d, pdo in
                do throws(NTStatus) {
                    let fdo = try d.createFunctionDevice(for: pdo, deviceType: DeviceType.disk, flags: [.directIO, .powerPagable])
                    fdo.characteristics = 0x1
                    return .success
                } catch { return error }
            }
            d.majorFunction[.pnp] = PnP.functionDispatch()
            return .success
        }
        let careful = try io.loadDriver(name: "Careful") { d in
            d.addDevice = { d, pdo in d.createFilterDevice(for: pdo); return .success }
            d.majorFunction[.pnp] = PnP.filterDispatch
            return .success
        }
        let lazy = try io.loadDriver(name: "Lazy") { d in
            d.addDevice = { d, pdo in
                let f = d.ioManager.createDevice(driver: d, deviceType: DeviceType.unknown)
                d.ioManager.attachDeviceToDeviceStack(f, to: pdo)
                f.flags.remove(.deviceInitializing)
                return .success
            }
            d.majorFunction[.pnp] = PnP.filterDispatch
            return .success
        }
        let pdo = try io.addRootDevice(instanceName: "good", functionDriver: disk, upperFilters: [careful])
        #expect(io.verifier.violations.isEmpty)
        let top = pdo.topOfStack
        #expect(top.flags.isSuperset(of: [.directIO, .powerPagable]) && top.deviceType == DeviceType.disk && top.characteristics == 1)
        try io.addRootDevice(instanceName: "bad", functionDriver: disk, upperFilters: [lazy])
        let v = io.verifier.violations
        // One rule per Verifier code; Characteristics not copied has none, so no report.
        #expect(v.map(\.rule) == [.filterBufferingNotCopied, .filterDeviceTypeNotCopied, .filterPowerPagableNotCopied])
        #expect(v.map(\.rule.windowsCode) == ["0xC9/0x244", "0xC9/0x246", "0xC9/0x23F"])
        #expect(v.allSatisfy { $0.driver == "\\Driver\\Lazy" })
        // Windows' names, never Swift's (`DeviceFlags(rawValue: 8208)`).
        #expect(v.map(\.detail) == [
            "Flags 0, below: DO_DIRECT_IO",
            "DeviceType FILE_DEVICE_UNKNOWN (0x22), below: FILE_DEVICE_DISK (0x7)",
            "Flags 0, below: DO_POWER_PAGABLE",
        ])
        #expect(v.allSatisfy { $0.description.contains("by \\Driver\\Lazy device (bad)") && !$0.description.contains("rawValue") }, "\(v)")
    }

    @Test func flagSetsPrintWindowsNames() {
        #expect("\(DeviceFlags([.bufferedIO, .powerPagable]))" == "DO_BUFFERED_IO | DO_POWER_PAGABLE")
        #expect("\(DeviceFlags())" == "0")
        #expect("\(DeviceFlags(rawValue: 0x4 | 0x40000))" == "DO_BUFFERED_IO | 0x40000")
        #expect("\([AccessMask.readData, .writeData] as AccessMask)" == "FILE_READ_DATA | FILE_WRITE_DATA")
        #expect("\(StackControl.pendingReturned)" == "SL_PENDING_RETURNED")
        #expect(characteristicsDescription(0x101) == "FILE_REMOVABLE_MEDIA | FILE_DEVICE_SECURE_OPEN")
    }

    @Test func aCompletionOfAFreedIrpNamesTheDriverAndTheDevice() throws {
        let io = IOManager()
        let kept = Mutex<IRP?>(nil)
        _ = try buildStack(io, function: [.read: { _, irp in
            kept.withLock { $0 = irp }  // a bug: keeps the IRP after completing it
            irp.complete(.success, information: 1)
            return .success
        }])
        let host = EmbeddedHost(io)
        #expect(host.read(try host.open("dev"), count: 1).status == .success)
        try #require(kept.withLock { $0 }).complete(.success)  // freed by now
        let v = try #require(io.verifier.violations.first)
        #expect(v.rule == .staleIrpUsed)
        #expect(v.description.contains("on IRP_MJ_READ by \\Driver\\TestFunction device (dev) irp 0x"), "\(v)")
    }

    @Test func aDriverUnloadedWithADeviceItNeverDeletedIsReported() throws {
        let io = IOManager()
        _ = try io.loadDriver(name: "Leaky") { d in
            _ = d.ioManager.createDevice(driver: d, deviceType: DeviceType.unknown)
            return .success
        }
        io.unloadAll()
        #expect(io.verifier.violations.map(\.rule) == [.unloadWithDevices])
    }

    @Test func theRulesObserveOnlyWhenInstalled() throws {
        let io = IOManager(verifierRules: false)
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success, information: 4096)
            return .success
        }])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        #expect(io.verifier.violations.isEmpty)
    }

    @Test func anObserverSeesEveryCallDownAndCompletion() throws {
        final class Tracer: IRPObserver, @unchecked Sendable {
            let events = Recorder()
            func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) { events.add("call \(who(device))@\(location)") }
            func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus) { events.add("return \(who(device)) \(status)") }
            func completed(_ irp: IRP) { events.add("completed \(irp.ioStatus.status)") }
        }
        let io = IOManager(verifierRules: false)
        let tracer = Tracer()
        io.addObserver(tracer)
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success)
            return .success
        }], filters: [[:]])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let before = tracer.events.all.count
        _ = host.read(f, count: 1)
        #expect(Array(tracer.events.all.dropFirst(before)) == [
            "call TestFilter0@3", "call TestFunction@3", "completed STATUS_SUCCESS",
            "return TestFunction STATUS_SUCCESS", "return TestFilter0 STATUS_SUCCESS",
        ])
    }

    // MARK: - Opt-in per driver, and the actions

    /// Two stacks, one driver each, both breaking 0x312; which are reported
    /// depends on the scope. The I/O manager's own checks stay on regardless.
    func scoped(_ scope: Verifier.Scope, action: Verifier.Action = .log) throws -> (io: IOManager, statuses: [NTStatus]) {
        let io = IOManager()
        io.verifier.scope = scope
        io.verifier.action = action
        let tooMuch: DispatchRoutine = { _, irp in
            irp.complete(.success, information: irp.parameters.deviceIoControl.outputBufferLength + 1)
            return .success
        }
        for name in ["Alpha", "Beta"] {
            let d = try io.loadDriver(name: name) { d in
                d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
                d.majorFunction.succeed([.create, .cleanup, .close])
                d.majorFunction[.pnp] = PnP.functionDispatch()
                d.majorFunction[.deviceControl] = tooMuch
                return .success
            }
            try io.addRootDevice(instanceName: name.lowercased(), functionDriver: d)
        }
        let host = EmbeddedHost(io)
        let code = ControlCode(deviceType: DeviceType.unknown, function: 0x800, method: .buffered, access: [])
        var statuses: [NTStatus] = []
        for link in ["alpha", "beta"] { statuses.append(host.deviceIoControl(try host.open(link), code, outputLength: 4).status) }
        return (io, statuses)
    }

    @Test func verifierChecksOnlyTheDriversItIsToldTo() throws {
        #expect(try scoped(.all).io.verifier.violations.compactMap(\.driver) == ["\\Driver\\Alpha", "\\Driver\\Beta"])
        #expect(try scoped(.drivers(["Beta"])).io.verifier.violations.compactMap(\.driver) == ["\\Driver\\Beta"])
        #expect(try scoped(.drivers(["\\Driver\\Alpha"])).io.verifier.violations.compactMap(\.driver) == ["\\Driver\\Alpha"])
        #expect(try scoped(.none).io.verifier.violations.isEmpty)
    }

    @Test func theScopeChangesWhileDriversRun() throws {
        let (io, _) = try scoped(.none)
        io.verifier.scope = .drivers(["Alpha"])
        let host = EmbeddedHost(io)
        let code = ControlCode(deviceType: DeviceType.unknown, function: 0x800, method: .buffered, access: [])
        for link in ["alpha", "beta"] { _ = host.deviceIoControl(try host.open(link), code, outputLength: 4) }
        #expect(io.verifier.violations.compactMap(\.driver) == ["\\Driver\\Alpha"])
    }

    @Test func theIOManagersOwnChecksStayOnWithVerifierOff() throws {
        let io = IOManager()
        io.verifier.scope = .none
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success)
            irp.complete(.success)  // bug check 0x44, whatever Verifier checks
            return .success
        }])
        let host = EmbeddedHost(io)
        _ = host.read(try host.open("dev"), count: 1)
        #expect(io.verifier.violations.map(\.rule) == [.completedTwice])
        #expect(!Verifier.Rule.completedTwice.isOptIn)
    }

    @Test func theFailActionFailsTheIRPWithTheReportSayingSo() throws {
        let (io, statuses) = try scoped(.drivers(["Alpha"]), action: .fail)
        #expect(statuses == [.driverInternalError, .success])
        let v = try #require(io.verifier.violations.first)
        #expect(v.outcome == "failed the IRP: STATUS_DRIVER_INTERNAL_ERROR")
        // The report names the rule, its code, the driver, the device, the IRP,
        // its location and the call.
        let line = v.description
        for part in ["informationExceedsBuffer", "[0xC9/0x312]", "IRP_MJ_DEVICE_CONTROL", "\\Driver\\Alpha", "(alpha)", "location 2 of 2", "in IoCompleteRequest"] {
            #expect(line.contains(part), "\(part) in \(line)")
        }
    }

    @Test func theBugCheckActionStopsOnceAtTheFirstViolation() throws {
        let stops = Mutex<[Verifier.Rule]>([])
        let io = IOManager()
        io.verifier.action = .bugcheck
        io.verifier.onBugCheck = { v in stops.withLock { $0.append(v.rule) } }
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success, information: 4096)
            return .success
        }])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        _ = host.read(f, count: 4)
        _ = host.read(f, count: 4)
        #expect(stops.withLock { $0 } == [.informationExceedsLength])
        #expect(io.verifier.bugCheck?.rule == .informationExceedsLength)
        #expect(io.verifier.count == 2)
    }

    @Test func scopesParseAsTheCommandLineGivesThem() {
        #expect(Verifier.Scope("all") == .all)
        #expect(Verifier.Scope("none") == Verifier.Scope.none)
        #expect(Verifier.Scope(" Echo, \\Driver\\RamDisk ") == .drivers(["Echo", "RamDisk"]))
        #expect(Verifier.Scope("Echo,,RamDisk") == nil)
    }

    // MARK: - Device objects and PnP

    /// A root device whose function driver handles IRP_MN_REMOVE_DEVICE with
    /// `remove` (other PnP IRPs as the helper does); returns the I/O manager and the node.
    func stack(remove: @escaping @Sendable (DeviceObject, IRP) -> NTStatus, flags: DeviceFlags = [], scope: Verifier.Scope = .all) throws -> (IOManager, DeviceNode) {
        let io = IOManager()
        io.verifier.scope = scope
        let helper = PnP.functionDispatch()
        let d = try io.loadDriver(name: "Sloppy") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: flags) }
            d.majorFunction.succeed([.create, .cleanup, .close])
            d.majorFunction[.pnp] = { device, irp in
                irp.currentStackLocation.minorFunction == PnPMinor.removeDevice.rawValue ? remove(device, irp) : helper(device, irp)
            }
            return .success
        }
        let pdo = try io.addRootDevice(instanceName: "sloppy", functionDriver: d)
        return (io, try #require(pdo.deviceNode))
    }

    /// REMOVE_DEVICE passed down, the remove lock released and waited for (the
    /// helper that runs the other minors acquires it), nothing detached or deleted.
    static let forwardRemove: @Sendable (DeviceObject, IRP) -> NTStatus = { device, irp in
        _ = device.removeLock.acquire()
        irp.ioStatus.status = .success
        irp.skipCurrentStackLocation()
        let status = device.callLower(irp)
        device.removeLock.releaseAndWait()
        return status
    }

    @Test func removeThatLeavesTheDeviceAttachedAndUndeletedIs0x21DAnd0x21E() throws {
        let (io, node) = try stack(remove: Self.forwardRemove)
        _ = io.remove(node)
        #expect(io.verifier.violations.map(\.rule) == [.notDetachedAtRemove, .notDeletedAtRemove])
        #expect(io.verifier.violations.map(\.rule.windowsCode) == ["0xC9/0x21D", "0xC9/0x21E"])
        #expect(io.verifier.violations.allSatisfy { $0.driver == "\\Driver\\Sloppy" })
    }

    @Test func deletingWithoutDetachingIs0x201() throws {
        let (io, node) = try stack(remove: { device, irp in
            let status = Self.forwardRemove(device, irp)
            device.driverObject.ioManager.deleteDevice(device)  // no IoDetachDevice first
            return status
        })
        _ = io.remove(node)
        #expect(io.verifier.violations.map(\.rule) == [.deletedWhileAttached])
    }

    @Test func deletingTwiceIs0x240AndTheSecondDeleteIsIgnored() throws {
        let (io, node) = try stack(remove: { device, irp in
            let status = Self.forwardRemove(device, irp)
            device.driverObject.ioManager.detachAndDelete(device)
            device.driverObject.ioManager.deleteDevice(device)
            return status
        })
        _ = io.remove(node)
        #expect(io.verifier.violations.map(\.rule) == [.deletedTwice])
    }

    @Test func detachingWithNothingAttachedIs0x202() throws {
        let (io, node) = try stack(remove: { device, irp in
            let status = Self.forwardRemove(device, irp)
            let io = device.driverObject.ioManager
            io.detachAndDelete(device)
            io.detachDevice(device)  // nothing is attached above the FDO
            return status
        })
        _ = io.remove(node)
        #expect(io.verifier.violations.map(\.rule) == [.detachedWithNothingAttached])
    }

    @Test func bufferedAndDirectTogetherIs0x245() throws {
        let (io, _) = try stack(remove: Self.forwardRemove, flags: [.bufferedIO, .directIO])
        #expect(io.verifier.violations.map(\.rule) == [.bufferedAndDirect])
    }

    @Test func failingRemoveIs0x306() throws {
        let (io, node) = try stack(remove: { device, irp in
            _ = device.removeLock.acquire()
            device.removeLock.releaseAndWait()
            device.driverObject.ioManager.detachAndDelete(device)
            irp.complete(.unsuccessful)
            return .unsuccessful
        })
        _ = io.remove(node)
        #expect(io.verifier.violations.map(\.rule) == [.failedRemove])
        #expect(io.verifier.violations.map(\.rule.windowsCode) == ["0xC9/0x306"])
        #expect(io.verifier.violations.first?.detail?.contains("removeDevice") == true)
    }

    @Test(arguments: [PnPMinor.cancelStopDevice, .cancelRemoveDevice, .surpriseRemoval])
    func failingACancelOrSurpriseRemovalIs0x247(_ minor: PnPMinor) throws {
        let io = IOManager()
        io.verifier.scope = .all
        let helper = PnP.functionDispatch()
        let d = try io.loadDriver(name: "Stubborn") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
            d.majorFunction[.pnp] = { device, irp in
                guard irp.pnpMinor == minor else { return helper(device, irp) }
                irp.complete(.unsuccessful)
                return .unsuccessful
            }
            return .success
        }
        let pdo = try io.addRootDevice(instanceName: "stubborn", functionDriver: d)
        #expect(io.verifier.violations.isEmpty)
        _ = io.sendPnP(minor, to: pdo.topOfStack)
        #expect(io.verifier.violations.map(\.rule) == [.failedIrpThatMustNotFail], "\(io.verifier.violations)")
        #expect(io.verifier.violations.map(\.rule.windowsCode) == ["0xC9/0x247"])
        #expect(io.verifier.violations.first?.driver == "\\Driver\\Stubborn")
    }

    @Test func theSameMistakesGoUnreportedForADriverNotVerified() throws {
        let (io, node) = try stack(remove: Self.forwardRemove, flags: [.bufferedIO, .directIO], scope: .none)
        _ = io.remove(node)
        #expect(io.verifier.violations.isEmpty)
    }

    @Test func callingDownWithACancelRoutineSetIs0x203() throws {
        let filter: DispatchRoutine = { device, irp in
            _ = irp.setCancelRoutine { _, _ in }
            irp.copyCurrentStackLocationToNext()
            return device.callLower(irp)
        }
        let r = try rules(function: { _, irp in
            _ = irp.setCancelRoutine(nil)
            irp.complete(.success)
            return .success
        }, filters: [filter])
        #expect(r == [.callDownWithCancelRoutine], "\(r)")
    }

    // MARK: - Buses

    /// A root bus whose BusRelations are `children(bus FDO, child PDOs)`; two child
    /// PDOs with the same IDs, served by a driver that completes as a PDO.
    func bus(report: @escaping @Sendable (DeviceObject, [DeviceObject]) -> [DeviceObject]) throws -> IOManager {
        let io = IOManager()
        let childDriver = try io.loadDriver(name: "Kid") { d in
            d.majorFunction[.pnp] = { device, irp in PnP.completeAsPDO(device, irp, ids: { t in t == .instanceID ? ["same"] : ["Kid\\Thing"] }) }
            d.majorFunction.succeed([.create, .cleanup, .close])
            return .success
        }
        let kids = Mutex<[DeviceObject]>([])
        let busDriver = try io.loadDriver(name: "Bus") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
            let helper = PnP.functionDispatch()
            // Nothing here holds the bus driver or the child driver (no cycle: ASan's leak check).
            d.majorFunction[.pnp] = { [unowned childDriver] device, irp in
                guard irp.pnpMinor == .queryDeviceRelations, irp.pnp?.relationType == .busRelations else { return helper(device, irp) }
                let children = kids.withLock { k in
                    if k.isEmpty {
                        for _ in 0..<2 {
                            let pdo = device.driverObject.ioManager.createDevice(driver: childDriver, deviceType: DeviceType.unknown)
                            pdo.flags.remove(.deviceInitializing)
                            k.append(pdo)
                        }
                    }
                    return k
                }
                irp.pnp?.relations = report(device, children)
                irp.ioStatus.status = .success
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            return .success
        }
        io.driverMatcher = { _, _, _ in nil }  // the children stay without a function driver
        let pdo = try io.addRootDevice(instanceName: "bus", functionDriver: busDriver)
        io.invalidateDeviceRelations(pdo)
        io.waitForPnP()
        return io
    }

    /// A bus child whose PDO leaves `minor` (of the ID or relation type given) at
    /// the STATUS_NOT_SUPPORTED it came with, and answers the rest as a PDO should.
    func lazyChild(_ minor: PnPMinor, idType: BusQueryIdType? = nil, relation: DeviceRelationType? = nil) throws -> (IOManager, DeviceObject) {
        let io = IOManager()
        io.verifier.scope = .drivers(["LazyKid"])
        let kid = try io.loadDriver(name: "LazyKid") { d in
            d.majorFunction[.pnp] = { device, irp in
                let q = irp.pnp
                if irp.pnpMinor == minor, idType == nil || q?.idType == idType, relation == nil || q?.relationType == relation {
                    let untouched = irp.ioStatus.status
                    irp.complete(untouched)
                    return untouched
                }
                return PnP.completeAsPDO(device, irp, ids: { t in ["LazyKid\\\(t)"] })
            }
            d.majorFunction.succeed([.create, .cleanup, .close])
            return .success
        }
        let pdo = io.createDevice(driver: kid, deviceType: DeviceType.unknown)
        pdo.flags.remove(.deviceInitializing)
        return (io, pdo)
    }

    @Test(arguments: [PnPMinor.startDevice, .queryStopDevice, .stopDevice, .cancelStopDevice, .queryRemoveDevice,
                      .cancelRemoveDevice, .removeDevice, .surpriseRemoval, .queryCapabilities])
    func aPDOThatLeavesARequiredMinorAtNotSupportedIs0x22A(_ minor: PnPMinor) throws {
        let (io, pdo) = try lazyChild(minor)
        let (status, _) = io.sendPnP(minor, to: pdo)
        #expect(status == .notSupported)
        let v = io.verifier.violations
        #expect(v.map(\.rule) == [.pdoLeftRequiredMinor], "\(v)")
        #expect(v.map(\.rule.windowsCode) == ["0xC9/0x22A"])
        #expect(v.first?.driver == "\\Driver\\LazyKid")
        #expect(v.first?.detail?.contains("\(minor)") == true, "\(v)")
        #expect(v.first?.description.contains("IRP_MJ_PNP \(minor.wdmName)") == true, "\(v)")
    }

    @Test func aPDOMustAnswerQueryIdForTheDeviceIDAndTargetDeviceRelation() throws {
        let (io, pdo) = try lazyChild(.queryId, idType: .deviceID)
        _ = io.sendPnP(.queryId, to: pdo) { $0.idType = .deviceID }
        #expect(io.verifier.violations.map(\.rule) == [.pdoLeftRequiredMinor])
        #expect(io.verifier.violations.first?.detail?.contains("deviceID") == true)
        let (io2, pdo2) = try lazyChild(.queryDeviceRelations, relation: .targetDeviceRelation)
        _ = io2.sendPnP(.queryDeviceRelations, to: pdo2) { $0.relationType = .targetDeviceRelation }
        #expect(io2.verifier.violations.map(\.rule) == [.pdoLeftRequiredMinor])
    }

    @Test func aPDOMayLeaveTheMinorsItsBusNeedNotAnswer() throws {
        // CompatibleIDs, BusRelations of a leaf, QUERY_PNP_DEVICE_STATE, EJECT: left alone, no report.
        let (io, pdo) = try lazyChild(.queryId, idType: .compatibleIDs)
        _ = io.sendPnP(.queryId, to: pdo) { $0.idType = .compatibleIDs }
        for minor in [PnPMinor.queryPnpDeviceState, .eject, .queryDeviceText, .queryBusInformation] {
            let (io3, pdo3) = try lazyChild(minor)
            _ = io3.sendPnP(minor, to: pdo3)
            #expect(io3.verifier.violations.isEmpty, "\(minor): \(io3.verifier.violations)")
        }
        let (io2, pdo2) = try lazyChild(.queryDeviceRelations, relation: .busRelations)
        _ = io2.sendPnP(.queryDeviceRelations, to: pdo2) { $0.relationType = .busRelations }
        #expect(io.verifier.violations.isEmpty && io2.verifier.violations.isEmpty)
    }

    @Test func aPDOThatAnswersTheRequiredMinorsIsClean() throws {
        let (io, pdo) = try lazyChild(.eject)  // leaves only EJECT: answers every required minor
        for minor in [PnPMinor.startDevice, .queryCapabilities, .queryStopDevice, .cancelStopDevice] {
            let (status, _) = io.sendPnP(minor, to: pdo)
            #expect(status == .success)
        }
        _ = io.sendPnP(.queryId, to: pdo) { $0.idType = .deviceID }
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func twoChildrenWithTheSameIDsAre0x249() throws {
        let io = try bus(report: { _, kids in kids })
        #expect(io.verifier.violations.map(\.rule) == [.duplicateChildIDs])
        #expect(io.verifier.violations.first?.driver == "\\Driver\\Kid")
    }

    @Test func aNonPDOInBusRelationsIs0x248AndIsLeftOut() throws {
        let io = try bus(report: { fdo, kids in [fdo, kids[0]] })  // the bus's own FDO is attached: not a PDO
        // Once per query that reports it (at start, and after IoInvalidateDeviceRelations).
        let v = io.verifier.violations
        #expect(!v.isEmpty && v.allSatisfy { $0.rule == .nonPDOInBusRelations && $0.driver == "\\Driver\\Bus" }, "\(v)")
        // Left out: the one real child is the bus's only child.
        #expect(io.pnp.snapshot.byPath.keys.filter { $0.hasPrefix("bus/") }.count == 1, "\(io.pnp.snapshot.byPath.keys.sorted())")
    }

    @Test func aNonPDOGivenToIoRegisterDeviceInterfaceOrIoInvalidateDeviceRelationsIs0x24D() throws {
        let io = IOManager()
        let d = try io.loadDriver(name: "Confused") { d in
            d.addDevice = { d, pdo in
                let s = d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown)
                _ = d.ioManager.registerDeviceInterface(pdo.topOfStack, classGUID: "{00000000-0000-0000-0000-000000000001}")  // its FDO, not the PDO
                d.ioManager.invalidateDeviceRelations(pdo.topOfStack)
                return s
            }
            d.majorFunction[.pnp] = PnP.functionDispatch()
            return .success
        }
        _ = try io.addRootDevice(instanceName: "confused", functionDriver: d)
        io.waitForPnP()
        #expect(io.verifier.violations.map(\.rule) == [.nonPDOGivenForPDO, .nonPDOGivenForPDO])
        #expect(io.verifier.violations.map(\.rule.windowsCode) == ["0xC9/0x24D", "0xC9/0x24D"])
    }
}

/// The PnP and power rules that need to know who forwarded an IRP (0x22D-0x232),
/// the remove lock at REMOVE_DEVICE, and detaching or deleting during surprise
/// removal, checked on stacks built for each.
@Suite struct PnPPowerRuleTests {
    /// A stack whose filter completes the PnP or power IRPs `swallow` names itself
    /// (with the status it returns; nil: passes it down).
    func stack(swallow: @escaping @Sendable (MajorFunction, UInt8, NTStatus) -> NTStatus?) throws -> (IOManager, DeviceObject) {
        let io = IOManager()
        let routine: DispatchRoutine = { device, irp in
            if let status = swallow(irp.majorFunction, irp.minorFunction, irp.ioStatus.status) {
                irp.complete(status)
                return status
            }
            return irp.majorFunction == .pnp ? PnP.filterDispatch(device, irp) : Power.filterDispatch(device, irp)
        }
        let pdo = try buildStack(io, function: [:], filters: [[.pnp: routine, .power: routine]])
        return (io, pdo.topOfStack)
    }

    @Test(arguments: [
        // PnP: an unknown minor (0x22D), a success (0x22E), one left as it came (0x22F).
        (MajorFunction.pnp, UInt8(0x42), Verifier.Rule.unknownPnPNotForwarded, "0xC9/0x22D"),
        (.pnp, PnPMinor.queryDeviceText.rawValue, .successfulPnPNotForwarded, "0xC9/0x22E"),
        (.pnp, PnPMinor.queryResources.rawValue, .untouchedPnPNotForwarded, "0xC9/0x22F"),
        // Power: the same three (0x230, 0x231, 0x232).
        (.power, UInt8(0x37), .unknownPowerNotForwarded, "0xC9/0x230"),
        (.power, PowerMinor.queryPower.rawValue, .successfulPowerNotForwarded, "0xC9/0x231"),
        (.power, PowerMinor.waitWake.rawValue, .untouchedPowerNotForwarded, "0xC9/0x232"),
    ])
    func aFilterThatCompletesAPnPOrPowerIRPWithoutForwardingItIsReported(major: MajorFunction, minor: UInt8, rule: Verifier.Rule, code: String) throws {
        let (io, top) = try stack { m, n, status in
            guard m == major, n == minor else { return nil }
            return rule == .successfulPnPNotForwarded || rule == .successfulPowerNotForwarded ? .success : status
        }
        #expect(io.verifier.violations.isEmpty)
        _ = io.sendSystemIrp(major, minor, to: top) { $0.pnp = major == .pnp ? PnPRequest() : nil }
        #expect(io.verifier.violations.map(\.rule) == [rule])
        #expect(io.verifier.violations.first?.rule.windowsCode == code)
        #expect(io.verifier.violations.first?.driver == "\\Driver\\TestFilter0")
        // The report names a known minor as the WDK does, an unknown one by its number.
        let known = major == .pnp ? PnPMinor(rawValue: minor)?.wdmName : PowerMinor(rawValue: minor)?.wdmName
        let said = io.verifier.violations.first?.description ?? ""
        #expect(said.contains(known ?? "minor 0x" + String(minor, radix: 16, uppercase: true)), "\(said)")
    }

    @Test func failingAPnPIRPWithoutForwardingItIsAllowedAndForwardingIsClean() throws {
        let (io, top) = try stack { m, n, _ in m == .pnp && n == PnPMinor.queryStopDevice.rawValue ? .unsuccessful : nil }
        _ = io.sendSystemIrp(.pnp, PnPMinor.queryStopDevice.rawValue, to: top) { $0.pnp = PnPRequest() }
        _ = io.sendSystemIrp(.pnp, PnPMinor.queryDeviceText.rawValue, to: top) { $0.pnp = PnPRequest() }
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }
}
