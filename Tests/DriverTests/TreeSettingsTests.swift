// A tree file's settings, checked against the settings the drivers of each
// device's stack declare: an unknown name (with the closest known one), a wrong
// type, a value out of range, a bad choice, each reported where it is written.
// And a bad value that reaches a driver anyway fails its device cleanly.

import DefaultTree
import Foundation
import Testing
import WDM
import WDMTesting

/// A tree of one RAM disk `d` with these extra lines (each a key of the device).
func treeOfRamDisk(_ lines: String...) -> String {
    "devices:\n  - name: d\n    hardware_ids: ['Root\\RamDisk']\n" + lines.map { "    " + $0 + "\n" }.joined()
}

@Suite struct TreeSettingsTests {
    func reject(_ text: String) -> TreeError? { treeRejection(text) }

    @Test(arguments: [
        // Wrong type, out of range, not a multiple of the sector: at the value.
        (treeOfRamDisk("settings: {Size: 'big'}"), 4, 22,
         "setting `Size` of \\Driver\\RamDisk must be an integer from 512 to 17179869184 (16 GiB), not `big`"),
        (treeOfRamDisk("settings: {Size: 0}"), 4, 22, "setting `Size` of \\Driver\\RamDisk must be from 512 to 17179869184 (16 GiB), not `0`"),
        (treeOfRamDisk("settings: {Size: -4096}"), 4, 22, "must be from 512 to 17179869184 (16 GiB), not `-4096`"),
        (treeOfRamDisk("settings: {Size: 1000000000000}"), 4, 22, "must be from 512 to 17179869184 (16 GiB), not `1000000000000`"),
        (treeOfRamDisk("settings: {Size: 17179869696}"), 4, 22, "must be from 512 to 17179869184 (16 GiB)"),
        (treeOfRamDisk("settings: {Size: 99999999999999999999999}"), 4, 22, "must be an integer from 512"),
        (treeOfRamDisk("settings: {Size: 0x1000}"), 4, 22, "must be an integer from 512"),
        (treeOfRamDisk("settings: {Size: 64MiB}"), 4, 22, "must be an integer from 512"),
        (treeOfRamDisk("settings: {Size: 1000}"), 4, 22, "setting `Size` of \\Driver\\RamDisk must be a multiple of 512, not `1000`"),
        (treeOfRamDisk("settings: {Buffering: sideways}"), 4, 27,
         "setting `Buffering` of \\Driver\\RamDisk must be one of direct, buffered, neither, not `sideways`"),
        (treeOfRamDisk("settings: {Buffering: Direct}"), 4, 27, "must be one of direct, buffered, neither, not `Direct` (did you mean `direct`?)"),
        // Block style: the line and column of the value's own line.
        (treeOfRamDisk("settings:", "  Size: 4096", "  Buffering: 3"), 6, 18, "setting `Buffering` of \\Driver\\RamDisk must be one of"),
        // An unknown name: at the key, with the closest known name or the known ones.
        (treeOfRamDisk("settings: {Sise: 4096}"), 4, 16, "unknown setting `Sise` for \\Driver\\RamDisk (did you mean `Size`?)"),
        (treeOfRamDisk("settings: {size: 4096}"), 4, 16, "unknown setting `size` for \\Driver\\RamDisk (did you mean `Size`?)"),
        (treeOfRamDisk("settings: {Size: 4096, Bufering: direct}"), 4, 28, "unknown setting `Bufering` for \\Driver\\RamDisk (did you mean `Buffering`?)"),
        (treeOfRamDisk("settings: {BufferSize: 16}"), 4, 16, "unknown setting `BufferSize` for \\Driver\\RamDisk (it takes `Size`, `Buffering`)"),
        (treeOfRamDisk("upper_filters: [PassThroughFilter]", "settings: {Sise: 4096}"), 5, 16, "unknown setting `Sise` for \\Driver\\RamDisk (did you mean `Size`?)"),
        (treeOfA("settings: {Size: 4096}"), 4, 16, "unknown setting `Size` for \\Driver\\Null (it takes no settings)"),
        // Another driver's settings; a driver matched by a compatible ID.
        ("devices:\n  - name: e\n    hardware_ids: ['Root\\Echo']\n    settings: {BufferSize: 0}\n", 4, 28,
         "setting `BufferSize` of \\Driver\\Echo must be from 1 to 16777216 (16 MiB), not `0`"),
        ("devices:\n  - name: g\n    hardware_ids: ['Vendor\\Disk']\n    compatible_ids: [GenDisk]\n    settings: {Size: big}\n", 5, 22,
         "setting `Size` of \\Driver\\RamDisk must be an integer"),
        // A device no driver serves keeps that error, settings or not.
        ("devices:\n  - name: a\n    hardware_ids: ['PCI\\VEN_1234']\n    settings: {Sise: 1}\n", 3, 19, "no driver serves PCI\\VEN_1234"),
    ])
    func aBadSettingIsRejectedWhereItIsWritten(text: String, line: Int, column: Int, reason: String) {
        let e = reject(text)
        #expect(e != nil, "accepted: \(text)")
        #expect(e?.line == line && e?.column == column, "\(e?.description ?? "")")
        #expect(e?.description.contains(reason) == true, "\(e?.description ?? "")")
        #expect(e?.description.hasPrefix("t.yaml:\(line):\(column): ") == true, "\(e?.description ?? "")")
    }

    @Test func goodSettingsAreAcceptedAtTheirLimitsAndBuild() throws {
        // The limits are values: 512 bytes and 16 GiB (checked, not built), one byte of echo.
        for size in ["512", "17179869184", "+4096"] {
            let tree = try TreeFile.parse(treeOfRamDisk("settings: {Size: \(size)}"), file: "t.yaml")
            #expect(tree.devices[0].settings == ["Size": size])
        }
        let tree = try TreeFile.parse("""
            devices:
              - name: d
                hardware_ids: ['Root\\RamDisk']
                upper_filters: [PassThroughFilter]
                settings:
                  Size: '8192'
                  Buffering: neither
              - name: e
                hardware_ids: ['Root\\Echo']
                settings: {BufferSize: 1}
              - name: n
                hardware_ids: ['Root\\Null']
                settings: {}
            """, file: "t.yaml")
        let io = IOManager()
        try tree.build(into: io)
        let host = EmbeddedHost(io)
        let disk = try host.open("d")
        #expect(host.querySize(disk) == 8192)
        #expect(!disk.deviceObject.topOfStack.flags.contains(.directIO) && !disk.deviceObject.topOfStack.flags.contains(.bufferedIO))
        let echo = try host.open("e")
        #expect(host.write(echo, [1, 2, 3]).information == 1)  // a buffer of one byte
        #expect(io.deviceNodes.map(\.state) == [.started, .started, .started])
    }

    @Test func thePrintedDefaultListsEachDriversSettingsAndChecks() throws {
        let text = TreeFile.text(of: DefaultTree.description())
        #expect(text.contains("#     setting Size: integer from 512 to 17179869184 (16 GiB), a multiple of 512; default 67108864 (64 MiB)\n"))
        #expect(text.contains("#     setting Buffering: one of direct, buffered, neither; default direct\n"))
        #expect(text.contains("#     setting BufferSize: integer from 1 to 16777216 (16 MiB); default 65536 (64 KiB)\n"))
        #expect(text.contains("#       the disk's length in bytes."))
        #expect(text.contains("    settings: {Buffering: direct, Size: 67108864}\n"))
        // Help is wrapped: each of its lines is a comment of at most 88 characters.
        for line in text.split(separator: "\n") where line.hasPrefix("#       ") { #expect(line.count <= 88, "\(line)") }
        #expect(try TreeFile.parse(text, file: "default") == DefaultTree.description())
    }

    @Test func aSettingTheFileCannotQuoteBackIsReportedByItsOwnName() {
        // A description built in code may hold any setting; its file quotes it, and the
        // check names it as it was.
        let d = DeviceDescription(name: "n", hardwareIDs: ["Root\\Null"], settings: ["k: 'x'": "v"])
        let e = reject(TreeFile.text(of: TreeDescription(devices: [d])))
        #expect(e?.reason == "unknown setting `k: 'x'` for \\Driver\\Null (it takes no settings)", "\(e?.description ?? "")")
    }

    @Test func aFileThatCannotBeReadSaysWhy() {
        func loadError(_ path: String) -> String? {
            do throws(TreeError) {
                _ = try TreeFile.load(path: path)
                return nil
            } catch {
                return error.description
            }
        }
        let missing = FileManager.default.temporaryDirectory.path + "/wdmfs-no-such-tree-\(getpid()).yaml"
        #expect(loadError(missing) == missing + ": No such file or directory")
        let directory = FileManager.default.temporaryDirectory.path
        #expect(loadError(directory) == directory + ": Is a directory")
    }

    // A host other than the tree file may pass anything: the driver's device fails
    // (CM_PROB_FAILED_ADD, STATUS_INVALID_PARAMETER), the daemon does not.
    @Test(arguments: [
        ["Size": "1000000000000"], ["Size": String(Int.max)], ["Size": "-512"], ["Size": "big"], ["Size": "1000"],
        ["Size": "99999999999999999999999"], ["Buffering": "sideways"],
    ])
    func aBadSettingThatReachesTheRamDiskFailsItsDevice(settings: [String: String]) {
        let io = IOManager()
        let tree = TreeDescription(devices: [DeviceDescription(name: "d", hardwareIDs: ["Root\\RamDisk"], settings: settings)])
        #expect(throws: NTStatus.invalidParameter) { try tree.build(into: io) }
        #expect(io.symbolicLinks.isEmpty)
        #expect(io.deviceNodes.map(\.problem) == [.failedAdd])
    }

    @Test func anAbsurdSizeFromTheDefaultTreesOptionsFailsCleanlyToo() {
        let io = IOManager()
        #expect(throws: NTStatus.invalidParameter) { try DefaultTree.build(into: io, options: .init(ramdiskSize: 1_000_000_000_000)) }
        let io2 = IOManager()
        #expect(throws: NTStatus.invalidParameter) { try DefaultTree.build(into: io2, options: .init(ramdiskSize: 1 << 20, echoBufferSize: 1 << 40)) }
    }
}
