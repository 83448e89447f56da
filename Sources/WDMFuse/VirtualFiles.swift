// VirtualFiles: the bridge's own files: `.stats` (the I/O manager's counters),
// `.power` (the system power state), and the text of `.devices` node files. A
// handle of one holds the text as it was when it was opened, so reading it in
// small pieces never mixes two.

import CFuse
import Glibc
import WDM
import WDMClient

extension FuseBridge {
    func readStats(_ reply: consuming FuseReply, _ size: Int, _ off: Int, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let fi, let p = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else {
            reply.error(EBADF)
            return
        }
        let text = Unmanaged<StatsSnapshot>.fromOpaque(p).takeUnretainedValue().bytes
        let from = min(max(off, 0), text.count), to = min(from + max(size, 0), text.count)
        reply.data(text.baseAddress.map { $0 + from }, to - from)
    }

    /// `echo S3 > .power`: the system goes to sleep (children first); `S0` wakes it.
    func writePower(_ reply: consuming FuseReply, _ data: UnsafePointer<CChar>?, _ size: Int) {
        let text = data.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
        guard let state = SystemPowerState(name: String(text.filter { !$0.isWhitespace })) else {
            reply.error(EINVAL)
            return
        }
        let status = io.setSystemPower(state)
        if status.isSuccess { reply.written(size) } else { reply.error(ErrnoTable.errno(for: status)) }
    }
}

extension FuseBridge {
    /// `.verifier`: which drivers Driver Verifier checks, what a violation does,
    /// and the violations so far (the most recent 256), one per line.
    var verifierText: String {
        let v = io.verifier
        var s = "verify \(v.scope)\naction \(v.action.rawValue)\n"
        // The stress options only while one is on (`stress none` turns them off).
        if v.stress.isActive { s += "stress \(v.stress)\n" }
        s += "violations \(v.count)\n"
        for violation in v.violations { s += "\(violation)\n" }
        return s
    }

    /// `echo 'verify all' > .verifier` (or `none`, or driver names with commas),
    /// `echo 'action fail' > .verifier` (`log`, `fail`, `bugcheck`). A driver that
    /// is not loaded, or another word, is EINVAL, and the log says why.
    func writeVerifier(_ reply: consuming FuseReply, _ data: UnsafePointer<CChar>?, _ size: Int) {
        let text = data.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
        if words.first == "stress", words.count >= 2 {
            switch Verifier.Stress.parse(words.dropFirst().joined(separator: ","), base: io.verifier.stress) {
            case .success(let stress):
                io.verifier.stress = stress
                io.log?(".verifier: stress \(stress)")
                reply.written(size)
            case .failure(let why):
                io.log?(".verifier: \(why)")
                reply.error(EINVAL)
            }
            return
        }
        guard words.count == 2 else {
            io.log?(".verifier: expected `verify all|none|DRIVER,...`, `action log|fail|bugcheck` or `stress OPTION=VALUE...`, got \(text.debugDescription)")
            reply.error(EINVAL)
            return
        }
        switch words[0] {
        case "verify":
            switch verifierScope(words[1]) {
            case .success(let scope): io.verifier.scope = scope
            case .failure(let why):
                io.log?(".verifier: \(why)")
                reply.error(EINVAL)
                return
            }
        case "action":
            guard let action = Verifier.Action(rawValue: words[1]) else {
                io.log?(".verifier: no action \(words[1].debugDescription) (log, fail or bugcheck)")
                reply.error(EINVAL)
                return
            }
            io.verifier.action = action
        default:
            io.log?(".verifier: no setting \(words[0].debugDescription) (verify or action)")
            reply.error(EINVAL)
            return
        }
        reply.written(size)
    }

    /// `all`, `none` or names of loaded drivers (with or without `\Driver\`).
    public func verifierScope(_ text: String) -> Result<Verifier.Scope, MountError> {
        guard let scope = Verifier.Scope(text) else { return .failure(MountError("not a list of drivers: \(text.debugDescription)")) }
        if case .drivers(let names) = scope {
            let loaded = Set(io.loadedDrivers.map { String($0.name.dropFirst("\\Driver\\".count)) })
            let unknown = names.subtracting(loaded).sorted()
            if !unknown.isEmpty {
                return .failure(MountError("no driver named \(unknown.joined(separator: ", ")) is loaded (loaded: \(loaded.sorted().joined(separator: ", ")))"))
            }
        }
        return .success(scope)
    }
}

/// `.stats` as it was when a handle opened it.
final class StatsSnapshot {
    let bytes: UnsafeMutableRawBufferPointer
    init(_ text: String) {
        let utf8 = Array(text.utf8)
        bytes = .allocate(byteCount: utf8.count, alignment: 1)
        bytes.copyBytes(from: utf8)
    }
    deinit { bytes.deallocate() }
}
