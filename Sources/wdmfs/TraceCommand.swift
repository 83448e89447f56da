// `wdmfs trace`: streams a mount's IRP trace (`MOUNTPOINT/.trace`), filtered by
// device and major function, pretty-printed or raw; and draws a captured trace
// as a message sequence chart (mscgen), one IRP going down its stack and back up.

import ArgumentParser
import Foundation
import Synchronization

struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Stream the IRP trace of a mount, or draw a captured trace as a sequence chart.",
        discussion: """
            Every IRP event at every stack location: the call down (location/count, driver,
            device), the return of each dispatch routine, the completion, each completion
            routine, the IRP's return to its requester with its time, cancels.
            Examples:
              wdmfs trace /mnt/wdm --device ramdisk0 --major read --irps 1
              wdmfs trace /mnt/wdm --device ramdisk0 -- dd if=/mnt/wdm/ramdisk0 of=/dev/null count=1
              wdmfs trace /mnt/wdm --raw --save dd.trace &     # capture, then run the I/O
              wdmfs trace --chart dd.trace --irp 2 --output read.svg
            With a COMMAND after --, the trace is open before the command starts, and ends
            once the command has exited and its IRPs are back (exit status: the command's).
            The raw lines are what `MOUNTPOINT/.trace` streams (docs/tracing.md); a reader
            that falls behind loses events, and its stream says `lost N`. --major takes
            read, write, ioctl, pnp, power, create, close, cleanup, flush, ... or IRP_MJ_ names.
            """)

    @Argument(help: "The mount point whose IRPs to trace.")
    var mountpoint: String?

    @Option(help: "Only this device node's IRPs (its instance name; repeatable).")
    var device: [String] = []

    @Option(help: "Only this major function's IRPs (repeatable).")
    var major: [String] = []

    @Option(help: "Stop after this many IRPs went back to their requester.")
    var irps: Int?

    @Flag(help: "Print the trace's own lines instead of the indented view.")
    var raw = false

    @Option(help: "Also write the raw lines to this file (a capture for --chart).")
    var save: String?

    @Option(help: "Draw this captured trace (raw lines) instead of streaming one.")
    var chart: String?

    @Option(help: "With --chart: the IRP to draw (its #number); by default the first read, write or IOCTL with the most calls down.")
    var irp: Int?

    @Option(help: "With --chart: the picture to write (.svg or .png; .msc writes mscgen's input).")
    var output: String?

    @Argument(parsing: .postTerminator, help: "A command to trace (after --): the trace ends when it has exited.")
    var command: [String] = []

    func validate() throws {
        if chart == nil && mountpoint == nil { throw ValidationError("give a MOUNTPOINT to trace, or --chart CAPTURE") }
        if chart != nil && mountpoint != nil { throw ValidationError("--chart draws a capture: give no MOUNTPOINT") }
        if chart != nil && output == nil { throw ValidationError("--chart needs --output FILE (.svg, .png or .msc)") }
        if let irps, irps < 1 { throw ValidationError("--irps must be at least 1") }
        if chart != nil && !command.isEmpty { throw ValidationError("--chart draws a capture: give no command") }
    }

    func run() throws {
        if let chart {
            try drawChart(chart)
            return
        }
        let path = mountpoint! + "/.trace"
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { fail("\(path): \(String(cString: strerror(errno))) (is \(mountpoint!) a wdmfs mount?)") }
        defer { close(fd) }
        var filter: [String] = []
        if !device.isEmpty { filter.append("device " + device.joined(separator: ",")) }
        if !major.isEmpty { filter.append("major " + major.joined(separator: ",")) }
        if !filter.isEmpty {
            let text = Array((filter.joined(separator: "\n") + "\n").utf8)
            guard text.withUnsafeBytes({ Foundation.write(fd, $0.baseAddress, $0.count) }) == text.count else {
                fail("the trace refused the filter \(filter.joined(separator: "; ")) (a major function it does not know?)")
            }
        }
        let saved = save.map { FileManager.default.createFile(atPath: $0, contents: nil) ? FileHandle(forWritingAtPath: $0) : nil } ?? nil
        if save != nil && saved == nil { fail("cannot write \(save!)") }
        var view = TraceView()
        var pending = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        let child = command.isEmpty ? nil : startTracedCommand(fd)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN {
                // The command has exited and the trace holds nothing more: done, unless
                // an IRP is back but a dispatch routine's return is still to come.
                if view.back.isEmpty { break }
                _ = fcntl(fd, F_SETFL, 0)
                continue
            }
            guard n > 0 else { break }
            pending += buffer[0..<n]
            while let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                saved?.write(Data((line + "\n").utf8))
                // Each line as it comes (unbuffered: a pipe's reader sees it at once).
                let shown = view.pretty(line)
                FileHandle.standardOutput.write(Data(((raw ? line : shown) + "\n").utf8))
                if let irps, view.done >= irps { return }
            }
            if let child, child.exited.load(ordering: .acquiring), view.back.isEmpty { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
        }
        if let child, child.process.terminationStatus != 0 { throw ExitCode(child.process.terminationStatus) }
    }

    func drawChart(_ capture: String) throws {
        guard let text = try? String(contentsOfFile: capture, encoding: .utf8) else { fail("cannot read \(capture)") }
        let events = text.split(separator: "\n").compactMap { TraceEvent(String($0)) }
        guard !events.isEmpty else { fail("\(capture) holds no trace lines") }
        let chosen: Int
        if let irp {
            guard events.contains(where: { $0.irp == irp }) else { fail("\(capture) has no IRP #\(irp)") }
            chosen = irp
        } else {
            // The first read, write or IOCTL with the most calls down, else the first IRP with the most.
            let data: Set<String> = ["IRP_MJ_READ", "IRP_MJ_WRITE", "IRP_MJ_DEVICE_CONTROL", "IRP_MJ_INTERNAL_DEVICE_CONTROL"]
            let calls = Dictionary(grouping: events.filter { $0.event == "call" }, by: \.irp)
                .map { (irp: $0.key, rank: (data.contains($0.value[0].label) ? 1000 : 0) + $0.value.count) }
            chosen = calls.max { a, b in a.rank != b.rank ? a.rank < b.rank : a.irp > b.irp }?.irp ?? events[0].irp
        }
        let msc = SequenceChart.mscgen(events.filter { $0.irp == chosen })
        let out = output!
        if out.hasSuffix(".msc") {
            guard FileManager.default.createFile(atPath: out, contents: Data(msc.utf8)) else { fail("cannot write \(out)") }
            print("\(out): IRP #\(chosen)")
            return
        }
        let format = out.hasSuffix(".png") ? "png" : out.hasSuffix(".svg") ? "svg" : ""
        guard !format.isEmpty else { fail("--output must end in .svg, .png or .msc") }
        let source = NSTemporaryDirectory() + "wdmfs-chart-\(getpid()).msc"
        guard FileManager.default.createFile(atPath: source, contents: Data(msc.utf8)) else { fail("cannot write \(source)") }
        defer { unlink(source) }
        try render(["mscgen", "-T", format, "-o", out, source], package: "mscgen")
        print("\(out): IRP #\(chosen)")
    }

    /// Starts the command to trace. When it exits, reads of the trace stop waiting
    /// (O_NONBLOCK, and SIGUSR1 breaks the read that waits now).
    func startTracedCommand(_ fd: Int32) -> TracedCommand {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0  // no SA_RESTART: the read returns EINTR
        sigaction(SIGUSR1, &action, nil)
        let child = TracedCommand(reader: pthread_self())
        child.process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        child.process.arguments = command
        do {
            try child.process.run()
        } catch {
            fail("cannot run \(command[0]): \(error)")
        }
        Thread.detachNewThread {
            child.process.waitUntilExit()
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            child.exited.store(true, ordering: .releasing)
            pthread_kill(child.reader, SIGUSR1)
        }
        return child
    }
}

/// The command `wdmfs trace ... -- COMMAND` runs, and whether it has exited.
final class TracedCommand: @unchecked Sendable {
    let process = Process()
    let exited = Atomic<Bool>(false)
    let reader: pthread_t
    init(reader: pthread_t) { self.reader = reader }
}

/// Runs a picture tool; exits 2 with a clear word when it is missing or fails.
func render(_ command: [String], package: String) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = command
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    do {
        try p.run()
    } catch {
        fail("cannot run \(command[0]): \(error) (apt-get install \(package))")
    }
    p.waitUntilExit()
    let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    if p.terminationStatus == 127 { fail("\(command[0]) is not installed (apt-get install \(package))") }
    if p.terminationStatus != 0 { fail("\(command[0]) failed: \(message.trimmingCharacters(in: .whitespacesAndNewlines))") }
}

/// One line of the trace, taken apart.
struct TraceEvent {
    let time: String
    let irp: Int
    let event: String
    let label: String
    /// `3/3` for events at a location, "" otherwise.
    let location: String
    let driver: String
    let device: String
    /// The rest: the status and KEY=VALUE words.
    let rest: [String]

    init?(_ line: String) {
        let w = line.split(separator: " ").map(String.init)
        guard w.count >= 4, w[1].hasPrefix("#"), let n = Int(w[1].dropFirst()) else { return nil }
        time = w[0]
        irp = n
        event = w[2]
        label = w[3]
        if w.count >= 7, w[4].contains("/"), w[5].hasPrefix("\\") {
            location = w[4]
            driver = w[5]
            device = w[6]
            rest = Array(w.dropFirst(7))
        } else {
            location = ""
            driver = ""
            device = w.count > 4 ? w[4] : ""
            rest = Array(w.dropFirst(5))
        }
    }

    var status: String { rest.first { $0.hasPrefix("STATUS_") || $0.hasPrefix("0x") } ?? "" }
    var parameters: [String] { rest.filter { $0.contains("=") } }
    /// `RamDisk` for `\Driver\RamDisk`.
    var shortDriver: String { driver.split(separator: "\\").last.map(String.init) ?? driver }
}

/// The indented view: each IRP's calls nested as they nest.
struct TraceView {
    var depth: [Int: Int] = [:]
    /// IRPs back with their requester whose dispatch routines all returned.
    var done = 0
    var back: Set<Int> = []

    mutating func finish(_ irp: Int) {
        if back.contains(irp), depth[irp, default: 0] <= 0 {
            back.remove(irp)
            depth[irp] = nil
            done += 1
        }
    }

    mutating func pretty(_ line: String) -> String {
        guard let e = TraceEvent(line) else { return line }
        let d = depth[e.irp, default: 0]
        func at(_ n: Int) -> String { String(repeating: "  ", count: max(n, 0)) }
        let head = "\(e.time) #\(e.irp) \(e.label) "
        switch e.event {
        case "call":
            depth[e.irp] = d + 1
            return head + at(d) + "-> \(e.location) \(e.driver) (\(e.device))" + e.parameters.map { " " + $0 }.joined()
        case "return":
            depth[e.irp] = d - 1
            finish(e.irp)
            return head + at(d - 1) + "<- \(e.location) \(e.driver) returned \(e.status)"
        case "complete":
            return head + at(d) + "IoCompleteRequest at \(e.location) by \(e.driver): \(e.status)" + e.parameters.map { " " + $0 }.joined()
        case "routine":
            return head + at(d) + "completion routine of \(e.driver) at \(e.location): \(e.status)"
        case "done":
            back.insert(e.irp)
            finish(e.irp)
            return head + "back to the requester: \(e.status)" + e.parameters.map { " " + $0 }.joined()
        case "cancel":
            return head + "IoCancelIrp"
        default:
            return line
        }
    }
}

/// A message sequence chart of one IRP, in mscgen's language.
enum SequenceChart {
    static func mscgen(_ events: [TraceEvent]) -> String {
        // The entities: the requester (the I/O manager), then each location in the order it was called.
        var entities: [(id: String, label: String)] = [("io", "I/O manager")]
        var ids: [String: String] = [:]
        func entity(_ e: TraceEvent) -> String {
            let key = e.location + " " + e.driver
            if let id = ids[key] { return id }
            let id = "l\(entities.count)"
            ids[key] = id
            entities.append((id, "\(e.shortDriver)\\n\(e.location) \(e.device)"))
            return id
        }
        for e in events where e.event == "call" { _ = entity(e) }
        var arcs: [String] = []
        var callers: [String] = ["io"]
        let title = events.first.map { "#\($0.irp) \($0.label)" } ?? ""
        func quote(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\\\\n", with: "\\n").replacingOccurrences(of: "\"", with: "'") + "\"" }
        for e in events {
            switch e.event {
            case "call":
                let to = entity(e)
                let label = callers.count == 1 ? ([title] + e.parameters).joined(separator: " ") : "IoCallDriver"
                arcs.append("\(callers.last!) => \(to) [label=\(quote(label))]")
                callers.append(to)
            case "return":
                let from = ids[e.location + " " + e.driver] ?? callers.last!
                if callers.count > 1 { callers.removeLast() }
                arcs.append("\(from) >> \(callers.last!) [label=\(quote("returns " + e.status))]")
            case "complete":
                let at = ids[e.location + " " + e.driver] ?? callers.last!
                arcs.append("\(at) rbox \(at) [label=\(quote((["IoCompleteRequest", e.status] + e.parameters).joined(separator: "\\n")))]")
            case "routine":
                let at = ids[e.location + " " + e.driver] ?? callers.last!
                arcs.append("\(at) abox \(at) [label=\(quote("completion routine\\n" + e.status))]")
            case "done":
                arcs.append("io note io [label=\(quote((["done", e.status] + e.parameters).joined(separator: "\\n")))]")
            case "cancel":
                arcs.append("io -x \(callers.last!) [label=\"IoCancelIrp\"]")
            default:
                break
            }
        }
        let header = entities.map { "\($0.id) [label=\(quote($0.label))]" }.joined(separator: ", ")
        return "msc {\n  hscale=\"\(max(1.5, Double(entities.count) / 2.5))\";\n  \(header);\n" + arcs.map { "  " + $0 + ";\n" }.joined() + "}\n"
    }
}
