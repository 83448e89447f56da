// `wdmfs new-driver NAME`: a driver package that builds and passes its tests as
// created: a driver on the framework (WDF), its host executable (how a tree
// file loads it: `driver_package:` and `driver:`), an in-process test through
// the embedded host, and a bats test over a real mount.

import ArgumentParser
import Foundation
import WDMClient

struct NewDriver: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new-driver",
        abstract: "Create a driver package: a framework driver, its host, an in-process test and a bats test.",
        discussion: """
            The package depends on wdmfs by version (--wdmfs, --from). Then:
              cd NAME && swift build && swift test && bats tests
            and mount a tree that names it (NAME/tree.yaml does):
              wdmfs mount /mnt/wdm --tree NAME/tree.yaml --test-signing
            Example:
              wdmfs new-driver Hello --wdmfs https://github.com/example/wdmfs --from 0.1.0
            """)

    @Argument(help: "The driver's name: letters and digits, a letter first (Hello).") var name: String
    @Option(help: "The folder to create (default: ./NAME).") var directory: String?
    @Option(help: "The wdmfs package's URL (default: the source tree this wdmfs was built from).") var wdmfs: String?
    @Option(help: "The lowest wdmfs version the package accepts.") var from: String = WDMFSVersion.number

    static var sourceTree: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    func validate() throws {
        guard let first = name.unicodeScalars.first, ("A"..."Z").contains(first) || ("a"..."z").contains(first),
              name.unicodeScalars.allSatisfy({ ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0) })
        else { throw ValidationError("the name must be letters and digits, a letter first (a Swift type name), not `\(name)`") }
    }

    func run() throws {
        let dir = directory ?? name
        guard !FileManager.default.fileExists(atPath: dir) else {
            throw ValidationError("\(dir) exists already: give another --directory")
        }
        let url = wdmfs ?? "file://" + Self.sourceTree
        for (path, text) in DriverTemplate.files(name: name, wdmfsURL: url, from: from) {
            let full = dir + "/" + path
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: true, encoding: .utf8)
        }
        print("\(dir): the \(name) driver package (swift build && swift test && bats tests)")
    }
}

enum DriverTemplate {
    static func files(name n: String, wdmfsURL: String, from: String) -> [(String, String)] {
        [
            ("Package.swift", """
                // swift-tools-version: 6.1
                // The \(n) driver: a driver on wdmfs's framework (WDF), its driver host, its tests.
                import PackageDescription

                let package = Package(
                    name: "\(n)",
                    dependencies: [.package(url: "\(wdmfsURL)", from: "\(from)")],
                    targets: [
                        .target(name: "\(n)", dependencies: [.product(name: "WDF", package: "wdmfs")]),
                        // What a tree file names as `driver_package:` (the daemon starts it).
                        .executableTarget(name: "\(n)Host", dependencies: ["\(n)", .product(name: "WDMHost", package: "wdmfs")]),
                        .testTarget(name: "\(n)Tests", dependencies: [
                            "\(n)", .product(name: "WDF", package: "wdmfs"), .product(name: "WDMTesting", package: "wdmfs"),
                        ]),
                    ]
                )

                """),
            ("Sources/\(n)/\(n).swift", """
                // The \(n) driver, on the framework: a write adds its bytes to a count, a read
                // says the count, IOCTL 0x800 (METHOD_BUFFERED) answers it as a UInt64.

                import Synchronization
                import WDF

                public enum \(n) {
                    /// `CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
                    public static let getCount = ControlCode(deviceType: DeviceType.unknown, function: 0x800, method: .buffered, access: [])

                    final class Count: Sendable {
                        let bytes = Atomic<Int>(0)
                    }

                    public static let driverEntry = Framework.functionDriver { (device: Device<Count>) in
                        device.queue(.parallel(), isDefault: true) { device, request in
                            let count = device.context, code = request.ioControlCode, major = request.major
                            switch major {
                            case .write:
                                let n = request.length
                                count.bytes.add(n, ordering: .relaxed)
                                request.complete(.success, information: n)
                            case .read:
                                let text = Array("\\(device.node?.instanceName ?? "\(n.lowercased())"): \\(count.bytes.load(ordering: .relaxed)) bytes written\\n".utf8)
                                guard request.offset == 0, let out = try? request.output(), !out.isEmpty else { return request.complete(.endOfFile) }
                                let k = min(out.count, text.count)
                                out.copyBytes(from: text.prefix(k))
                                request.complete(.success, information: k)
                            case .deviceControl where code == getCount:
                                guard let out = try? request.output(minimumLength: 8) else { return request.complete(.bufferTooSmall) }
                                out.storeBytes(of: UInt64(count.bytes.load(ordering: .relaxed)).littleEndian, as: UInt64.self)
                                request.complete(.success, information: 8)
                            default:
                                request.complete(.invalidDeviceRequest)
                            }
                        }
                        return Count()
                    }
                }

                """),
            ("Sources/\(n)Host/main.swift", """
                // The driver host wdmfs starts for a device whose tree file entry says
                // `driver_package: .build/debug/\(n)Host` and `driver: \(n)`.

                import \(n)
                import WDMHost

                DriverHost.main(drivers: ["\(n)": \(n).driverEntry])

                """),
            ("Tests/\(n)Tests/\(n)Tests.swift", """
                // \(n) in-process, through the embedded host: no mount, no FUSE.

                import \(n)
                import Testing
                import WDF
                import WDMTesting

                @Test func writesAreCountedAndReadBack() throws {
                    let io = IOManager()
                    let driver = try io.loadDriver(name: "\(n)", entry: \(n).driverEntry)
                    try io.addRootDevice(instanceName: "mine", functionDriver: driver)
                    io.waitForPnP()
                    let host = EmbeddedHost(io)
                    let file = try host.open("mine")
                    #expect(host.write(file, Array("hello".utf8)).information == 5)
                    #expect(String(decoding: host.read(file, count: 100).data, as: UTF8.self) == "mine: 5 bytes written\\n")
                    let r = host.deviceIoControl(file, \(n).getCount, outputLength: 8)
                    #expect(r.status == .success && r.output == [5, 0, 0, 0, 0, 0, 0, 0])
                    host.close(file)
                    #expect(io.verifier.violations.isEmpty)
                }

                """),
            ("tree.yaml", """
                # A tree with the \(n) driver in it, from this package's host executable
                # (relative to this file): wdmfs mount /mnt/wdm --tree tree.yaml --test-signing
                devices:
                  - name: \(n.lowercased())
                    hardware_ids: ['Root\\\(n)']
                    driver_package: .build/debug/\(n)Host
                    driver: \(n)

                """),
            ("tests/\(n.lowercased()).bats", """
                #!/usr/bin/env bats
                # \(n) on a real mount: cat, dd and wdmfs ioctl. Needs root, FUSE and wdmfs
                # (on PATH, or WDMFS=/path/to/wdmfs).

                setup() {
                    cd "$BATS_TEST_DIRNAME/.."
                    WDMFS=${WDMFS:-wdmfs}
                    swift build >/dev/null
                    MP=$(mktemp -d)
                    "$WDMFS" mount "$MP" --tree tree.yaml --test-signing >/dev/null
                }

                teardown() {
                    "$WDMFS" unmount "$MP" >/dev/null 2>&1 || fusermount3 -uz "$MP" 2>/dev/null || true
                    rmdir "$MP"
                }

                @test "a write is counted and read back with cat, dd and ioctl" {
                    printf 'hello' | dd of="$MP/\(n.lowercased())" status=none
                    run cat "$MP/\(n.lowercased())"
                    [ "$status" -eq 0 ]
                    [ "$output" = "\(n.lowercased()): 5 bytes written" ]
                    run "$WDMFS" ioctl "$MP/\(n.lowercased())" 0x00222000 --out-size 8
                    [ "$status" -eq 0 ]
                    [ "$output" = "0500000000000000" ]
                }

                """),
            ("README.md", """
                # \(n)

                A wdmfs driver package: `Sources/\(n)` is the driver (on wdmfs's framework,
                WDF), `Sources/\(n)Host` the driver host a tree file names, `Tests/` its
                in-process test, `tests/` a bats test over a real mount.

                    swift build && swift test      # in-process
                    bats tests                     # mounted (root, FUSE, wdmfs on PATH)
                    wdmfs mount /mnt/wdm --tree tree.yaml --test-signing

                Sign the host to load it without --test-signing:
                `wdmfs sign .build/debug/\(n)Host --key KEY`, then mount with `--trusted-key KEY.pub`.

                """),
        ]
    }
}
