// A Request has one owner: completing it twice, or using it after a forward,
// does not compile. Each snippet is compiled (to SIL, where Swift checks
// ownership) against the WDF module this test binary was built with; the
// version that completes once compiles cleanly, so a missing module or a broken
// command fails the test instead of passing it.

import Foundation
import Testing

@Suite struct FrameworkCompileTests {
    /// The Modules folder beside this test binary (.build/<triple>/debug/Modules).
    static var modules: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("Modules").path
    }

    /// swiftc's exit status and error lines for `source`.
    func compile(_ source: String) throws -> (status: Int32, errors: [String]) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wdf-snippet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("snippet.swift")
        try source.write(to: file, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["swiftc", "-emit-sil", "-o", "/dev/null", "-I", Self.modules, file.path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text.split(separator: "\n").map(String.init).filter { $0.contains("error:") })
    }

    static let once = """
        import WDF
        func handler(_ request: consuming Request) {
            let n = request.length
            request.complete(.success, information: n)
        }
        """

    @Test func completingARequestOnceCompiles() throws {
        #expect(FileManager.default.fileExists(atPath: Self.modules + "/WDF.swiftmodule"), "\(Self.modules)")
        let r = try compile(Self.once)
        #expect(r.status == 0 && r.errors.isEmpty, "\(r.errors)")
    }

    @Test(arguments: [
        ("request.complete(.success)\n    request.complete(.success)", "consumed more than once"),
        ("request.forwardToLower()\n    request.complete(.success)", "consumed more than once"),
        ("_ = request.markCancellable { $0.complete(.cancelled) }\n    request.complete(.success)", "consumed more than once"),
    ])
    func completingARequestTwiceDoesNotCompile(body: String, error: String) throws {
        let r = try compile("import WDF\nfunc handler(_ request: consuming Request) {\n    \(body)\n}\n")
        #expect(r.status != 0)
        #expect(r.errors.contains { $0.contains("'request' \(error)") }, "\(r.errors)")
    }
}
