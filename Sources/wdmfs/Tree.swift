// `wdmfs tree`: the device tree description.

import ArgumentParser
import DefaultTree
import Foundation

struct Tree: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a mounted tree's device nodes, or print or check a tree file.",
        discussion: """
            Examples:
              wdmfs tree /mnt/wdm                            # the device nodes, nested by parent
              wdmfs tree --print-default > my-tree.yaml      # the default tree, to copy and edit
              wdmfs tree --check my-tree.yaml                # file:line:column: reason, exit 2, if it is wrong
              wdmfs mount /mnt/wdm --tree my-tree.yaml
              wdmfs tree /mnt/wdm --json                     # the nodes, for scripts
            With --json (with a MOUNTPOINT only), an array of the root nodes: objects
            with the keys of `wdmfs status --json` and `children`, an array of such:
            \(statusKeysHelp)
              children      its child nodes, in the same order as the text
            """)

    @Argument(help: "A mounted tree: print its device nodes.")
    var mountpoint: String?

    @Flag(help: "Print the built-in default tree as a tree file.")
    var printDefault = false

    @Option(help: "Check a tree file without mounting it.")
    var check: String?

    @Flag(help: "With a MOUNTPOINT: print the nodes as JSON (keys in the discussion), for scripts.")
    var json = false

    func validate() throws {
        let given = [mountpoint != nil, printDefault, check != nil].filter { $0 }.count
        if given != 1 { throw ValidationError("give a MOUNTPOINT, --print-default or --check FILE") }
        if json && mountpoint == nil { throw ValidationError("--json goes with a MOUNTPOINT") }
    }

    func run() throws {
        if let mountpoint {
            let tree = DeviceTreeFiles(mountpoint)
            if json {
                let system = tree.systemPower
                func records(_ parent: NodeDir?) -> [[String: Any]] {
                    tree.children(of: parent).map { node in
                        var r = tree.statusRecord(node, systemPower: system)
                        r["children"] = records(node)
                        return r
                    }
                }
                printJSON(records(nil))
                return
            }
            for node in tree.nodes() {
                let status = tree.trimmed(node, "status")
                // A node that is not simply started says how it is: `zero: started, D3 (system S3)`.
                print(String(repeating: "  ", count: node.depth) + node.name + (status == "started" ? "" : ": \(status)"))
            }
            return
        }
        if printDefault {
            print(TreeFile.text(of: DefaultTree.description()), terminator: "")
            return
        }
        do throws(TreeError) {
            let tree = try TreeFile.load(path: check!)
            print("\(check!): \(tree.devices.count) devices: \(tree.devices.map(\.name).joined(separator: " "))")
        } catch {
            fail("\(error)")
        }
    }
}
