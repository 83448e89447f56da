// wdmfs: the command-line tool.

import ArgumentParser

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
            """,
        subcommands: [Mount.self, Unmount.self, Ioctl.self])
}
