// The IRP trace in process: a reader of the trace device sees every event of
// every IRP at every stack location, in order; each reader gets the whole
// stream, through its own filter; a reader that does not read loses events,
// counted and said in its stream, while the I/O goes on; a read waiting for
// events is cancellable; with no reader the tracer is not installed.

import DefaultTree
import Foundation
import Testing
import WDM
import WDMTesting

/// A RAM disk `d` under a corrupt filter (copies its location, sets a completion
/// routine) and an error filter (skips its location), opened, and the trace device.
func tracedDisk() throws -> (io: IOManager, host: EmbeddedHost, file: FileObject) {
    let io = IOManager()
    let d = DeviceDescription(name: "d", hardwareIDs: ["Root\\RamDisk"], upperFilters: ["CorruptFilter", "ErrorFilter"],
                              settings: ["Size": "65536", "CorruptRate": "0", "ErrorRate": "0"])
    try TreeDescription(devices: [d, DeviceDescription(name: "z", hardwareIDs: ["Root\\Zero"])]).build(into: io)
    try io.createTraceDevice()
    let host = EmbeddedHost(io)
    return (io, host, try host.open("d"))
}

/// Reads what a trace handle has now (one read; it must not wait).
func drain(_ host: EmbeddedHost, _ trace: FileObject) -> [String] {
    let r = host.read(trace, count: 1 << 20)
    #expect(r.status == .success)
    return String(decoding: r.data, as: UTF8.self).split(separator: "\n").map(String.init)
}

/// The lines without their time, `#N` and the IRPs before `from`.
func shape(_ lines: [String]) -> [String] {
    lines.map { $0.split(separator: " ").dropFirst(2).joined(separator: " ") }
}

@Suite struct TraceTests {
    @Test func aReadIsTracedDownAndUpThroughEveryStackLocation() throws {
        let (io, host, file) = try tracedDisk()
        #expect(!io.isTracing)
        let trace = try host.open(TraceDevice.link)
        #expect(io.isTracing)
        #expect(host.read(file, count: 512, offset: 1024).status == .success)
        let lines = drain(host, trace)
        #expect(shape(lines).map { $0.hasPrefix("done ") ? String($0[..<$0.range(of: "time=")!.upperBound]) + "*" : $0 } == [
            "call IRP_MJ_READ 4/4 \\Driver\\ErrorFilter d offset=1024 length=512",
            "call IRP_MJ_READ 4/4 \\Driver\\CorruptFilter d",
            "call IRP_MJ_READ 3/4 \\Driver\\RamDisk d",
            "complete IRP_MJ_READ 3/4 \\Driver\\RamDisk d STATUS_SUCCESS information=512",
            "routine IRP_MJ_READ 4/4 \\Driver\\CorruptFilter d STATUS_SUCCESS",
            "done IRP_MJ_READ d STATUS_SUCCESS information=512 time=*",
        ] + [
            "return IRP_MJ_READ 3/4 \\Driver\\RamDisk d STATUS_SUCCESS",
            "return IRP_MJ_READ 4/4 \\Driver\\CorruptFilter d STATUS_SUCCESS",
            "return IRP_MJ_READ 4/4 \\Driver\\ErrorFilter d STATUS_SUCCESS",
        ])
        // The time the IRP took is on its `done` line; every line names the same IRP.
        #expect(lines[5].contains(" time=") && lines[5].hasSuffix("ms"))
        #expect(Set(lines.map { $0.split(separator: " ")[1] }).count == 1)
        // An IOCTL by the name the disk driver gives it.
        _ = host.deviceIoControl(file, .diskGetLengthInfo, outputLength: 8)
        #expect(drain(host, trace).first?.hasSuffix("ioctl=IOCTL_DISK_GET_LENGTH_INFO in=0 out=8") == true)
        _ = host.close(trace)
        #expect(!io.isTracing)
        // The trace device's own IRPs are not in the trace.
        let again = try host.open(TraceDevice.link)
        _ = host.read(file, count: 512)
        #expect(!drain(host, again).contains { $0.contains("Trace") })
        _ = host.close(again)
    }

    @Test func eachReaderGetsTheWholeStreamThroughItsOwnFilter() throws {
        let (_, host, file) = try tracedDisk()
        let all = try host.open(TraceDevice.link), zero = try host.open(TraceDevice.link), writes = try host.open(TraceDevice.link)
        #expect(host.write(zero, Array("device z\n".utf8)).status == .success)
        #expect(host.write(writes, Array("major write".utf8)).status == .success)
        #expect(host.write(writes, Array("major sideways".utf8)).status == .invalidParameter)
        let z = try host.open("z")
        _ = host.read(z, count: 16)
        _ = host.read(file, count: 16)
        _ = host.write(file, [1, 2, 3])
        let a = drain(host, all), b = drain(host, zero), c = drain(host, writes)
        #expect(a.contains { $0.contains("IRP_MJ_READ") && $0.contains(" z ") })
        #expect(a.contains { $0.contains("IRP_MJ_WRITE") })
        #expect(!b.isEmpty && b.allSatisfy { $0.contains(" z") && !$0.contains(" d ") })
        #expect(!c.isEmpty && c.allSatisfy { $0.contains("IRP_MJ_WRITE") })
        #expect(a.count == b.count + c.count + 9)  // + d's read
        #expect(host.write(writes, Array("all".utf8)).status == .success)
        _ = host.read(z, count: 16)
        #expect(drain(host, writes).contains { $0.contains("IRP_MJ_READ") })
    }

    @Test func aReaderThatFallsBehindLosesEventsCountedAndSaidWhileTheIOGoesOn() throws {
        let (io, host, file) = try tracedDisk()
        io.traceReaderCapacity = 4096
        let slow = try host.open(TraceDevice.link)
        for i in 0..<200 { #expect(host.read(file, count: 512, offset: Int64(i % 64) * 512).status == .success) }
        let first = drain(host, slow)
        #expect(first.joined(separator: "\n").utf8.count <= 4096)
        #expect(io.traceReaders.lost > 1000)
        // The next event that fits says how many did not.
        _ = host.read(file, count: 512)
        let next = drain(host, slow)
        #expect(next.first.map { $0.split(separator: " ").dropFirst().first == "lost" } == true, "\(next.first ?? "")")
        // Every loss is said, once: the `lost N` lines add up to the count.
        let said = (first + next).filter { $0.split(separator: " ").dropFirst().first == "lost" }.compactMap { Int($0.split(separator: " ").last ?? "") }
        #expect(said.reduce(0, +) == io.traceReaders.lost, "\(said)")
    }

    @Test func aReadWaitsForEventsAndACancelEndsTheWait() throws {
        let (_, host, file) = try tracedDisk()
        let trace = try host.open(TraceDevice.link)
        let waiting = host.beginRead(trace, count: 65536)
        #expect(waiting.status == .pending)
        _ = host.read(file, count: 512)
        #expect(waiting.wait(seconds: 5))
        #expect(waiting.status == .success && String(decoding: waiting.data, as: UTF8.self).contains("call IRP_MJ_READ 4/4"))
        // A reader opened now has nothing yet: its read waits until cancelled.
        let idle = try host.open(TraceDevice.link)
        let cancelled = host.beginRead(idle, count: 65536)
        #expect(cancelled.status == .pending)
        #expect(cancelled.cancel())
        #expect(cancelled.wait(seconds: 5))
        #expect(cancelled.status == .cancelled)
    }
}
