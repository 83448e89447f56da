// The driver shown in docs/framework.md under "Requests", with a test that it
// works as the page says for every METHOD_*, and one that checks the page shows
// this very code.

import Foundation
import Testing
import WDF
import WDMTesting

// --- begin framework.md example ---
public enum Shout {
    public static let driverEntry = Framework.functionDriver { (device: Device<NoContext>) in
        device.queue(.parallel(), for: [.deviceControl]) { _, request in
            do throws(NTStatus) {
                let input = try request.input(minimumLength: 1)
                let output = try request.output(minimumLength: input.count)
                for i in 0..<input.count { output[i] = UInt8(ascii: "a")...UInt8(ascii: "z") ~= input[i] ? input[i] - 32 : input[i] }
                request.complete(.success, information: input.count)
            } catch {
                request.complete(error)
            }
        }
        return NoContext()
    }
}
// --- end framework.md example ---

@Suite struct FrameworkDocExampleTests {
    @Test func theFrameworkPageShowsThisDriverWordForWord() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let page = try String(contentsOf: root.appendingPathComponent("docs/framework.md"), encoding: .utf8)
        let source = try String(contentsOf: here, encoding: .utf8)
        func between(_ text: String, _ start: String, _ end: String) -> String? {
            guard let a = text.range(of: start), let b = text.range(of: end, range: a.upperBound..<text.endIndex) else { return nil }
            return String(text[a.upperBound..<b.lowerBound])
        }
        let shown = try #require(between(page, "## Requests", "\n## ").flatMap { between($0, "```swift\n", "```") })
        let code = try #require(between(source, "// --- begin framework.md example ---\n", "// --- end framework.md example ---"))
        #expect(shown == "import WDF\n\n" + code)
    }

    @Test(arguments: TransferMethod.allCases)
    func theShoutDeviceUpperCasesWhateverTheMethod(_ method: TransferMethod) throws {
        let io = IOManager()
        let driver = try io.loadDriver(name: "Shout", entry: Shout.driverEntry)
        try io.addRootDevice(instanceName: "shout", functionDriver: driver)
        io.waitForPnP()
        let host = EmbeddedHost(io)
        let f = try host.open("shout")
        let code = ControlCode(deviceType: DeviceType.unknown, function: 0x800, method: method, access: [])
        let r = host.deviceIoControl(f, code, input: Array("hello, wdf".utf8), outputLength: 16)
        #expect(r.status == .success && r.output == Array("HELLO, WDF".utf8))
        #expect(host.deviceIoControl(f, code, input: Array("hi".utf8), outputLength: 1).status == .bufferTooSmall)
        #expect(host.read(f, count: 4).status == .invalidDeviceRequest)  // no queue for reads
        host.close(f)
    }
}
