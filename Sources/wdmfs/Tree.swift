// `wdmfs tree`: the device tree description.

import ArgumentParser
import DefaultTree
import Foundation

struct Tree: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print or check a device tree file.",
        discussion: """
            Examples:
              wdmfs tree --print-default > my-tree.yaml      # the default tree, to copy and edit
              wdmfs tree --check my-tree.yaml                # file:line:column: reason, exit 2, if it is wrong
              wdmfs mount /mnt/wdm --tree my-tree.yaml
            """)

    @Flag(help: "Print the built-in default tree as a tree file.")
    var printDefault = false

    @Option(help: "Check a tree file without mounting it.")
    var check: String?

    func validate() throws {
        if printDefault == (check != nil) { throw ValidationError("give --print-default or --check FILE") }
    }

    func run() throws {
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
