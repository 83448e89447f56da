// The driver shown in README.md under "Writing a driver", with the test that
// shows it works as the README says, and one that checks the README shows this
// very code (so the two cannot drift).

import Foundation
import Synchronization
import Testing
import WDM
import WDMTesting

// --- begin README example ---
public enum CountingDriver {
    final class Extension: Sendable {
        let bytes = Atomic<Int>(0)
    }

    public static let driverEntry: DriverEntry = { driver in
        // IoCreateDevice + IoAttachDeviceToDeviceStack + IoCreateSymbolicLink, DO_DEVICE_INITIALIZING cleared
        driver.addDevice = { driver, pdo in
            driver.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: .bufferedIO, extension: Extension())
        }
        driver.majorFunction.succeed([.create, .cleanup, .close])
        driver.majorFunction[.pnp] = PnP.functionDispatch()  // START after the bus, REMOVE: detach and delete
        driver.majorFunction[.write] = { device, irp in
            let ext = device.deviceExtension(as: Extension.self)
            let buffer = irp.transferBuffer  // SystemBuffer here (DO_BUFFERED_IO): the caller's memory
            ext.bytes.add(buffer.count, ordering: .relaxed)
            irp.complete(.success, information: buffer.count)  // IoCompleteRequest
            return .success
        }
        driver.majorFunction[.read] = { device, irp in
            // The count so far, as text, cut to the caller's buffer.
            let text = Array(String(device.deviceExtension(as: Extension.self).bytes.load(ordering: .relaxed)).utf8)
            let buffer = irp.transferBuffer
            let n = min(text.count, buffer.count)
            if irp.parameters.read.byteOffset > 0 || n == 0 {
                irp.complete(.endOfFile)
                return .endOfFile
            }
            buffer.copyBytes(from: text.prefix(n))
            irp.complete(.success, information: n)
            return .success
        }
        return .success
    }
}
// --- end README example ---

@Suite struct ReadmeExampleTests {
    @Test func theReadmeShowsThisDriverWordForWord() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOf: here, encoding: .utf8)
        func between(_ text: String, _ start: String, _ end: String) -> String? {
            guard let a = text.range(of: start), let b = text.range(of: end, range: a.upperBound..<text.endIndex) else { return nil }
            return String(text[a.upperBound..<b.lowerBound])
        }
        let shown = try #require(between(readme, "## Writing a driver", "\n## ").flatMap { between($0, "```swift\n", "```") })
        let code = try #require(between(source, "// --- begin README example ---\n", "// --- end README example ---"))
        #expect(shown == "import Synchronization\nimport WDM\n\n" + code)
    }

    @Test func theCountingDriverCountsWhatIsWritten() throws {
        let io = IOManager()
        let driver = try io.loadDriver(name: "Counting", entry: CountingDriver.driverEntry)
        try io.addRootDevice(instanceName: "counter", functionDriver: driver)
        let host = EmbeddedHost(io)
        let f = try host.open("counter")
        #expect(host.write(f, Array("hello".utf8)).information == 5)
        #expect(host.write(f, Array("world!".utf8)).information == 6)
        #expect(String(decoding: host.read(f, count: 64).data, as: UTF8.self) == "11")
        #expect(host.read(f, count: 64, offset: 2).status == .endOfFile)
        #expect(io.statistics.bytesCopied == 0)
    }
}
