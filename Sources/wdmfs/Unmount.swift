// `wdmfs unmount`: unmounts and waits for the daemon to unload its drivers.

import ArgumentParser
import WDMFuse

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unmount a wdmfs tree; its daemon unloads every driver and exits.",
        discussion: """
            Example:
              wdmfs unmount /mnt/wdm
            """)

    @Argument(help: "Where the tree is mounted.")
    var mountpoint: String

    func run() throws {
        guard Daemon.isMounted(mountpoint) else { fail("\(mountpoint) is not a mounted wdmfs tree") }
        if let problem = Daemon.unmount(mountpoint) { fail(problem) }
    }
}
