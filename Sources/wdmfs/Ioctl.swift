// `wdmfs ioctl`: DeviceIoControl from the shell, through the envelope.

import ArgumentParser
import Foundation
import WDM
import WDMClient

struct Ioctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one I/O control code to a device file and print the output.",
        discussion: """
            Prints the output bytes (Information of them) in hex, or raw with --raw.
            When the NTSTATUS is not STATUS_SUCCESS its name goes to stderr. Exit
            status: 0 when NT_SUCCESS, 1 otherwise, 2 for usage or system errors.
            CODE is a number (0x0007405C) or a known name:
            \(Ioctl.knownCodes.map { "  \($0.0) = \($0.1)" }.joined(separator: "\n"))

            Examples:
              wdmfs ioctl /mnt/wdm/ramdisk0 IOCTL_DISK_GET_LENGTH_INFO --out-size 8
              wdmfs ioctl /mnt/wdm/ioctl-demo 0x00222000 --in 68656c6c6f --out-size 5
            """)

    static let knownCodes: [(String, ControlCode)] = [
        ("IOCTL_DISK_GET_DRIVE_GEOMETRY", .diskGetDriveGeometry),
        ("IOCTL_DISK_GET_DRIVE_GEOMETRY_EX", .diskGetDriveGeometryEx),
        ("IOCTL_DISK_GET_LENGTH_INFO", .diskGetLengthInfo),
    ]

    @Argument(help: "The device file.")
    var file: String

    @Argument(help: "The control code: a number or a known IOCTL_ name.")
    var code: String

    @Option(name: .customLong("in"), help: "Input bytes in hex (68656c6c6f).")
    var inputHex: String?

    @Option(help: "Read the input bytes from a file.")
    var inFile: String?

    @Option(help: "Output buffer length (default 4096).")
    var outSize: Int = 4096

    @Flag(help: "Open the file read-only (the handle is granted FILE_READ_DATA only).")
    var readOnly = false

    @Flag(help: "Write the output bytes as they are instead of hex.")
    var raw = false

    func validate() throws {
        if inputHex != nil && inFile != nil { throw ValidationError("give --in or --in-file, not both") }
        if outSize < 0 || outSize > IoctlEnvelope.maxCapacity {
            throw ValidationError("--out-size must be 0...\(IoctlEnvelope.maxCapacity)")
        }
        if Self.parseCode(code) == nil { throw ValidationError("unknown control code '\(code)'") }
        if let inputHex, Self.parseHex(inputHex) == nil { throw ValidationError("--in is not hex: '\(inputHex)'") }
    }

    static func parseCode(_ s: String) -> UInt32? {
        if let known = knownCodes.first(where: { $0.0 == s.uppercased() }) { return known.1.rawValue }
        if s.lowercased().hasPrefix("0x") { return UInt32(s.dropFirst(2), radix: 16) }
        return UInt32(s)
    }

    static func parseHex(_ s: String) -> [UInt8]? {
        let digits = s.filter { !$0.isWhitespace && $0 != ":" }
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        var i = digits.startIndex
        while i < digits.endIndex {
            let j = digits.index(i, offsetBy: 2)
            guard let b = UInt8(digits[i..<j], radix: 16) else { return nil }
            out.append(b)
            i = j
        }
        return out
    }

    func run() throws {
        var input: [UInt8] = []
        if let inputHex { input = Self.parseHex(inputHex)! }
        if let inFile {
            guard let data = FileManager.default.contents(atPath: inFile) else { fail("cannot read \(inFile)") }
            input = [UInt8](data)
        }
        if input.count > IoctlEnvelope.maxCapacity { fail("input longer than \(IoctlEnvelope.maxCapacity) bytes") }
        let fd: Int32
        do { fd = try DeviceFile.open(file, readOnly: readOnly) } catch { fail("\(file): \(describe(error))") }
        defer { DeviceFile.close(fd) }
        let result: (status: NTStatus, information: UInt64, output: [UInt8])
        do {
            result = try IoctlEnvelope.call(fd: fd, code: Self.parseCode(code)!, input: input, outputLength: outSize)
        } catch {
            fail("ioctl on \(file): \(describe(error))")
        }
        if raw {
            FileHandle.standardOutput.write(Data(result.output))
        } else if !result.output.isEmpty {
            print(result.output.map { String($0, radix: 16).leftPad2 }.joined())
        }
        if result.status != .success {
            let hex = "0x" + String(result.status.rawValue, radix: 16, uppercase: true)
            FileHandle.standardError.write(Data("\(result.status.name ?? hex) (\(hex))\n".utf8))
        }
        if !result.status.isSuccess { throw ExitCode(1) }
    }

    func describe(_ e: IoctlEnvelope.EnvelopeError) -> String {
        switch e {
        case .system(let code): DeviceFile.describe(code)
        case .tooLarge(let n): "\(n) bytes is more than the envelope carries"
        }
    }
}

extension String {
    var leftPad2: String { count < 2 ? "0" + self : self }
}
