// The default tree's drivers, in-process through the embedded host: no mount.

import DefaultTree
import EchoDriver
import Foundation
import IoctlDemoDriver
import NullDriver
import PassThroughFilter
import RamDiskDriver
import Testing
import WDM
import WDMTesting
import ZeroDriver

/// The default tree, as `wdmfs mount` builds it, with a small RAM disk and echo buffer.
func defaultTree(ramdiskSize: Int = 1 << 20, echoBuffer: Int = 16) throws -> (IOManager, EmbeddedHost) {
    let io = IOManager()
    try DefaultTree.build(into: io, options: .init(ramdiskSize: ramdiskSize, echoBufferSize: echoBuffer))
    return (io, EmbeddedHost(io))
}

@Suite struct NullAndZeroTests {
    @Test func nullReadsEndOfFileAndSwallowsWrites() throws {
        let (_, host) = try defaultTree()
        let f = try host.open("null")
        let r = host.read(f, count: 100)
        #expect(r.status == .endOfFile && r.data.isEmpty)
        let w = host.write(f, Array(repeating: 7, count: 1000))
        #expect(w.status == .success && w.information == 1000)
        #expect(host.querySize(f) == 0)
    }

    @Test func zeroFillsTheWholeBufferInPlace() throws {
        let (io, host) = try defaultTree()
        let f = try host.open("zero")
        let r = host.read(f, count: 3000, offset: 12345)  // the host pre-fills with 0xA5
        #expect(r.status == .success)
        #expect(r.data == [UInt8](repeating: 0, count: 3000))
        #expect(io.statistics.bytesCopied == 0)
    }
}

@Suite struct RamDiskTests {
    @Test func stackIsAFilterOverTheDiskOverThePDO() throws {
        let (io, host) = try defaultTree()
        let f = try host.open("ramdisk0")
        let top = f.deviceObject.topOfStack
        #expect(top.driverObject.name == "\\Driver\\PassThroughFilter")
        #expect(top.stackSize == 3)
        #expect(top.flags.contains(.directIO))
        _ = host.read(f, count: 16)
        let seen = PassThroughFilter.seen(at: top)
        #expect(seen[.read] == 1 && seen[.create] == 1)
    }

    @Test func writesAtScatteredOffsetsReadBack() throws {
        let (_, host) = try defaultTree()
        let f = try host.open("ramdisk0")
        let offsets: [Int64] = [0, 511, 4096, 77_777, 1_000_000]
        for (i, off) in offsets.enumerated() {
            let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 31 + i) }
            let n = min(1000, Int((1 << 20) - off))
            let w = host.write(f, data, offset: off)
            #expect(w.status == .success && w.information == n)
            #expect(host.read(f, count: 1000, offset: off).data == Array(data.prefix(n)))
        }
    }

    @Test func theEndOfTheDisk() throws {
        let (_, host) = try defaultTree(ramdiskSize: 4096)
        let f = try host.open("ramdisk0")
        #expect(host.querySize(f) == 4096)
        let atEnd = host.read(f, count: 10, offset: 4096)
        #expect(atEnd.status == .success && atEnd.data.isEmpty)
        #expect(host.write(f, [1, 2, 3], offset: 4096).status == .diskFull)
        #expect(host.write(f, [1, 2, 3], offset: 5000).status == .diskFull)
        let crossing = host.write(f, [9, 9, 9, 9], offset: 4094)
        #expect(crossing.status == .success && crossing.information == 2)
        #expect(host.read(f, count: 10, offset: 4090).data == [0, 0, 0, 0, 9, 9])
        #expect(host.read(f, count: 1, offset: -1).status == .invalidParameter)
    }

    @Test func diskIoctlsUseTheRealCodesAndLayouts() throws {
        let (_, host) = try defaultTree(ramdiskSize: 1 << 20)
        let f = try host.open("ramdisk0", access: .readData)
        let len = host.deviceIoControl(f, .diskGetLengthInfo, outputLength: 8)
        #expect(len.status == .success && len.information == 8)
        #expect(len.output == [0, 0, 0x10, 0, 0, 0, 0, 0])
        let geo = host.deviceIoControl(f, .diskGetDriveGeometry, outputLength: 24)
        #expect(geo.status == .success && geo.information == 24)
        let u32 = { (o: Int) in geo.output[o..<o + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        #expect(geo.output[0] == 32)  // 1 MiB / (512 * 32 * 2) cylinders
        #expect(u32(8) == 12 && u32(12) == 2 && u32(16) == 32 && u32(20) == 512)
        let ex = host.deviceIoControl(f, .diskGetDriveGeometryEx, outputLength: 64)
        #expect(ex.status == .success && ex.information == 32)
        #expect(ex.output[24..<32] == [0, 0, 0x10, 0, 0, 0, 0, 0])
        #expect(host.deviceIoControl(f, .diskGetLengthInfo, outputLength: 4).status == .bufferTooSmall)
        #expect(host.deviceIoControl(f, ControlCode(rawValue: 0x0007_4FFC), outputLength: 8).status == .invalidDeviceRequest)
    }
}

@Suite struct EchoTests {
    @Test func bytesComeBackInOrder() throws {
        let (_, host) = try defaultTree(echoBuffer: 64)
        let f = try host.open("echo")
        #expect(host.write(f, Array("hello ".utf8)).information == 6)
        #expect(host.write(f, Array("world".utf8)).information == 5)
        #expect(host.read(f, count: 4).data == Array("hell".utf8))
        #expect(host.read(f, count: 100).data == Array("o world".utf8))
    }

    @Test func aReadWithNoDataPendsUntilAWriteArrives() throws {
        let (_, host) = try defaultTree()
        let reader = try host.open("echo")
        let writer = try host.open("echo")
        let pending = host.beginRead(reader, count: 10)
        #expect(!pending.wait(seconds: 0.05))
        #expect(host.write(writer, [1, 2, 3]).information == 3)
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .success && pending.data == [1, 2, 3])
    }

    @Test func aPendingReadIsCancelled() throws {
        let (_, host) = try defaultTree()
        let f = try host.open("echo")
        let pending = host.beginRead(f, count: 10)
        #expect(pending.cancel())
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
        // The device still works afterwards.
        #expect(host.write(f, [5]).information == 1)
        #expect(host.read(f, count: 1).data == [5])
    }

    @Test func aWriteIntoAFullBufferWaitsForAReader() throws {
        let (io, host) = try defaultTree(echoBuffer: 16)
        let f = try host.open("echo")
        #expect(host.write(f, Array(repeating: 1, count: 20)).information == 16)  // short: room for 16
        // The next write pends; complete it from another thread by reading.
        let done = Recorder()
        let t = Thread { done.add("\(host.write(f, [2, 2]).information)") }
        t.start()
        Thread.sleep(forTimeInterval: 0.05)
        #expect(done.all.isEmpty)
        #expect(host.read(f, count: 16).data.count == 16)
        for _ in 0..<200 where done.all.isEmpty { Thread.sleep(forTimeInterval: 0.01) }
        #expect(done.all == ["2"])
        #expect(host.read(f, count: 16).data == [2, 2])
        #expect(io.verifier.count == 0)
    }

    @Test func cleanupCancelsTheHandlesWaitingReads() throws {
        let (_, host) = try defaultTree()
        let f = try host.open("echo")
        let pending = host.beginRead(f, count: 10)
        host.close(f)
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
    }
}

@Suite struct IoctlDemoTests {
    @Test(arguments: TransferMethod.allCases)
    func everyMethodGivesTheSameExchange(method: TransferMethod) throws {
        let (io, host) = try defaultTree()
        let f = try host.open("ioctl-demo")
        let r = host.deviceIoControl(f, IoctlDemoDriver.upperCode(method), input: Array("Hello, wdm!".utf8), outputLength: 11)
        #expect(r.status == .success)
        #expect(String(decoding: r.output, as: UTF8.self) == "HELLO, WDM!")
        let counts = host.deviceIoControl(f, IoctlDemoDriver.queryCounts, outputLength: 32).output
        #expect(counts[Int(method.rawValue) * 8] == 1)
        #expect(io.statistics.bytesCopied == 0)
    }

    @Test func aShortOutputBufferGivesBufferOverflowWithPartialData() throws {
        let (_, host) = try defaultTree()
        let f = try host.open("ioctl-demo")
        let r = host.deviceIoControl(f, IoctlDemoDriver.upperCode(.buffered), input: Array("abcdef".utf8), outputLength: 3)
        #expect(r.status == .bufferOverflow)
        #expect(r.output == Array("ABC".utf8))
    }

    @Test func aFlushIsAnsweredByTheDriversThatGiveItAQueueAndFailedByTheFrameworkElsewhere() throws {
        let (_, host) = try defaultTree()
        for name in ["null", "zero"] { #expect(host.flush(try host.open(name)) == .success, "\(name)") }
        #expect(host.flush(try host.open("ioctl-demo")) == .invalidDeviceRequest)  // KMDF's default handler
    }

    @Test func aWaiterIsReleasedBySignalWithItsOutputAndCancelledWithItsHandle() throws {
        let (io, host) = try defaultTree()
        let f = try host.open("ioctl-demo"), g = try host.open("ioctl-demo")
        let first = host.beginDeviceIoControl(f, IoctlDemoDriver.waitForSignal, outputLength: 3)
        let second = host.beginDeviceIoControl(g, IoctlDemoDriver.waitForSignal, outputLength: 8)
        let gone = host.beginDeviceIoControl(g, IoctlDemoDriver.waitForSignal, outputLength: 8)
        #expect(first.pended && second.pended && gone.pended)
        #expect(!first.wait(seconds: 0.05))
        #expect(gone.cancel() && gone.wait() && gone.status == .cancelled)
        let signal = host.deviceIoControl(f, IoctlDemoDriver.signalWaiters, input: Array("hello".utf8), outputLength: 4)
        #expect(signal.status == .success && signal.output == [2, 0, 0, 0])
        #expect(first.wait() && first.status == .success && first.data == Array("hel".utf8))
        #expect(second.wait() && second.status == .success && second.data == Array("hello".utf8))
        let left = host.beginDeviceIoControl(g, IoctlDemoDriver.waitForSignal, outputLength: 8)
        host.close(g)
        #expect(left.wait() && left.status == .cancelled)
        #expect(host.deviceIoControl(f, IoctlDemoDriver.signalWaiters, input: [1]).information == 0)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }

    @Test func aWaiterLeftAtRemoveIsCancelledAsKMDFsDrainCancelsAManualQueue() throws {
        let (io, host) = try defaultTree()
        let f = try host.open("ioctl-demo")
        let waiter = host.beginDeviceIoControl(f, IoctlDemoDriver.waitForSignal, outputLength: 4)
        #expect(waiter.pended && !waiter.wait(seconds: 0.05))
        // An open handle vetoes a disable; the tree torn down (unmount) removes the device anyway.
        #expect(io.disable(try #require(io.allDeviceNodes.first { $0.instanceName == "ioctl-demo" })).vetoType == .outstandingOpen)
        #expect(!waiter.wait(seconds: 0.05))
        io.unloadAll()
        #expect(waiter.wait() && waiter.status == .cancelled)
    }

    @Test func resetNeedsWriteAccess() throws {
        let (_, host) = try defaultTree()
        let ro = try host.open("ioctl-demo", access: .readData)
        #expect(IoctlDemoDriver.resetCounts.rawValue == 0x0022_A044)
        #expect(IoctlDemoDriver.queryCounts.rawValue == 0x0022_6040)
        #expect(host.deviceIoControl(ro, IoctlDemoDriver.resetCounts).status == .accessDenied)
        #expect(host.deviceIoControl(ro, IoctlDemoDriver.queryCounts, outputLength: 32).status == .success)
    }
}

@Suite struct UpperCaseTests {
    @Test func wordAtATimeUpperCaseMatchesByteAtATimeForEveryByte() {
        // Every byte value at every position of a word, plus a ragged tail.
        var input = [UInt8](0...255) + [UInt8](0...255).reversed() + Array("mixed Case {z}`a@".utf8)
        let expected = input.map { ($0 >= 0x61 && $0 <= 0x7A) ? $0 - 0x20 : $0 }
        input.withUnsafeMutableBytes { raw in
            IoctlDemoDriver.upperCase(from: raw.baseAddress!, to: raw.baseAddress!, count: raw.count)
        }
        #expect(input == expected)
    }
}

@Suite struct EchoStressTests {
    /// Readers that get cancelled, readers that get data and writers, all at once:
    /// every IRP ends exactly once (cancelled or with data), nothing is lost or
    /// duplicated, and the verifier sees nothing wrong.
    @Test func cancelsRacingWithCompletionsLoseNothing() throws {
        let (io, host) = try defaultTree(echoBuffer: 256)
        let rounds = 400
        let file = try host.open("echo")
        let received = Recorder()
        let group = DispatchGroup()
        for i in 0..<rounds {
            group.enter()
            DispatchQueue.global().async {
                let pending = host.beginRead(file, count: 8)
                if i % 2 == 0 { pending.cancel() }
                if pending.wait(seconds: 10) {
                    if pending.status == .success { received.add(String(decoding: pending.data, as: UTF8.self)) }
                    else { received.add(pending.status == .cancelled ? "<cancelled>" : "<\(pending.status)>") }
                } else {
                    received.add("<stuck>")
                }
                group.leave()
            }
        }
        // Feed one byte per reader that was not cancelled, and keep feeding until all are done.
        var sent = 0
        let writer = try host.open("echo")
        while group.wait(timeout: .now() + 0.001) == .timedOut {
            if host.write(writer, Array("x".utf8)).information == 1 { sent += 1 }
            if sent > rounds * 4 { break }
        }
        #expect(group.wait(timeout: .now() + 10) == .success)
        let results = received.all
        #expect(results.count == rounds)
        #expect(!results.contains("<stuck>"))
        #expect(results.allSatisfy { $0 == "<cancelled>" || $0.allSatisfy { $0 == "x" } })
        // Every byte written was either read or is still buffered.
        let read = results.filter { $0 != "<cancelled>" }.map(\.count).reduce(0, +)
        let ext = file.deviceObject.topOfStack.deviceExtension(as: EchoDriver.Extension.self)
        #expect(read + ext.buffered == sent)
        #expect(ext.readers.count == 0)
        #expect(io.verifier.count == 0)
    }
}

@Suite struct ReadinessTests {
    final class Observer: ReadinessObserver, @unchecked Sendable {
        let seen = Recorder()
        func readinessChanged(_ device: DeviceObject) { seen.add(device.driverObject.name) }
    }

    @Test func echoReportsReadinessAndSaysWhenItChanges() throws {
        let (io, host) = try defaultTree(echoBuffer: 4)
        let observer = Observer()
        io.readinessObserver = observer
        let f = try host.open("echo")
        #expect(io.readiness(of: f) == .writable)
        _ = host.write(f, [1, 2, 3, 4])
        #expect(io.readiness(of: f) == .readable)  // full: not writable
        #expect(observer.seen.all == ["\\Driver\\Echo"])
        _ = host.read(f, count: 1)
        #expect(io.readiness(of: f) == [.readable, .writable])
        #expect(observer.seen.all.count == 2)
        // Devices that never pend are always ready; filters are transparent.
        #expect(io.readiness(of: try host.open("ramdisk0")) == [.readable, .writable])
    }
}

@Suite struct TeardownTests {
    /// Builds the default tree, uses it, and drops it: everything it built is freed
    /// (the PnP issue builds and tears down devices thousands of times).
    func buildUseAndDrop() throws -> (devices: [() -> AnyObject?], drivers: [() -> AnyObject?]) {
        let io = IOManager()
        try DefaultTree.build(into: io, options: .init(ramdiskSize: 1 << 20, test: true))
        let host = EmbeddedHost(io)
        for link in io.symbolicLinks {
            let f = try host.open(link)
            if ["zero", "null", "ramdisk0"].contains(link) { _ = host.read(f, count: 1) }
            if link == "echo" { _ = host.write(f, [1, 2, 3]) }
            host.close(f)
        }
        let devices = io.loadedDrivers.flatMap(\.deviceObjects).map { d in { [weak d] in d as AnyObject? } }
        let drivers = io.loadedDrivers.map { d in { [weak d] in d as AnyObject? } }
        return (devices, drivers)
    }

    @Test func aTreeThatIsDroppedFreesItsDevicesAndDrivers() throws {
        for _ in 0..<50 {
            let (devices, drivers) = try buildUseAndDrop()
            #expect(!devices.isEmpty)
            #expect(devices.allSatisfy { $0() == nil })
            #expect(drivers.allSatisfy { $0() == nil })
        }
    }

    @Test func unloadingFreesEverythingAndRunsEveryUnload() throws {
        let io = IOManager()
        try DefaultTree.build(into: io)
        let devices = io.loadedDrivers.flatMap(\.deviceObjects).map { d in { [weak d] in d as AnyObject? } }
        io.unloadAll()
        #expect(devices.allSatisfy { $0() == nil })
        #expect(io.loadedDrivers.isEmpty)
    }
}
