// One owner for the tree, under load: verbs, plug and unplug, and system power
// transitions run from several threads at once while I/O runs and the tree is
// read through snapshots. Every change is an action of the PnP manager's one
// executor, so no stack ever gets two REMOVE_DEVICEs, the tree never shows a
// node twice, and what is left at the end is consistent.

import DefaultTree
import Dispatch
import Foundation
import Synchronization
import Testing
import ToasterDrivers
import ToasterPublic
@testable import WDM
import WDMTesting

/// Counts IRP_MN_REMOVE_DEVICE per device object above a PDO (kept alive, so no
/// two devices share an identity).
final class RemoveCounter: IRPObserver, @unchecked Sendable {
    let counts = Mutex<[ObjectIdentifier: Int]>([:])
    let kept = Mutex<[DeviceObject]>([])
    func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {
        guard irp.majorFunction == .pnp, irp.pnpMinor == .removeDevice, device.lowerDevice != nil else { return }
        kept.withLock { $0.append(device) }
        counts.withLock { $0[ObjectIdentifier(device), default: 0] += 1 }
    }
    var most: Int { counts.withLock { $0.values.max() ?? 0 } }
}

@Suite struct ConcurrencyTests {
    @Test func verbsPlugUnplugAndPowerFromSeveralThreadsWhileIORuns() throws {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20))
        let removes = RemoveCounter()
        io.addObserver(removes)
        let host = EmbeddedHost(io)
        let stop = Atomic<Bool>(false)
        let group = DispatchGroup()
        let errors = Recorder()
        @Sendable func fail(_ s: String) { errors.add(s) }
        @Sendable func node(_ name: String) -> DeviceNode? { io.pnp.snapshot.node(named: name)?.node }

        // Plug and unplug toasters (the bus is exclusive: one thread has it).
        DispatchQueue.global().async(group: group) {
            guard let bus = try? host.open("toaster-bus", access: .readData) else { return fail("bus") }
            var i: UInt32 = 0
            while !stop.load(ordering: .relaxed) {
                i = i % 5 + 1
                _ = host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: i))
                if let t = try? host.open("toaster\(i)") {
                    _ = host.write(t, [1])
                    _ = host.read(t, count: 64)
                    host.close(t)
                }
                _ = host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: i))
            }
            host.close(bus)
        }
        // Verbs on root devices and on whatever toaster is there, from two threads.
        for names in [["echo", "ramdisk0", "toaster1"], ["ioctl-demo", "echo", "toaster2", "toaster-bus"]] {
            DispatchQueue.global().async(group: group) {
                var k = 0
                while !stop.load(ordering: .relaxed) {
                    k += 1
                    guard let n = node(names[k % names.count]) else { continue }
                    switch k % 5 {
                    case 0: _ = io.disable(n)
                    case 1: _ = io.enable(n)
                    case 2: _ = io.restart(n)
                    case 3: _ = io.rebalance(n)
                    default: _ = io.rescan(k % 2 == 0 ? n : nil)
                    }
                    if let again = node(names[k % names.count]), again.state == .disabled { _ = io.enable(again) }
                }
            }
        }
        // System power.
        DispatchQueue.global().async(group: group) {
            var k = 0
            while !stop.load(ordering: .relaxed) {
                k += 1
                _ = io.setSystemPower(k % 2 == 0 ? .sleeping3 : .working)
            }
            _ = io.setSystemPower(.working)
        }
        // I/O on devices that stay (zero and null are never touched by the verbs).
        DispatchQueue.global().async(group: group) {
            guard let z = try? host.open("zero"), let n = try? host.open("null") else { return fail("open") }
            while !stop.load(ordering: .relaxed) {
                let r = host.read(z, count: 512)
                if r.status != .success || r.data.count != 512 { fail("zero read \(r.status)") }
                _ = host.write(n, [1, 2, 3])
            }
            host.close(z)
            host.close(n)
        }
        // Readers of the tree: snapshots only.
        DispatchQueue.global().async(group: group) {
            while !stop.load(ordering: .relaxed) {
                let tree = io.pnp.snapshot
                let paths = tree.all.map(\.path)
                if Set(paths).count != paths.count { fail("a path twice: \(paths)") }
                for v in tree.all { _ = (v.status, v.stack, v.handles, v.powerState) }
            }
        }
        // Long enough for every thread to go round many times.
        waitUntil(seconds: 3) { !errors.all.isEmpty }
        stop.store(true, ordering: .relaxed)
        #expect(group.wait(timeout: .now() + 60) == .success)
        io.waitForPnP()
        #expect(errors.all.isEmpty, "\(errors.all)")
        #expect(removes.most <= 1, "a device got \(removes.most) REMOVE_DEVICEs")
        #expect(io.systemPowerState == .working)
        // Consistent at the end: every visible started node has its device file, and
        // the devices the verbs never touched still work.
        for v in io.pnp.snapshot.all where v.state == .started {
            if let link = v.link { #expect(io.isPresent(link), "\(v.path)") }
        }
        let z = try host.open("zero")
        #expect(host.read(z, count: 8).status == .success)
        host.close(z)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }
}
