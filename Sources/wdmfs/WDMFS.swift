// wdmfs: the command-line tool.

import ArgumentParser
import Foundation
import WDMClient

@main
struct WDMFS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wdmfs",
        abstract: "Windows-Driver-Model device stacks, written in Swift, as files.",
        discussion: """
            Mount a device tree, then use its devices with cat, dd and ioctl:
              wdmfs mount /mnt/wdm
              cat /mnt/wdm/.stats
              wdmfs ioctl /mnt/wdm/ramdisk0 IOCTL_DISK_GET_LENGTH_INFO --out-size 8
              wdmfs unmount /mnt/wdm
            Example: wdmfs mount --help
            Shell completion: wdmfs --generate-completion-script bash (or zsh, fish).
            """,
        version: WDMFSVersion.description,
        subcommands: [Mount.self, Unmount.self, Ioctl.self, Tree.self, Status.self, HWIDs.self, Stack.self, Remove.self, Restart.self, Rebalance.self, Disable.self, Enable.self, Rescan.self, Plug.self, Unplug.self, Eject.self, PowerCommand.self, Verify.self, Attach.self, Detach.self, TraceCommand.self, LogLevel.self, DriverHostCommand.self, NewDriver.self, Sign.self])

    /// Exit statuses: 0 success, 1 a request that ran and failed (an NTSTATUS),
    /// 2 usage or system errors. ArgumentParser's own usage status (64) becomes 2.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                Foundation.exit(0)
            }
            if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            Foundation.exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}
