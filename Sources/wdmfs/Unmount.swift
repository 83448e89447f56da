// `wdmfs unmount`: unmounts and waits for the daemon to unload its drivers.

import ArgumentParser
import WDMClient

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unmount a wdmfs tree; its daemon unloads every driver and exits.",
        discussion: """
            Example:
              wdmfs unmount /mnt/wdm
              wdmfs unmount --lazy /mnt/wdm    # while a process still has a device open
            """)

    @Argument(help: "Where the tree is mounted.")
    var mountpoint: String

    @Flag(help: "Detach now even if files are open; the daemon ends when the last one closes.")
    var lazy = false

    func run() throws {
        guard Daemon.isMounted(mountpoint) else { fail("\(Daemon.absolute(mountpoint)) is not a mounted wdmfs tree") }
        if let problem = Daemon.unmount(mountpoint, lazy: lazy) { fail(problem) }
    }
}
