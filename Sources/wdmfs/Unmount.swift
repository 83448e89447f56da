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
              wdmfs unmount --force /mnt/wdm   # end the daemon now; callers waiting in drivers get an error
            """)

    @Argument(help: "Where the tree is mounted.")
    var mountpoint: String

    @Flag(help: "Detach now even if files are open; the daemon ends when the last one closes.")
    var lazy = false

    @Flag(help: "End the daemon even if files are open or requests wait in drivers: they are cancelled and answered, every driver unloads.")
    var force = false

    func validate() throws {
        if lazy && force { throw ValidationError("give --lazy or --force, not both") }
    }

    func run() throws {
        guard Daemon.isMounted(mountpoint) else { fail("\(Daemon.absolute(mountpoint)) is not a mounted wdmfs tree") }
        if force {
            if let problem = Daemon.terminate(mountpoint) { fail(problem) }
            return
        }
        if let problem = Daemon.unmount(mountpoint, lazy: lazy) { fail(problem) }
    }
}
