"""A driver written in another package builds against wdmfs's WDM library when
it depends on this repository by version: SwiftPM refuses unsafeFlags in such a
dependency (it tolerates them for root, path and branch dependencies), so only
a version-pinned dependency proves the library and driver targets have none.
The package also tests its driver in-process with the WDMTesting product, and
resolves nothing of the benchmark's (ordo-one/benchmark is Benchmarks/'s own)."""
import subprocess
import textwrap

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds scratch projects: WDMFS_FAST=1 leaves it out


def test_a_package_that_depends_on_wdmfs_by_version_builds_a_driver(tmp_path):
    upstream = tmp_path / "wdmfs"
    subprocess.run(["git", "clone", "-q", ROOT, str(upstream)], check=True)
    subprocess.run(["git", "-C", str(upstream), "tag", "1.0.0"], check=True)
    pkg = tmp_path / "mydriver"
    (pkg / "Sources/MyDriver").mkdir(parents=True)
    (pkg / "Sources/check").mkdir(parents=True)
    (pkg / "Tests/MyDriverTests").mkdir(parents=True)
    (pkg / "Package.swift").write_text(textwrap.dedent(f"""\
        // swift-tools-version: 6.1
        import PackageDescription
        let package = Package(
            name: "mydriver",
            dependencies: [.package(url: "file://{upstream}", from: "1.0.0")],
            targets: [
                .target(name: "MyDriver", dependencies: [.product(name: "WDM", package: "wdmfs")]),
                .executableTarget(name: "check", dependencies: [
                    "MyDriver", .product(name: "WDM", package: "wdmfs"), .product(name: "WDMTesting", package: "wdmfs"),
                ]),
                .testTarget(name: "MyDriverTests", dependencies: [
                    "MyDriver", .product(name: "WDM", package: "wdmfs"), .product(name: "WDMTesting", package: "wdmfs"),
                ]),
            ]
        )
        """))
    (pkg / "Sources/MyDriver/MyDriver.swift").write_text(textwrap.dedent("""\
        import WDM

        /// Answers every read with the letter W.
        public enum MyDriver {
            public static let driverEntry: DriverEntry = { driver in
                driver.addDevice = { driver, pdo in driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown) }
                driver.majorFunction.succeed([.create, .cleanup, .close])
                driver.majorFunction[.pnp] = PnP.functionDispatch()
                driver.majorFunction[.read] = { _, irp in
                    let b = irp.transferBuffer
                    for i in b.indices { b[i] = UInt8(ascii: "W") }
                    irp.complete(.success, information: b.count)
                    return .success
                }
                return .success
            }
        }
        """))
    (pkg / "Sources/check/main.swift").write_text(textwrap.dedent("""\
        import MyDriver
        import WDM
        import WDMTesting

        let io = IOManager()
        let d = try io.loadDriver(name: "MyDriver", entry: MyDriver.driverEntry)
        try io.addRootDevice(instanceName: "mine", functionDriver: d)
        let host = EmbeddedHost(io)
        let r = host.read(try host.open("mine"), count: 3)
        print(String(decoding: r.data, as: UTF8.self), io.verifier.count)
        """))
    (pkg / "Tests/MyDriverTests/MyDriverTests.swift").write_text(textwrap.dedent("""\
        import MyDriver
        import Testing
        import WDM
        import WDMTesting

        @Test func myDriverAnswersReadsWithW() throws {
            let io = IOManager()
            let d = try io.loadDriver(name: "MyDriver", entry: MyDriver.driverEntry)
            try io.addRootDevice(instanceName: "mine", functionDriver: d)
            let reads = IRPRecorder { device, irp, _ in irp.majorFunction == .read ? who(device) : nil }
            io.addObserver(reads)
            let host = EmbeddedHost(io)
            let file = try host.open("mine")
            #expect(host.read(file, count: 2).data == Array("WW".utf8))
            host.close(file)
            #expect(reads.events.all == ["MyDriver"])
            #expect(io.verifier.count == 0)
        }
        """))
    r = subprocess.run(["swift", "build", "--product", "check"], cwd=pkg, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = subprocess.run([str(pkg / ".build/debug/check")], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["WWW", "0"]
    with open(pkg / "Package.resolved") as f:
        assert "ordo-one" not in f.read()
    r = subprocess.run(["swift", "build", "--build-tests"], cwd=pkg, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["swift", "test", "--skip-build"], cwd=pkg, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "myDriverAnswersReadsWithW() passed" in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
