// `wdmfs verify`: what Driver Verifier checks on a mounted tree, and what it
// found, through the mount's `.verifier` file.

import ArgumentParser
import Crypto
import Foundation
import WDM

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or change which drivers Driver Verifier checks, and what a violation does.",
        discussion: """
            Without arguments, prints what is verified, the action, and every violation so far.
            The command only reads and writes MOUNTPOINT/.verifier:
            `echo 'verify all' > MOUNTPOINT/.verifier` does the same.
            Examples:
              wdmfs verify /mnt/wdm all
              wdmfs verify /mnt/wdm Misbehave,Echo --action fail
              wdmfs verify /mnt/wdm all --stress pending=0.5,seed=7
              wdmfs verify /mnt/wdm none
              wdmfs verify /mnt/wdm
            With --signature, checks a driver package's signature instead (no mount):
              wdmfs verify --signature .build/debug/HelloHost --trusted-key ~/wdmfs.key.pub
            """)
    @Argument(help: "Where the tree is mounted.") var mountpoint: String?
    @Argument(help: "all, none, or driver names separated by commas; none given: print.") var drivers: String?
    @Option(help: "log, fail (also fail the IRP) or bugcheck (end the daemon).") var action: Verifier.Action?
    @Option(help: "Stress options: pending=P,low-resources=P,irp-log=N,deadline=S,seed=N (the ones named change), or none.") var stress: String?

    @Option(help: "A driver package's host executable whose signature (FILE.sig) to check.") var signature: String?
    @Option(help: "A public key the signature must be by (repeat for several).") var trustedKey: [String] = []

    func run() throws {
        if let signature {
            let keys: [Data]
            do { keys = try trustedKey.map { try PackageSignature.publicKey(file: $0).rawRepresentation } } catch { fail("\(error)") }
            if let problem = PackageSignature.problem(signature, trusted: keys) {
                FileHandle.standardError.write(Data("wdmfs: \(problem)\n".utf8))
                throw ExitCode(1)
            }
            print("\(signature): signed by a trusted key")
            return
        }
        guard let mountpoint else { fail("give MOUNTPOINT (or --signature FILE)") }
        let file = mountpoint + "/.verifier"
        var lines: [String] = []
        if let drivers { lines.append("verify \(drivers)") }
        if let action { lines.append("action \(action.rawValue)") }
        if let stress {
            if case .failure(let why) = Verifier.Stress.parse(stress) { fail("--stress: \(why)") }
            lines.append("stress \(stress)")
        }
        for line in lines {
            let fd = open(file, O_WRONLY)
            guard fd >= 0 else { fail("\(file): \(String(cString: strerror(errno))) (is \(mountpoint) a wdmfs mount?)") }
            let n = (line + "\n").withCString { Foundation.write(fd, $0, strlen($0)) }
            let e = errno
            close(fd)
            if n < 0 {
                if e == EINVAL { fail("the daemon refused `\(line)`: \(refusal(line))") }
                fail("\(file): \(String(cString: strerror(e)))")
            }
        }
        guard let data = FileManager.default.contents(atPath: file) else { fail("\(file): cannot read (is \(mountpoint) a wdmfs mount?)") }
        print(String(decoding: data, as: UTF8.self), terminator: "")
    }

    /// Why the daemon said EINVAL, told here as it would be (the same checks).
    func refusal(_ line: String) -> String {
        if let drivers, line.hasPrefix("verify"), Verifier.Scope(drivers) != nil {
            return "a driver named there is not loaded (wdmfs tree \(mountpoint) --json lists them; the daemon's log says which)"
        }
        return "not all, none or a list of driver names"
    }
}
