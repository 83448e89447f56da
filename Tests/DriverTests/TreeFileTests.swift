// Tree files: the format, the PnP manager's driver match, and every kind of
// mistake rejected with the file, line, column and reason.

import DefaultTree
import Testing
import WDM

/// A tree of one device `a` of Root\Null with these extra lines (each a key of the device).
func treeOfA(_ lines: String..., name: String = "a") -> String {
    "devices:\n  - name: \(name)\n    hardware_ids: ['Root\\Null']\n" + lines.map { "    " + $0 + "\n" }.joined()
}

/// The toaster bus, as one more device of a tree.
let toasterBusDevice = "  - name: toaster-bus\n    hardware_ids: ['Root\\ToasterBus']\n"

@Suite struct TreeFileTests {
    func reject(_ text: String) -> TreeError? {
        do throws(TreeError) {
            _ = try TreeFile.parse(text, file: "t.yaml")
            return nil
        } catch {
            return error
        }
    }

    @Test func theDefaultTreeRoundTripsThroughItsFile() throws {
        let text = TreeFile.text(of: DefaultTree.description())
        #expect(try TreeFile.parse(text, file: "default") == DefaultTree.description())
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
}
