// VirtualFiles: the bridge's own files: `.stats` (the I/O manager's counters),
// `.power` (the system power state), and the text of `.devices` node files. A
// handle of one holds the text as it was when it was opened, so reading it in
// small pieces never mixes two.

import CFuse
import Glibc
import WDM

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
