// `wdmfs plug`, `unplug`, `eject`: what the toaster sample's enum program does,
// through the envelope to the toaster bus's device file.

import ArgumentParser
import Foundation
import WDM
import ToasterPublic
import WDMClient

/// The toaster bus IOCTLs; the buffers are built by the toaster's public header
/// (ToasterPublic's `ToasterBus.plugInRequest` / `unplugRequest`, the sample's public.h).
enum BusRequest {
    static let plugIn = ToasterBus.plugIn.rawValue, unplug = ToasterBus.unplug.rawValue, eject = ToasterBus.eject.rawValue

    static let names: [UInt32: String] = [
        plugIn: "IOCTL_BUSENUM_PLUGIN_HARDWARE", unplug: "IOCTL_BUSENUM_UNPLUG_HARDWARE", eject: "IOCTL_BUSENUM_EJECT_HARDWARE",
    ]

    /// Waits until the PnP manager of the mount at `mountpoint` has nothing left to
    /// do (`.devices/.control` takes `settle`; root may ask for it). False when it could not ask.
    @discardableResult
    static func settle(mountpoint: String) -> Bool {
        let control = mountpoint + "/.devices/.control"
        guard access(control, W_OK) == 0, let h = FileHandle(forWritingAtPath: control) else { return false }
        try? h.write(contentsOf: Data("settle\n".utf8))
        try? h.close()
        return true
    }

    /// Sends one request to the bus device file; exits 1 with the status's name when
    /// it fails, or saying the file is no bus when its driver does not take the code.
    static func send(bus: String, code: UInt32, input: [UInt8], what: String, explain: [NTStatus: String] = [:]) throws {
        let fd: Int32
        do { fd = try DeviceFile.open(bus, readOnly: true) } catch {
            let reason: String
            if case .system(let e) = error {
                // The bus is DO_EXCLUSIVE: a second open gets STATUS_ACCESS_DENIED (EACCES)
                // while the mode itself would let this user in.
                if e == EACCES, access(bus, R_OK) == 0 {
                    FileHandle.standardError.write(Data("wdmfs: \(bus) is busy: another program has the bus open (it takes one handle at a time); try again\n".utf8))
                    throw ExitCode(1)
                }
                reason = DeviceFile.describe(e)
            } else {
                reason = "\(error)"
            }
            fail("\(bus): \(reason)")
        }
        defer { DeviceFile.close(fd) }
        let result: (status: NTStatus, information: UInt64, output: [UInt8])
        do { result = try IoctlEnvelope.call(fd: fd, code: code, input: input, outputLength: 0) } catch {
            fail("ioctl on \(bus): \(error)")
        }
        guard result.status.isSuccess else {
            // What a driver answers a control code it does not know (the toaster bus
            // itself answers STATUS_INVALID_PARAMETER to a request it cannot carry out).
            if [NTStatus.invalidDeviceRequest, .notSupported, .notImplemented].contains(result.status) {
                complain("\((bus as NSString).lastPathComponent) is not a bus (it does not take \(names[code] ?? "0x" + String(code, radix: 16)))")
                throw ExitCode(1)
            }
            let why = explain[result.status].map { ": " + $0 } ?? ""
            FileHandle.standardError.write(Data("wdmfs: \(what) failed: \(result.status) (0x\(String(result.status.rawValue, radix: 16, uppercase: true)))\(why)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Plug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plug a toaster into the toaster bus (IOCTL_BUSENUM_PLUGIN_HARDWARE).",
        discussion: """
            Its device file (toasterSERIAL) appears under the mount once the PnP
            manager has started it.
            Example:
              wdmfs plug /mnt/wdm/toaster-bus 1 && cat /mnt/wdm/toaster1
            """)
    @Argument(help: "The toaster bus's device file.") var bus: String
    @Argument(help: "The serial number (1 or more).") var serial: UInt32
    @Option(help: "A hardware ID (repeat for several; default the toaster's).") var hardwareId: [String] = []

    func run() throws {
        try BusRequest.send(bus: bus, code: BusRequest.plugIn,
                            input: ToasterBus.plugInRequest(serial: serial, hardwareIDs: hardwareId.isEmpty ? [ToasterBus.toasterHardwareID] : hardwareId),
                            what: "plugging in toaster \(serial)",
                            explain: [.invalidParameter: serial == 0 ? "serial numbers start at 1" : "a toaster with serial \(serial) is plugged in already"])
        // The PnP manager starts it on its own thread: once it has settled, the file
        // is there or it failed.
        let dir = (bus as NSString).deletingLastPathComponent
        if BusRequest.settle(mountpoint: dir) {
            guard FileManager.default.fileExists(atPath: dir + "/toaster\(serial)") else {
                fail("toaster \(serial) was plugged in but did not start (see \(dir)/.devices/toaster-bus/toaster\(serial)/status)")
            }
        }
        print("toaster\(serial)")
    }
}

struct Unplug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unplug a toaster (IOCTL_BUSENUM_UNPLUG_HARDWARE); serial 0 unplugs them all.",
        discussion: """
            Returns once the PnP manager has handled it (as root): open handles on it get
            ENODEV from then on; it is removed when the last closes.
            Example:
              wdmfs unplug /mnt/wdm/toaster-bus 1
            """)
    @Argument(help: "The toaster bus's device file.") var bus: String
    @Argument(help: "The serial number, or 0 for all.") var serial: UInt32

    func run() throws {
        try BusRequest.send(bus: bus, code: BusRequest.unplug, input: ToasterBus.unplugRequest(serial: serial), what: "unplugging toaster \(serial)")
        // The PnP manager removes it on its own thread: done once it has settled.
        BusRequest.settle(mountpoint: (bus as NSString).deletingLastPathComponent)
    }
}

struct Eject: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Eject a toaster (IOCTL_BUSENUM_EJECT_HARDWARE); serial 0 ejects them all.",
        discussion: """
            Example:
              wdmfs eject /mnt/wdm/toaster-bus 1
            """)
    @Argument(help: "The toaster bus's device file.") var bus: String
    @Argument(help: "The serial number, or 0 for all.") var serial: UInt32

    func run() throws {
        try BusRequest.send(bus: bus, code: BusRequest.eject, input: ToasterBus.unplugRequest(serial: serial), what: "ejecting toaster \(serial)")
        BusRequest.settle(mountpoint: (bus as NSString).deletingLastPathComponent)
    }
}
