// Inputs that used to kill the daemon, through the bridge with a fake sink:
// ioctl, fsync and poll on virtual files; an ioctl on a handle whose device
// went away; a control file whose node went away; an emptied interface class;
// and the `.devices` tree walked while toasters come and go.

import CFuse
import DefaultTree
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import ToasterDrivers
import ToasterPublic
import WDM
import WDMClient
@testable import WDMFuse
import WDMTesting

extension Rig {
    /// Opens a virtual file by inode (`.stats` 2, `.power` 3, a `.devices` path's inode).
    func openVirtual(_ ino: fuse_ino_t, flags: Int32 = O_RDONLY) -> (UnsafeMutablePointer<fuse_file_info>, [FakeSink.Reply]) {
        let fi = UnsafeMutablePointer<fuse_file_info>.allocate(capacity: 1)
        fi.initialize(to: fuse_file_info())
        fi.pointee.flags = flags
        let (r, n) = req()
        bridge.open(r, ino, fi)
        return (fi, sink.replies(n))
    }

    func release(_ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let (r, _) = req()
        bridge.release(r, ino, fi)
        fi.deallocate()
    }
}

@Suite struct AdversarialBridgeTests {
    @Test func ioctlFsyncAndPollOnVirtualFilesAreAnsweredAsARegularFileWould() throws {
        let rig = try Rig()
        let status = try #require(rig.bridge.treeInode(".devices/null/status"))
        let control = try #require(rig.bridge.treeInode(".devices/null/control"))
        for (ino, flags) in [(fuse_ino_t(2), O_RDONLY), (3, O_RDWR), (status, O_RDONLY), (control, O_WRONLY)] {
            let (fi, opened) = rig.openVirtual(ino, flags: flags)
            #expect(opened == [.open], "ino \(ino)")
            // IOCTL_DISK_GET_LENGTH_INFO through the envelope: not a device, so ENOTTY.
            var env = [UInt8](repeating: 0, count: IoctlEnvelope.headerSize + 8)
            env.withUnsafeMutableBytes { IoctlEnvelope.Header(code: 0x0007_405C, inputLength: 0, outputLength: 8).write(to: $0.baseAddress!) }
            let (r1, n1) = rig.req()
            env.withUnsafeBytes { b in
                rig.bridge.ioctl(r1, ino, UInt32(truncatingIfNeeded: IoctlEnvelope.request(capacity: 8)), fi, 0, b.baseAddress, b.count, b.count)
            }
            #expect(rig.sink.replies(n1) == [.error(ENOTTY)], "ino \(ino)")
            let (r2, n2) = rig.req()
            rig.bridge.fsync(r2, ino, fi)
            #expect(rig.sink.replies(n2) == [.error(0)], "ino \(ino)")
            let (r3, n3) = rig.req()
            rig.bridge.poll(r3, ino, fi, nil)
            #expect(rig.sink.replies(n3) == [.poll(UInt32(POLLIN | POLLOUT))], "ino \(ino)")
            rig.release(ino, fi)
        }
        #expect(rig.sink.droppedCount == 0)
    }

    @Test func anIoctlOnAHandleWhoseDeviceWentAwayCarriesTheStatusAndTheBridgeServesOn() throws {
        let rig = try Rig()
        let host = EmbeddedHost(rig.io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: 1)).status == .success)
        rig.io.waitForPnP()
        let toaster = rig.open("toaster1")
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 1)).status == .success)
        rig.io.waitForPnP()
        let n = rig.ioctl(toaster, code: 0x0007_405C, outputLength: 8)
        #expect(header(rig.sink.replies(n).first)?.status == .noSuchDevice)
        let (r, rn) = rig.req()
        rig.bridge.read(r, rig.ino(of: toaster), 8, 0, toaster)  // the name is gone; the handle is not
        #expect(rig.sink.replies(rn) == [.error(ENODEV)])
        // The bridge still serves other devices.
        let zero = rig.open("zero")
        #expect(rig.sink.replies(rig.read("zero", zero, size: 4)) == [.data([0, 0, 0, 0])])
        host.close(bus)
    }

    @Test func aControlFileWhoseNodeWentAwayAndAnEmptiedInterfaceClassAnswerPlainly() throws {
        let rig = try Rig()
        let host = EmbeddedHost(rig.io)
        let bus = try host.open("toaster-bus", access: .readData)
        #expect(host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: 2)).status == .success)
        rig.io.waitForPnP()
        let control = try #require(rig.bridge.treeInode(".devices/toaster-bus/toaster2/control"))
        let (fi, _) = rig.openVirtual(control, flags: O_WRONLY)
        #expect(host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: 2)).status == .success)
        rig.io.waitForPnP()
        let (r, n) = rig.req()
        Array("remove".utf8).withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { rig.bridge.write(r, control, $0.baseAddress, 6, 0, fi) }
        }
        #expect(rig.sink.replies(n) == [.error(ENODEV)])  // the node is gone: not EBADF
        rig.release(control, fi)
        // The toaster class has no interface enabled any more: an empty directory, not ENOTDIR.
        let dir = ".interfaces/" + ToasterBus.toasterInterfaceClass
        #expect(rig.bridge.treeEntries(dir)?.isEmpty == true)
        host.close(bus)
    }

    @Test func walkingTheDeviceTreeWhileToastersComeAndGoNeverSeesAHalfChangedTree() throws {
        let rig = try Rig()
        let host = EmbeddedHost(rig.io)
        let bus = try host.open("toaster-bus", access: .readData)
        let stop = Atomic<Bool>(false)
        let walks = Atomic<Int>(0)
        let group = DispatchGroup()
        let bridge = rig.bridge
        // Walkers: every directory and file of .devices, as `ls -R` and `find -exec cat` would.
        for _ in 0..<2 {
            DispatchQueue.global().async(group: group) {
                while !stop.load(ordering: .relaxed) {
                    var dirs = [".devices", ".interfaces"]
                    while let d = dirs.popLast() {
                        for e in bridge.treeEntries(d) ?? [] {
                            let path = d + "/" + e.name
                            if e.dir { dirs.append(path) } else if case .file(let node, let f)? = bridge.resolve(path) { _ = bridge.text(node, f) }
                        }
                    }
                    _ = bridge.rootEntries
                    walks.add(1, ordering: .relaxed)
                }
            }
        }
        // Toasters come and go until the walkers have walked the tree many times.
        var round = 0
        while round < 150 || (walks.load(ordering: .relaxed) < 20 && round < 20_000) {
            round += 1
            let serial = UInt32(round % 7 + 1)
            _ = host.deviceIoControl(bus, ToasterBus.plugIn, input: ToasterBus.plugInRequest(serial: serial))
            if round % 3 == 0 { rig.io.waitForPnP() }
            _ = host.deviceIoControl(bus, ToasterBus.unplug, input: ToasterBus.unplugRequest(serial: serial))
        }
        rig.io.waitForPnP()
        stop.store(true, ordering: .relaxed)
        group.wait()
        #expect(walks.load(ordering: .relaxed) >= 20)
        // Every path the tree shows is unique, and nothing of the toasters is left.
        let paths = rig.io.pnp.snapshot.all.map(\.path)
        #expect(Set(paths).count == paths.count)
        #expect(!paths.contains { $0.hasPrefix("toaster-bus/") })
        host.close(bus)
    }
}
