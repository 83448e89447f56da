// Drivers log through swift-log: each driver's logger has the driver's own
// level, set for all drivers or by name, before they load and while they run;
// every line names its driver and goes where the host's log goes; a message
// below the level is never built.

import DefaultTree
import Testing
import WDM
import WDMTesting

@Suite struct LoggingTests {
    func disk(levels: String?) throws -> (IOManager, Recorder) {
        let io = IOManager()
        let lines = Recorder()
        io.log = { lines.add($0) }
        if let levels { #expect(io.setLogLevels(levels) == nil) }
        try TreeDescription(devices: [DeviceDescription(name: "d", hardwareIDs: ["Root\\RamDisk"], settings: ["Size": "65536"])]).build(into: io)
        return (io, lines)
    }

    @Test func aDriversLinesNameItAndFollowItsLevel() throws {
        let (_, quiet) = try disk(levels: nil)
        #expect(!quiet.all.contains { $0.contains("RamDisk debug") })
        let (io, lines) = try disk(levels: "info,RamDisk=debug")
        #expect(lines.all.contains("\\Driver\\RamDisk debug: d: 65536 bytes, direct I/O"), "\(lines.all)")
        #expect(io.logLevelText == "info,\\Driver\\RamDisk=debug")
        // While it runs: a level for all replaces the names'.
        let driver = try #require(io.loadedDrivers.first { $0.name == "\\Driver\\RamDisk" })
        #expect(io.setLogLevels("error") == nil)
        #expect(driver.logLevel == .error)
        var built = false
        driver.logger.info("\(({ built = true; return "x" })())")
        #expect(!built)  // below the level: the message is not even made
        driver.logger.error("it failed", metadata: ["offset": "512"])
        #expect(lines.all.last == "\\Driver\\RamDisk error: it failed offset=512")
    }

    @Test func aBadLevelIsRefusedSayingWhich() {
        let io = IOManager()
        #expect(io.setLogLevels("RamDisk=loud") == "`loud` is not a level: trace, debug, info, notice, warning, error, critical")
        #expect(io.logLevelText == "info")
    }
}
