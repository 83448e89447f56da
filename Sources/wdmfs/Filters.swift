// wdmfs attach / detach: a filter on a running device's stack, through the
// node's `control` file (`attach ErrorFilter`), and its settings through the
// settings file it publishes under the node (`.devices/NODE/error`).

import ArgumentParser
import Foundation

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach a filter to the top of a running device's stack (a wdmfs extension: Windows restarts the stack to add one).",
        discussion: """
            Requests already on their way finish on the stack they started on; new ones go
            through the filter. Settings are KEY=VALUE pairs of the filter's settings file.
            Examples:
              wdmfs attach /mnt/wdm ramdisk0 ErrorFilter ranges=1M+4K
              wdmfs attach /mnt/wdm ramdisk0 DelayFilter ms=50
              cat /mnt/wdm/.devices/ramdisk0/error
            The filters: ErrorFilter (error), DelayFilter (delay), RateFilter (rate),
            CorruptFilter (corrupt), PassThroughFilter. docs/fault-injection.md says what each takes.
            Exit status 1 when the daemon refused it (the reason is printed).
            """)
    @Argument(help: "The mount point.") var mountpoint: String
    @Argument(help: "The device node (its instance name, as `wdmfs status` lists it).") var device: String
    @Argument(help: "The filter driver.") var filter: String
    @Argument(help: "Settings: KEY=VALUE (ranges=1M+4K status=STATUS_CRC_ERROR).") var settings: [String] = []

    func run() throws {
        let tree = DeviceTreeFiles(mountpoint)
        guard let node = tree.select([device]).first else { throw ExitCode(2) }
        for s in settings where !s.contains("=") || s.contains(where: \.isWhitespace) { fail("`\(s)` is not KEY=VALUE") }
        // The filter starts with its settings: no request sees it with its defaults.
        guard write(node.path + "/control", (["attach", filter] + settings).joined(separator: " ")) == 0 else {
            complain("\(node.name): \(tree.trimmed(node, "result"))")
            throw ExitCode(1)
        }
        // The settings file the filter published, as the daemon says: `attached X; its settings: x`.
        let said = tree.trimmed(node, "result")
        let file = said.range(of: "; its settings: ").map { String(said[$0.upperBound...]) }
        print("\(node.name): attached \(filter)" + (file.map { " (settings: .devices/\(node.treePath)/\($0))" } ?? ""))
    }
}

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detach a filter from a running device's stack (the topmost one of that driver).",
        discussion: """
            Requests already in the filter finish through it; new ones skip it.
            Example:
              wdmfs detach /mnt/wdm ramdisk0 ErrorFilter
            Exit status 1 when the daemon refused it (no such filter in the stack, or not a filter).
            """)
    @Argument(help: "The mount point.") var mountpoint: String
    @Argument(help: "The device node.") var device: String
    @Argument(help: "The filter driver.") var filter: String

    func run() throws {
        try controlVerb("detach \(filter)", mountpoint, [device], done: "detached \(filter)")
    }
}

struct LogLevel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log-level",
        abstract: "Set the drivers' log levels on a mounted tree (DbgPrintEx's component filter, in swift-log's levels).",
        discussion: """
            SPEC is a level for every driver, and/or NAME=LEVEL for one (the names of
            `wdmfs stack`, without \\Driver\\); the levels: trace, debug, info, notice,
            warning, error, critical. Each line in the daemon's log names its driver.
            It writes `log-level SPEC` to MOUNTPOINT/.devices/.control.
            Examples:
              wdmfs log-level /mnt/wdm debug
              wdmfs log-level /mnt/wdm info,RamDisk=trace
            """)
    @Argument(help: "The mount point.") var mountpoint: String
    @Argument(help: "LEVEL, NAME=LEVEL, or both, separated by commas.") var spec: String

    func run() throws {
        let tree = DeviceTreeFiles(mountpoint)
        switch write(tree.root + "/.control", "log-level \(spec)") {
        case 0: print("log levels: \(spec)")
        case EINVAL: fail("the daemon refused `\(spec)`: levels are trace, debug, info, notice, warning, error, critical (NAME=LEVEL for one driver)")
        case let e: fail("\(tree.root)/.control: \(String(cString: strerror(e)))")
        }
    }
}
