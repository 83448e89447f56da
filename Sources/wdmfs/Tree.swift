// `wdmfs tree`: the device tree description.

import ArgumentParser
import DefaultTree
import Foundation
import WDMHost

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
              wdmfs tree /mnt/wdm --dot --output tree.svg    # a picture: each node with its stack (Graphviz)
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

    @Flag(help: "With a MOUNTPOINT: print the tree in Graphviz's DOT language, each node with its stack, top first.")
    var dot = false

    @Option(help: "With --dot: draw it into this file (.svg or .png) with Graphviz's dot instead.")
    var output: String?

    func validate() throws {
        let given = [mountpoint != nil, printDefault, check != nil].filter { $0 }.count
        if given != 1 { throw ValidationError("give a MOUNTPOINT, --print-default or --check FILE") }
        if json && mountpoint == nil { throw ValidationError("--json goes with a MOUNTPOINT") }
        if dot && mountpoint == nil { throw ValidationError("--dot goes with a MOUNTPOINT") }
        if json && dot { throw ValidationError("give --json or --dot, not both") }
        if output != nil && !dot { throw ValidationError("--output goes with --dot") }
        if let output, !output.hasSuffix(".svg") && !output.hasSuffix(".png") { throw ValidationError("--output must end in .svg or .png") }
    }

    func run() throws {
        if let mountpoint {
            let tree = DeviceTreeFiles(mountpoint)
            if dot {
                let text = dotText(tree)
                guard let output else {
                    print(text, terminator: "")
                    return
                }
                let source = NSTemporaryDirectory() + "wdmfs-tree-\(getpid()).dot"
                guard FileManager.default.createFile(atPath: source, contents: Data(text.utf8)) else { fail("cannot write \(source)") }
                defer { unlink(source) }
                try render(["dot", "-T" + (output.hasSuffix(".png") ? "png" : "svg"), "-o", output, source], package: "graphviz")
                print(output)
                return
            }
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

/// The tree in DOT: a box per node with its name, status and stack (top first,
/// each device's location), an edge from each bus to the children it reports.
func dotText(_ tree: DeviceTreeFiles) -> String {
    func html(_ s: String) -> String {
        // A backslash doubled: Graphviz reads \E, \N, ... as escapes even in HTML labels.
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\\", with: "\\\\")
    }
    var out = "digraph wdmfs {\n  rankdir=TB;\n  node [shape=plain, fontname=\"Helvetica\"];\n"
    var ids: [String: String] = [:]
    for (i, node) in tree.nodes().enumerated() {
        let id = "n\(i)"
        ids[node.treePath] = id
        let stack = tree.lines(node, "stack")
        var rows = "<tr><td bgcolor=\"lightgrey\"><b>\(html(node.name))</b> (\(html(tree.trimmed(node, "status"))))</td></tr>"
        for (k, device) in stack.enumerated() {
            rows += "<tr><td align=\"left\">\(stack.count - k)/\(stack.count) \(html(device))</td></tr>"
        }
        out += "  \(id) [label=<<table border=\"1\" cellborder=\"0\" cellspacing=\"2\">\(rows)</table>>];\n"
        let parent = node.treePath.split(separator: "/").dropLast().joined(separator: "/")
        if let p = ids[parent] { out += "  \(p) -> \(id);\n" }
    }
    return out + "}\n"
}

/// `wdmfs driver-host`: the process a device with `isolation: host` runs in. The
/// daemon starts it with the channel on standard input; it is not for users.
struct DriverHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "driver-host",
        abstract: "Run one device's driver for the daemon (started by the daemon for `isolation: host`).",
        shouldDisplay: false)

    func run() throws {
        let status = DriverHost.run(fd: 0) { name in DriverCatalog.named(name)?.entry }
        throw ExitCode(status)
    }
}
