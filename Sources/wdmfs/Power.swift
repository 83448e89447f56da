// `wdmfs power`: the system power state, through the mount's `.power` file.

import ArgumentParser
import Foundation

struct PowerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "power",
        abstract: "Show or set the system power state (S0 working, S3 sleep, S4 hibernate, S5 off).",
        discussion: """
            Sleeping sends QUERY_POWER and SET_POWER down every stack, children first;
            waking, parents first. I/O to a device that is not in D0 waits until it is.
            The command only reads and writes MOUNTPOINT/.power; `echo S3 > MOUNTPOINT/.power` does the same.
            Examples:
              wdmfs power /mnt/wdm S3
              wdmfs power /mnt/wdm          # prints S3
              wdmfs power /mnt/wdm S0
            """)
    @Argument(help: "Where the tree is mounted.") var mountpoint: String
    @Argument(help: "S0, S1, S2, S3, S4 or S5; none to print the current state.") var state: String?

    func validate() throws {
        if let state, !["S0", "S1", "S2", "S3", "S4", "S5"].contains(state.uppercased()) {
            throw ValidationError("unknown power state '\(state)' (S0 ... S5)")
        }
    }

    func run() throws {
        let file = mountpoint + "/.power"
        if let state {
            guard let h = FileHandle(forWritingAtPath: file) else { fail("\(file): cannot open (is \(mountpoint) a wdmfs mount?)") }
            do {
                try h.write(contentsOf: Data((state.uppercased() + "\n").utf8))
                try h.close()
            } catch {
                fail("could not set \(state): \(error)")
            }
        } else {
            guard let data = FileManager.default.contents(atPath: file) else { fail("\(file): cannot read (is \(mountpoint) a wdmfs mount?)") }
            print(String(decoding: data, as: UTF8.self), terminator: "")
        }
    }
}
