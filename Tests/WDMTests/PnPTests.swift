// Plug and Play as the PnP manager drives it: the IRP order for a new device
// through a stack with filters, the initial STATUS_NOT_SUPPORTED, a START that
// fails, a vetoed QUERY_REMOVE, orderly removal, remove locks.

import Dispatch
import Foundation
import Synchronization
import Testing
@testable import WDM
import WDMTesting

/// Records every IRP_MJ_PNP call down: "driver minor".
func pnpTracer() -> IRPRecorder {
    IRPRecorder { device, irp, _ in
        guard irp.majorFunction == .pnp, let minor = irp.pnpMinor else { return nil }
        return "\(who(device)) \(minor.wdmName)"
    }
}

@Suite struct PnPTests {
    /// A stack: lower filter, function driver, upper filter, over a root PDO.
    func stack(_ io: IOManager, function: @escaping DispatchRoutine = PnP.functionDispatch(), lowerPnP: @escaping DispatchRoutine = PnP.filterDispatch) throws -> DeviceObject {
        func filter(_ name: String, pnp: @escaping DispatchRoutine) throws -> DriverObject {
            try io.loadDriver(name: name) { d in
                d.addDevice = { d, pdo in d.createFilterDevice(for: pdo); return .success }
                d.majorFunction.setAll { device, irp in
                    irp.skipCurrentStackLocation()
                    return device.callLower(irp)
                }
                d.majorFunction[.pnp] = pnp
                return .success
            }
        }
        let lower = try filter("Lower", pnp: lowerPnP)
        let upper = try filter("Upper", pnp: PnP.filterDispatch)
        let fdo = try io.loadDriver(name: "Function") { d in
            d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
            d.majorFunction.succeed([.create, .cleanup, .close])
            d.majorFunction[.pnp] = function
            return .success
        }
        return try io.addRootDevice(instanceName: "dev", hardwareIDs: ["Root\\Test"], compatibleIDs: ["Root\\Compat"],
                                    functionDriver: fdo, lowerFilters: [lower], upperFilters: [upper])
    }

    @Test func aNewDeviceGetsThePnPIrpsInWindowsOrder() throws {
        let io = IOManager(verifierRules: true)
        let tracer = pnpTracer()
        io.addObserver(tracer)
        let started = Recorder()
        _ = try stack(io, function: PnP.functionDispatch(start: { _, irp in
            started.add("function acts on START after the lower drivers: \(irp.ioStatus.status)")
            return .success
        }))
        #expect(tracer.events.all == [
            // QUERY_ID DeviceID, QUERY_CAPABILITIES, QUERY_ID InstanceID, HardwareIDs,
            // CompatibleIDs, QUERY_DEVICE_TEXT, QUERY_BUS_INFORMATION (ReactOS's and Windows' order).
            "PnpManager IRP_MN_QUERY_ID", "PnpManager IRP_MN_QUERY_CAPABILITIES", "PnpManager IRP_MN_QUERY_ID",
            "PnpManager IRP_MN_QUERY_ID", "PnpManager IRP_MN_QUERY_ID", "PnpManager IRP_MN_QUERY_DEVICE_TEXT",
            "PnpManager IRP_MN_QUERY_BUS_INFORMATION",
            "Upper IRP_MN_START_DEVICE", "Function IRP_MN_START_DEVICE", "Lower IRP_MN_START_DEVICE", "PnpManager IRP_MN_START_DEVICE",
            "Upper IRP_MN_QUERY_CAPABILITIES", "Function IRP_MN_QUERY_CAPABILITIES", "Lower IRP_MN_QUERY_CAPABILITIES", "PnpManager IRP_MN_QUERY_CAPABILITIES",
            "Upper IRP_MN_QUERY_PNP_DEVICE_STATE", "Function IRP_MN_QUERY_PNP_DEVICE_STATE", "Lower IRP_MN_QUERY_PNP_DEVICE_STATE", "PnpManager IRP_MN_QUERY_PNP_DEVICE_STATE",
            "Upper IRP_MN_QUERY_DEVICE_RELATIONS", "Function IRP_MN_QUERY_DEVICE_RELATIONS", "Lower IRP_MN_QUERY_DEVICE_RELATIONS", "PnpManager IRP_MN_QUERY_DEVICE_RELATIONS",
        ])
        #expect(started.all == ["function acts on START after the lower drivers: STATUS_SUCCESS"])
        #expect(io.deviceNodes.first?.state == .started)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func everyPnPIrpStartsAsNotSupportedAndThePDOAnswersItsIDs() throws {
        let io = IOManager()
        let seen = Recorder()
        let ids = Mutex<[String]>([])
        _ = try stack(io, lowerPnP: { device, irp in
            seen.add("\(irp.pnpMinor!.wdmName) \(irp.ioStatus.status)")
            return PnP.filterDispatch(device, irp)
        })
        #expect(seen.all.allSatisfy { $0.hasSuffix("STATUS_NOT_SUPPORTED") }, "\(seen.all)")
        let node = try #require(io.deviceNodes.first)
        for type in [BusQueryIdType.deviceID, .instanceID, .hardwareIDs, .compatibleIDs] {
            let (status, q) = io.sendPnP(.queryId, to: node.pdo!.topOfStack) { $0.idType = type }
            #expect(status == .success)
            ids.withLock { $0 += q.ids ?? [] }
        }
        #expect(ids.withLock { $0 } == ["Root\\Test", "dev", "Root\\Test", "Root\\Compat"])
    }

    @Test func aStartThatFailsLeavesFailedStartAndRemovesTheStack() throws {
        let io = IOManager()
        let pdo = try stack(io, function: PnP.functionDispatch(start: { _, _ in .insufficientResources }))
        let node = try #require(pdo.deviceNode)
        #expect(node.problem == .failedStart)
        #expect(node.problemStatus == .insufficientResources)  // DEVPKEY_Device_ProblemStatus: what START failed with
        #expect(node.state == .removed)
        #expect(io.symbolicLinks.isEmpty)  // the function device was deleted
        #expect(pdo.attachedDevice == nil)
        #expect(io.loadedDrivers.filter { $0.name != "\\Driver\\PnpManager" }.allSatisfy { $0.deviceObjects.isEmpty })
    }

    @Test func aDriverCanVetoQueryRemoveAndTheDeviceKeepsWorking() throws {
        let io = IOManager()
        let tracer = pnpTracer()
        io.addObserver(tracer)
        let veto: DispatchRoutine = { device, irp in
            if irp.pnpMinor == .queryRemoveDevice {
                irp.complete(.deviceBusy)  // "in use: not now"
                return .deviceBusy
            }
            return PnP.functionDispatch()(device, irp)
        }
        let pdo = try stack(io, function: veto)
        let node = try #require(pdo.deviceNode)
        let before = tracer.events.all.count
        let r = io.remove(node)
        #expect(r.status == .deviceBusy && r.vetoType == .device)
        #expect(r.vetoedBy?.driverObject.name == "\\Driver\\Function")
        #expect(Array(tracer.events.all.dropFirst(before)) == [
            "Upper IRP_MN_QUERY_REMOVE_DEVICE", "Function IRP_MN_QUERY_REMOVE_DEVICE",
            "Upper IRP_MN_CANCEL_REMOVE_DEVICE", "Function IRP_MN_CANCEL_REMOVE_DEVICE", "Lower IRP_MN_CANCEL_REMOVE_DEVICE", "PnpManager IRP_MN_CANCEL_REMOVE_DEVICE",
        ])
        #expect(node.state == .started)
        let host = EmbeddedHost(io)
        #expect(host.close(try host.open("dev")).close == .success)
    }

    @Test func orderlyRemovalDetachesAndDeletesEveryDevice() throws {
        let io = IOManager()
        let tracer = pnpTracer()
        io.addObserver(tracer)
        let pdo = try stack(io)
        let node = try #require(pdo.deviceNode)
        weak var weakPDO = pdo
        let before = tracer.events.all.count
        #expect(io.remove(node).status == .success)
        #expect(Array(tracer.events.all.dropFirst(before)) == [
            "Upper IRP_MN_QUERY_REMOVE_DEVICE", "Function IRP_MN_QUERY_REMOVE_DEVICE", "Lower IRP_MN_QUERY_REMOVE_DEVICE", "PnpManager IRP_MN_QUERY_REMOVE_DEVICE",
            "Upper IRP_MN_REMOVE_DEVICE", "Function IRP_MN_REMOVE_DEVICE", "Lower IRP_MN_REMOVE_DEVICE", "PnpManager IRP_MN_REMOVE_DEVICE",
        ])
        #expect(io.deviceNodes.isEmpty && io.symbolicLinks.isEmpty)
        #expect(io.loadedDrivers.allSatisfy { $0.deviceObjects.isEmpty })
        #expect(throws: NTStatus.noSuchDevice) { try io.open("dev", access: .readData) }
        _ = weakPDO
    }

    @Test func removeLocksCountIOAndRemovalWaitsForIt() throws {
        let lock = RemoveLock()
        #expect(lock.acquire() == .success)  // an I/O in flight
        let waited = Mutex(false)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            // REMOVE_DEVICE's dispatch holds an acquire of its own, as the samples' does;
            // IoReleaseRemoveLockAndWait drops it and the initial count, then waits.
            #expect(lock.acquire() == .success)
            lock.releaseAndWait()
            waited.withLock { $0 = true }
            done.signal()
        }
        // Removal has begun once the lock says so (the other thread waits for the I/O).
        #expect(waitUntil { lock.isRemoved })
        #expect(lock.acquire() == .deletePending)  // no new I/O once removal began
        #expect(!waited.withLock { $0 })
        lock.release()  // the I/O in flight ends
        #expect(done.wait(timeout: .now() + 2) == .success)
        #expect(lock.isRemoved)
    }

    @Test func aRebalanceStopsAndStartsAndAStartThatFailsAfterItEndsInRemoval() throws {
        let io = IOManager()
        let tracer = pnpTracer()
        io.addObserver(tracer)
        let starts = Atomic<Int>(0)
        let pdo = try stack(io, function: PnP.functionDispatch(start: { _, _ in
            // The first START works; the one after the stop does not.
            starts.add(1, ordering: .relaxed).oldValue == 0 ? .success : .insufficientResources
        }))
        let node = try #require(pdo.deviceNode)
        let before = tracer.events.all.count
        let r = io.rebalance(node)
        #expect(r.status == .insufficientResources)
        let minors = tracer.events.all.dropFirst(before).filter { $0.hasPrefix("Function") }
        #expect(Array(minors) == ["Function IRP_MN_QUERY_STOP_DEVICE", "Function IRP_MN_STOP_DEVICE", "Function IRP_MN_START_DEVICE",
                                  "Function IRP_MN_SURPRISE_REMOVAL", "Function IRP_MN_REMOVE_DEVICE"])
        #expect(node.problem == .failedStart && node.state == .removed)
        #expect(io.symbolicLinks.isEmpty)
    }

    @Test func aDriverCanVetoQueryStopAndDisableKeepsTheNode() throws {
        let io = IOManager()
        let veto: DispatchRoutine = { device, irp in
            if irp.pnpMinor == .queryStopDevice {
                irp.complete(.deviceBusy)
                return .deviceBusy
            }
            return PnP.functionDispatch()(device, irp)
        }
        let pdo = try stack(io, function: veto)
        let node = try #require(pdo.deviceNode)
        let r = io.rebalance(node)
        #expect(r.status == .deviceBusy && r.vetoedBy?.driverObject.name == "\\Driver\\Function")
        #expect(node.state == .started)
        #expect(io.disable(node).status == .success)
        #expect(node.state == .disabled && node.problem == .disabled && io.symbolicLinks.isEmpty)
        #expect(io.deviceNodes.contains { $0 === node })
        #expect(io.enable(node).isSuccess)
        #expect(node.state == .started && node.problem == nil && io.symbolicLinks == ["dev"])
    }

    @Test func aRequestInsideAStackWhenItIsRemovedStillWalksLiveDevices() throws {
        let io = IOManager()
        let entered = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let filter: DispatchRoutine = { device, irp in
            entered.signal()
            proceed.wait()  // the stack is removed while this request is inside it
            irp.skipCurrentStackLocation()
            return device.callLower(irp)
        }
        _ = try buildStack(io, function: [.read: { _, irp in
            irp.complete(.success, information: 1)
            return .success
        }], filters: [[.read: filter]])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        let node = try #require(io.deviceNodes.first)
        // The PDO: nothing but the stack (and the graveyard) refers to it once it is deleted.
        weak var pdo = node.pdo
        let started = Mutex<PendingRequest?>(nil)
        DispatchQueue.global().async { started.withLock { $0 = host.beginRead(f, count: 1) } }
        entered.wait()
        let removed = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            // Removed while the request is inside, and the PDO deleted (no query: what unmount does).
            io.pnp.perform { io.pnp.removeEverything() }
            removed.signal()
        }
        #expect(removed.wait(timeout: .now() + 5) == .success)
        #expect(pdo != nil && pdo?.deleted == true)  // deleted, detached, but kept while the request is inside
        #expect(throws: NTStatus.noSuchDevice) { try host.open("dev") }
        proceed.signal()
        waitUntil { started.withLock { $0 } != nil }
        let read = try #require(started.withLock { $0 })
        #expect(read.wait())  // it ends (the filter finds nothing below any more) instead of crashing
        #expect(read.status == .invalidDeviceRequest)
        host.close(f)
        io.purgeGraveyard()
        #expect(pdo == nil)  // freed once no request is in flight
    }

    /// `settle` returns only when the executor has nothing left, including actions
    /// queued by actions (an enumeration that queues a start): one `sync` would not.
    @Test func settleWaitsForActionsThatActionsQueue() {
        let io = IOManager()
        let done = Atomic<Int>(0)
        let gate = DispatchSemaphore(value: 0)
        io.pnp.enqueue {
            gate.wait()  // the test's settle is queued behind this one
            io.pnp.enqueue {
                io.pnp.enqueue { done.store(2, ordering: .releasing) }
                done.store(1, ordering: .releasing)
            }
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { gate.signal() }
        io.pnp.settle()
        #expect(done.load(ordering: .acquiring) == 2)
    }
}
