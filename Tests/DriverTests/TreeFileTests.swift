// Tree files: the format, the PnP manager's driver match, and every kind of
// mistake rejected with the file, line, column and reason.

import DefaultTree
import Testing
import WDM
import WDMTesting

/// A tree of one device `a` of Root\Null with these extra lines (each a key of the device).
func treeOfA(_ lines: String..., name: String = "a") -> String {
    "devices:\n  - name: \(name)\n    hardware_ids: ['Root\\Null']\n" + lines.map { "    " + $0 + "\n" }.joined()
}

/// The toaster bus, as one more device of a tree.
let toasterBusDevice = "  - name: toaster-bus\n    hardware_ids: ['Root\\ToasterBus']\n"

/// Why the tree file `text` (as `t.yaml`) is rejected; nil if it is not.
func treeRejection(_ text: String) -> TreeError? {
    do throws(TreeError) {
        _ = try TreeFile.parse(text, file: "t.yaml")
        return nil
    } catch {
        return error
    }
}

@Suite struct TreeFileTests {
    func reject(_ text: String) -> TreeError? { treeRejection(text) }

    @Test func theDefaultTreeRoundTripsThroughItsFile() throws {
        let text = TreeFile.text(of: DefaultTree.description())
        #expect(try TreeFile.parse(text, file: "default") == DefaultTree.description())
    }

    @Test func aTreeWithQuotesAndColonsRoundTripsThroughItsFile() throws {
        // (Settings are the driver's: TreeSettingsTests quotes one no driver takes.)
        var d = DeviceDescription(name: "it's", hardwareIDs: ["Root\\RamDisk"], link: "a: 'b'", settings: ["Size": "4096", "Buffering": "neither"], mode: 0o640)
        d.owner = 0
        d.group = 0
        let tree = TreeDescription(devices: [d])
        #expect(try TreeFile.parse(TreeFile.text(of: tree), file: "t.yaml") == tree)
    }

    @Test func aTreeFileBuildsThroughThePnPManager() throws {
        let tree = try TreeFile.parse("""
            devices:
              - name: disk-a
                hardware_ids: ['Root\\RamDisk']
                settings: {Size: 4096}
              - name: disk-b
                hardware_ids: ['Vendor\\Unknown']
                compatible_ids: ['GenDisk']
                upper_filters: [PassThroughFilter]
                link: second-disk
                settings: {Size: 8192}
                mode: '0640'
                owner: 0
            """, file: "t.yaml")
        let io = IOManager()
        try tree.build(into: io)
        #expect(io.symbolicLinks == ["disk-a", "second-disk"])
        let host = EmbeddedHost(io)
        #expect(host.querySize(try host.open("second-disk")) == 8192)  // matched by its compatible ID
        #expect(io.deviceNodes.map(\.state) == [.started, .started])
        #expect(tree.permissions["second-disk"]?.mode == 0o640)
    }

    @Test func hardwareIDsWinOverCompatibleIDsInOrder() {
        #expect(DriverCatalog.match(hardwareIDs: ["X", "root\\zero"], compatibleIDs: ["Root\\Null"])?.name == "Zero")
        #expect(DriverCatalog.match(hardwareIDs: ["X"], compatibleIDs: ["Y", "Root\\Null", "Root\\Zero"])?.name == "Null")
        #expect(DriverCatalog.match(hardwareIDs: ["X"], compatibleIDs: []) == nil)
    }

    @Test(arguments: [
        ("devices: [\n  {name: a, hardware_ids: ['Root\\Null']\n", 3, "not valid YAML"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    upper_filters: [NoSuchFilter]\n", 4, "unknown driver `NoSuchFilter`"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    upper_filters: [Zero]\n", 4, "is a function driver, not a filter"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n  - name: a\n    hardware_ids: ['Root\\Zero']\n", 4, "duplicate device name `a` (first at line 2)"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n  - name: b\n    link: a\n    hardware_ids: ['Root\\Zero']\n", 5, "duplicate file name `a`"),
        ("devices:\n  - name: a\n    hardware_ids: ['PCI\\VEN_1234']\n", 3, "no driver serves PCI\\VEN_1234"),
        ("devices:\n  - name: a\n    hardware_ids: 'Root\\Null'\n", 3, "`hardware_ids` must be a list of strings"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    settings: [1, 2]\n", 4, "`settings` must be a mapping"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    mode: '0999'\n", 4, "`mode` must be octal"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    colour: blue\n", 4, "unknown key `colour`"),
        ("devices:\n  - hardware_ids: ['Root\\Null']\n", 2, "a device needs `name`"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    link: 'x/y'\n", 4, "cannot be a file name"),
        ("devices:\n  - name: a\n    hardware_ids: ['Root\\Null']\n    owner: no-such-user-here\n", 4, "unknown user"),
        ("devices: 3\n", 1, "`devices` must be a list"),
        ("drivers: []\n", 1, "unknown key `drivers`"),
        // A root device whose driver serves only a bus's children; a test-only filter where it would reach a bus's children.
        ("devices:\n  - name: t\n    hardware_ids: ['{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster']\n", 3,
         "`Toaster` serves only the devices ToasterBus reports, not a device of the tree"),
        ("classes:\n  Toaster: {upper_filters: [LazyFilter]}\n" + "devices:\n" + toasterBusDevice, 2,
         "`LazyFilter` is for tests only: name it in a device's `upper_filters` or `lower_filters`"),
        ("hardware_filters:\n  X: {lower_filters: [LazyFilter]}\n" + "devices:\n" + toasterBusDevice, 2, "`LazyFilter` is for tests only"),
    ])
    func aBadTreeFileIsRejectedWithWhereAndWhy(text: String, line: Int, reason: String) {
        let e = reject(text)
        #expect(e != nil, "accepted: \(text)")
        #expect(e?.line == line, "\(e?.description ?? "")")
        #expect(e?.description.contains(reason) == true, "\(e?.description ?? "")")
        #expect(e?.description.hasPrefix("t.yaml:\(line):") == true)
    }

    // Names that break the mount, each rejected where it is written (line and column) and why.
    @Test(arguments: [
        // The bridge's own files at the root: listed twice, or the device's file shadowing the real one.
        (treeOfA("link: .power"), 4, 11, "`.power` cannot be a file name under the mount: the mount shows its own `.power` there"),
        (treeOfA("link: .devices"), 4, 11, "`.devices` cannot be a file name under the mount: the mount shows its own `.devices` there"),
        (treeOfA("link: .interfaces"), 4, 11, "the mount shows its own `.interfaces` there"),
        (treeOfA(name: ".stats"), 2, 11, "`.stats` cannot be a file name under the mount: the mount shows its own `.stats` there"),
        (treeOfA("link: '..'"), 4, 11, "`.` and `..` are the directory and its parent"),
        // NUL, newline, `/` and other control characters, in a link or a name.
        (treeOfA("link: \"a\\0b\""), 4, 11, "`a\\0b` cannot be a file name under the mount: it contains a NUL"),
        (treeOfA("link: \"a\\nb\""), 4, 11, "`a\\nb` cannot be a file name under the mount: it contains a newline"),
        (treeOfA("link: \"a\\tb\""), 4, 11, "it contains the control character U+0009"),
        (treeOfA(name: "\"a\\0b\""), 2, 11, "device name `a\\0b` cannot be a file name under `.devices`: it contains a NUL"),
        (treeOfA(name: "\"a\\nb\""), 2, 11, "device name `a\\nb` cannot be a file name under `.devices`: it contains a newline"),
        (treeOfA(name: "a/b"), 2, 11, "device name `a/b` cannot be a file name under `.devices`: it contains `/`"),
        // Longer than NAME_MAX (255 bytes): FUSE would fail the whole listing with EIO.
        (treeOfA("link: " + String(repeating: "x", count: 256)), 4, 11, "it is 256 bytes long, and a file name has at most 255 (NAME_MAX)"),
        (treeOfA("link: " + String(repeating: "é", count: 128)), 4, 11, "it is 256 bytes long"),
        (treeOfA(name: String(repeating: "n", count: 300)), 2, 11, "device name `nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn…` cannot be a file name under `.devices`: it is 300 bytes long"),
        // A setting that would become the link without any of these checks.
        (treeOfA("settings: {SymbolicLinkName: .stats}"), 4, 16, "`SymbolicLinkName` is not a setting: a device's file name under the mount is its `link`"),
        (treeOfA("settings:", "  symboliclinkname: x"), 5, 7, "`symboliclinkname` is not a setting"),
        // A name a bus in the tree gives its children (the toaster bus: toaster<N>).
        (treeOfA(name: "toaster1") + toasterBusDevice, 2, 11,
         "device name `toaster1` is one ToasterBus gives the children it reports (toaster<N>); a device of the tree cannot take it"),
        (treeOfA("link: toaster12") + toasterBusDevice, 4, 11, "file name `toaster12` is one ToasterBus gives the children it reports (toaster<N>)"),
        ("devices:\n  - name: toaster2\n    hardware_ids: ['Root\\ToasterBus']\n", 2, 11, "device name `toaster2` is one ToasterBus gives"),
        // Two devices with the same name, or the same file name (a link, or a name used as one).
        (treeOfA() + "  - name: a\n    hardware_ids: ['Root\\Zero']\n", 4, 11, "duplicate device name `a` (first at line 2)"),
        (treeOfA("link: b") + "  - name: c\n    link: b\n    hardware_ids: ['Root\\Zero']\n", 6, 11, "duplicate file name `b` (first at line 4)"),
        (treeOfA("link: b") + "  - name: b\n    hardware_ids: ['Root\\Zero']\n", 5, 11, "duplicate file name `b` (first at line 4)"),
        // A duplicate YAML key: at the second use, not line 1 with the whole file.
        (treeOfA("name: b"), 4, 5, "duplicate key `name` (first at line 2)"),
        ("devices: []\nclasses: {}\ndevices: []\n", 3, 1, "duplicate key `devices` (first at line 1)"),
        (treeOfA("settings: {Size: 1, Size: 2}"), 4, 25, "duplicate key `Size` (first at line 4)"),
        (treeOfA("settings: {A: 1, A: 2, A: 3}"), 4, 22, "duplicate key `A` (first at line 4)"),
    ])
    func aNameThatWouldBreakTheMountIsRejected(text: String, line: Int, column: Int, reason: String) {
        let e = reject(text)
        #expect(e != nil, "accepted: \(text)")
        #expect(e?.line == line && e?.column == column, "\(e?.description ?? "")")
        #expect(e?.description.contains(reason) == true, "\(e?.description ?? "")")
        #expect(e?.description.hasPrefix("t.yaml:\(line):\(column): ") == true, "\(e?.description ?? "")")
        #expect(e.map { !$0.description.contains("\n") } ?? true, "one line: \(e?.description ?? "")")
    }

    @Test func namesAtTheLimitsAreAccepted() throws {
        let longest = String(repeating: "x", count: 255)
        let tree = try TreeFile.parse(treeOfA("link: " + longest) + "  - name: toaster1\n    hardware_ids: ['Root\\Zero']\n", file: "t.yaml")
        // 255 bytes is a file name; `toaster1` is a name only when a toaster bus is in the tree.
        #expect(tree.devices.map { $0.link ?? $0.name } == [longest, "toaster1"])
        let io = IOManager()
        try tree.build(into: io)
        #expect(io.symbolicLinks == [longest, "toaster1"])
        // Hidden names other than the bridge's are file names like any other; so is toaster-bus.
        _ = try TreeFile.parse(treeOfA("link: .null") + toasterBusDevice, file: "t.yaml")
    }

    @Test func theTestTreeRoundTripsAndMayNameTheTestOnlyDrivers() throws {
        let test = DefaultTree.description(.init(test: true))
        #expect(try TreeFile.parse(TreeFile.text(of: test), file: "test") == test)
        #expect(test.devices.contains { $0.hardwareIDs == ["Root\\Misbehave"] })
        #expect(!DefaultTree.description().devices.contains { $0.hardwareIDs == ["Root\\Misbehave"] || $0.upperFilters.contains("LazyFilter") })
        // The administrator's choice: a tree file may put them on its own devices.
        let tree = try TreeFile.parse(treeOfA("upper_filters: [LazyFilter]") + "  - name: m\n    hardware_ids: ['Root\\Misbehave']\n", file: "t.yaml")
        let io = IOManager()
        try tree.build(into: io)
        #expect(io.symbolicLinks == ["a", "m"])
    }

    @Test func aSettingCannotNameTheLinkEvenInADescriptionBuiltInCode() throws {
        // TreeFile rejects it; a description built in code gets its link (its name) anyway.
        var d = DeviceDescription(name: "n", hardwareIDs: ["Root\\Null"], settings: ["SymbolicLinkName": ".stats"])
        let io = IOManager()
        try TreeDescription(devices: [d]).build(into: io)
        #expect(io.symbolicLinks == ["n"])
        d.name = "m"
        d.link = "l"
        let io2 = IOManager()
        try TreeDescription(devices: [d]).build(into: io2)
        #expect(io2.symbolicLinks == ["l"])
    }
}
