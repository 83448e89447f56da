// The fault-injection filters over a RAM disk (and the host-file disk), in
// process: which requests the error filter fails and with what, the seeds that
// make a failure or a corruption reproducible, the trigger file, the delay and
// its cancel, the rate's waits, the settings files, and filters attached to and
// detached from a stack while readers stream from it.

import DefaultTree
import FaultFilters
import Foundation
import Synchronization
import Testing
import WDM
import WDMTesting

/// A RAM disk `d` of `size` bytes with `filters` above it and these settings,
/// opened; every byte at offset i holds i % 251.
func faultDisk(_ filters: [String], _ settings: [String: String] = [:], size: Int = 1 << 20)
    throws -> (io: IOManager, host: EmbeddedHost, file: FileObject, node: DeviceNode) {
    let io = IOManager()
    let d = DeviceDescription(name: "d", hardwareIDs: ["Root\\RamDisk"], upperFilters: filters,
                              settings: settings.merging(["Size": String(size)]) { a, _ in a })
    try TreeDescription(devices: [d]).build(into: io)
    let host = EmbeddedHost(io)
    let file = try host.open("d")
    let node = io.deviceNodes[0]
    return (io, host, file, node)
}

func pattern(_ offset: Int, _ count: Int) -> [UInt8] { (offset..<(offset + count)).map { UInt8($0 % 251) } }

/// Fills the disk with `pattern` below the filters (through a settings-free write
/// with the error filter idle).
func fill(_ host: EmbeddedHost, _ file: FileObject, size: Int) {
    for off in stride(from: 0, to: size, by: 65536) {
        #expect(host.write(file, pattern(off, 65536), offset: Int64(off)).status == .success)
    }
}

/// A settings file of the node's stack by name (`error`).
func settingsFile(_ node: DeviceNode, _ name: String) -> any DeviceSettings {
    node.publishedSettings.first { $0.name == name }!.settings
}

func value(_ settings: any DeviceSettings, _ key: String) -> String? {
    settings.text().split(separator: "\n").first { $0.hasPrefix(key + " ") || $0 == key }.map { String($0.dropFirst(key.count + 1)) }
}

@Suite struct FaultFilterTests {
    @Test func theErrorFilterFailsExactlyTheRequestsThatTouchABadRangeWithItsStatus() throws {
        let (io, host, file, node) = try faultDisk(["ErrorFilter"], ["ErrorRanges": "8K+1K", "ErrorStatus": "STATUS_CRC_ERROR"])
        let error = settingsFile(node, "error")
        #expect(error.apply("rate 0") == nil)
        fill(host, file, size: 1 << 20)
        #expect(error.apply("rate 1") == nil)
        // Sector by sector around the range: exactly 8192..<9216 fails.
        for sector in 14..<20 {
            let r = host.read(file, count: 512, offset: Int64(sector * 512))
            #expect(r.status == (16..<18 ~= sector ? .crcError : .success), "sector \(sector)")
            if r.status == .success { #expect(r.data == pattern(sector * 512, 512)) }
        }
        // A request that overlaps it fails whole; writes too; an IOCTL is not a candidate.
        #expect(host.read(file, count: 4096, offset: 6144).status == .crcError)
        #expect(host.write(file, [1, 2, 3], offset: 9215).status == .crcError)
        #expect(host.write(file, [1, 2, 3], offset: 9216).status == .success)
        #expect(host.deviceIoControl(file, .diskGetLengthInfo, outputLength: 8).status == .success)
        #expect(value(error, "failed") == "4")
        // The data under the bad range was never touched.
        #expect(error.apply("rate 0") == nil)
        #expect(host.read(file, count: 1024, offset: 8192).data == pattern(8192, 1024))
        #expect(io.verifier.violations.isEmpty)
    }

    @Test func everyNthAndASeededRateFailTheSameRequestsAgainWithTheSameSeed() throws {
        let (_, host, file, node) = try faultDisk(["ErrorFilter"], ["ErrorEvery": "3", "ErrorMajors": "read"])
        let error = settingsFile(node, "error")
        let every = (1...9).map { _ in host.read(file, count: 512).status == .deviceDataError }
        #expect(every == [false, false, true, false, false, true, false, false, true])
        #expect(error.apply("every 1") == nil)
        func draws(_ seed: Int) -> [Bool] {
            #expect(error.apply("seed \(seed)") == nil)
            return (0..<64).map { _ in host.read(file, count: 512).status.isError }
        }
        #expect(error.apply("rate 0.5") == nil)
        let a = draws(7), b = draws(7), c = draws(8)
        #expect(a == b)
        #expect(a != c)
        #expect((16...48).contains(a.filter { $0 }.count))
    }

    @Test func aTriggerFileTurnsFailingOnAndOff() throws {
        let trigger = NSTemporaryDirectory() + "wdmfs-trigger-\(getpid())"
        unlink(trigger)
        let (_, host, file, node) = try faultDisk(["ErrorFilter"], ["ErrorTrigger": trigger])
        #expect(host.read(file, count: 512).status == .success)
        #expect(FileManager.default.createFile(atPath: trigger, contents: nil))
        #expect(host.read(file, count: 512).status == .deviceDataError)
        unlink(trigger)
        #expect(host.read(file, count: 512).status == .success)
        #expect(value(settingsFile(node, "error"), "trigger") == trigger)
    }

    @Test func aSettingsFileRefusesABadLineSayingWhyAndKeepsWhatItHad() throws {
        let (io, _, _, node) = try faultDisk(["ErrorFilter", "CorruptFilter"])
        defer { withExtendedLifetime(io) {} }
        let error = settingsFile(node, "error")
        let before = error.text()
        #expect(error.apply("rate 2") == "rate must be a decimal from 0 to 1, not `2`")
        #expect(error.apply("sttaus STATUS_CRC_ERROR")?.hasPrefix("unknown key `sttaus`: the keys are majors, ioctls, ranges, status") == true)
        #expect(error.apply("status STATUS_SUCCESS") == "status must be an error status (STATUS_SUCCESS is not one), not `STATUS_SUCCESS`")
        #expect(error.apply("ranges 10-20") == "ranges must be byte ranges OFFSET+LENGTH (bytes, or with K, M or G: 1M+4K), comma-separated, or all, not `10-20`")
        #expect(error.apply("majors read,wirte")?.hasPrefix("majors must be major functions from create, read, write") == true)
        #expect(error.apply("trigger relative/path") == "trigger must be an absolute path, or none, not `relative/path`")
        #expect(error.text() == before)
        #expect(error.apply("status 0xC000003F") == nil)
        #expect(value(error, "status") == "STATUS_CRC_ERROR")
        // Each filter's file is under the node: its own name, the stack's top first.
        #expect(node.publishedSettings.map(\.name) == ["corrupt", "error"])
    }

    @Test func aBadSettingInTheTreeIsRefusedWhereItIsWritten() {
        let text = "devices:\n  - name: d\n    hardware_ids: ['Root\\RamDisk']\n    upper_filters: [ErrorFilter]\n    settings: {ErrorRate: 'often'}\n"
        let e = treeRejection(text)
        #expect(e?.description.contains("t.yaml:5:") == true)
        #expect(e?.description.hasSuffix("setting `ErrorRate` of \\Driver\\ErrorFilter must be a decimal from 0 to 1, not `often`") == true, "\(String(describing: e))")
    }

    @Test func theDelayFilterHoldsARequestPendingAndACancelEndsTheWait() throws {
        let (io, host, file, node) = try faultDisk(["DelayFilter"], ["DelayMs": "60"])
        let clock = ContinuousClock()
        let took = clock.measure { #expect(host.read(file, count: 512).status == .success) }
        #expect(took >= .milliseconds(60))
        #expect(settingsFile(node, "delay").apply("ms 600000") == nil)
        let pending = host.beginRead(file, count: 512)
        #expect(pending.cancel())
        #expect(pending.wait(seconds: 5))
        #expect(pending.status == .cancelled)
        #expect(value(settingsFile(node, "delay"), "delayed") == "2")
        #expect(io.verifier.violations.isEmpty)
    }

    @Test func theRateFilterMakesRequestsWaitTheirShareOfTheLimit() throws {
        let (_, host, file, node) = try faultDisk(["RateFilter"], ["RateLimit": "4M"])
        let clock = ContinuousClock()
        // 1 MiB in 8 reads at 4 MiB/s: the last goes down 7/32 s after the first.
        let took = clock.measure {
            for i in 0..<8 { #expect(host.read(file, count: 131072, offset: Int64(i * 131072)).status == .success) }
        }
        #expect(took >= .milliseconds(210))
        let rate = settingsFile(node, "rate")
        #expect(value(rate, "bytes") == "1048576")
        // Each read that came before its time waited (on a busy machine one may come after it).
        #expect(value(rate, "waited").flatMap(Int.init).map { (1...7).contains($0) } == true)
        #expect(rate.apply("limit 0") != nil)
    }

    @Test func theCorruptFilterFlipsTheSameBitsForTheSameSeedWhateverTheReadSizes() throws {
        let (_, host, file, node) = try faultDisk(["CorruptFilter"], ["CorruptRate": "0", "CorruptSeed": "3"], size: 256 << 10)
        fill(host, file, size: 256 << 10)
        let corrupt = settingsFile(node, "corrupt")
        #expect(host.read(file, count: 65536).data == pattern(0, 65536))
        #expect(corrupt.apply("rate 0.01") == nil)
        let whole = host.read(file, count: 65536).data
        let pieces = stride(from: 0, to: 65536, by: 1536).flatMap { host.read(file, count: min(1536, 65536 - $0), offset: Int64($0)).data }
        #expect(whole == pieces)
        let clean = pattern(0, 65536)
        let hit = zip(whole, clean).filter { $0 != $1 }
        // About 1 percent of the bytes, each with exactly one bit flipped.
        #expect((400...900).contains(hit.count), "\(hit.count) bytes hit")
        #expect(hit.allSatisfy { ($0 ^ $1).nonzeroBitCount == 1 })
        #expect(corrupt.apply("seed 4") == nil)
        #expect(host.read(file, count: 65536).data != whole)
        #expect(value(corrupt, "flipped").flatMap(Int.init).map { $0 >= hit.count * 2 } == true)
    }

    /// Readers stream from the disk while a filter is attached and detached over
    /// and over: every read completes once, with the right data.
    @Test func filtersAttachedAndDetachedWhileReadersStreamLoseAndRepeatNothing() throws {
        let size = 1 << 20
        // Each filter attaches with the node's settings: a delay of 1 ms, no errors.
        let (io, host, file, node) = try faultDisk([], ["ErrorRate": "0", "DelayMs": "1"], size: size)
        fill(host, file, size: size)
        let delay = try io.loadDriver(name: "DelayFilter", entry: DelayFilter.driverEntry)
        let error = try io.loadDriver(name: "ErrorFilter", entry: ErrorFilter.driverEntry)
        let stop = Atomic<Bool>(false), reads = Atomic<Int>(0), bad = Atomic<Int>(0)
        let readers = (0..<3).map { r in
            Thread {
                var i = r
                while !stop.load(ordering: .relaxed) {
                    let off = (i * 4096) % size
                    let got = host.read(file, count: 4096, offset: Int64(off))
                    if got.status != .success || got.data != pattern(off, 4096) { bad.add(1, ordering: .relaxed) }
                    reads.add(1, ordering: .relaxed)
                    i += 3
                }
            }
        }
        readers.forEach { $0.start() }
        for round in 0..<40 {
            let filter = round % 2 == 0 ? delay : error
            #expect(io.attachFilter(filter, to: node).isSuccess)
            let mark = reads.load(ordering: .relaxed)
            #expect(waitUntil { reads.load(ordering: .relaxed) > mark + 3 })
            #expect(io.detachFilter(named: filter.name, from: node).isSuccess)
        }
        stop.store(true, ordering: .relaxed)
        #expect(waitUntil { readers.allSatisfy(\.isFinished) })
        #expect(bad.load(ordering: .relaxed) == 0)
        #expect(reads.load(ordering: .relaxed) > 120)
        #expect(io.pnp.snapshot.node(named: "d")?.stack.count == 2)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
        _ = host.close(file)
        io.unloadAll()
    }

    @Test func onlyAFilterOfARunningStackCanBeDetachedAndAttachNeedsAStartedDevice() throws {
        let (io, host, file, node) = try faultDisk(["ErrorFilter"])
        _ = host.close(file)
        #expect(io.detachFilter(named: "RamDisk", from: node).status == .invalidDeviceRequest)
        #expect(io.detachFilter(named: "DelayFilter", from: node).status == .noSuchDevice)
        #expect(io.detachFilter(named: "ErrorFilter", from: node).isSuccess)
        #expect(io.pnp.snapshot.node(named: "d")?.stack.first == "\\Driver\\RamDisk")
        // Through a restart the attached filter stays, a detached one stays away.
        let delay = try io.loadDriver(name: "DelayFilter", entry: DelayFilter.driverEntry)
        #expect(io.attachFilter(delay, to: node).isSuccess)
        #expect(io.restart(node).isSuccess)
        let restarted = io.deviceNodes[0]
        #expect(io.pnp.snapshot.node(named: "d")?.stack.prefix(2) == ["\\Driver\\DelayFilter", "\\Driver\\RamDisk"])
        #expect(io.disable(restarted).isSuccess)
        #expect(io.attachFilter(delay, to: restarted).status == .invalidDeviceState)
        #expect(io.verifier.violations.isEmpty, "\(io.verifier.violations)")
    }
}
