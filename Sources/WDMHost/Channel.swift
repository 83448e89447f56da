// The channel between the daemon and a driver host. A Unix stream socket
// carries the setup (the shared memory and the doorbells, as descriptors, then
// START as a frame: a 64-byte header and its text; its answer a 24-byte header)
// and tells each side when the other is gone (end of file). Everything after
// START goes through the rings in the shared memory (Arena.swift), in the same
// headers.

import Glibc
import WDM

/// What a request asks the host.
enum HostOp: UInt8 {
    /// Build the device's stack (data: driver NUL instance NUL key=value NUL ...).
    case start = 1
    /// Open a handle (`handle` is the daemon's name for it; `length`: the access mask).
    case open = 2
    /// A read, write or device control on a handle.
    case io = 3
    /// Cancel the request whose id is `handle`.
    case cancel = 4
    /// Close a handle.
    case close = 5
    /// A device power IRP for the host's stack (`code`: the minor, SET_POWER or
    /// QUERY_POWER; `length`: the DEVICE_POWER_STATE).
    case power = 6
}

/// A request's header. `data` is where the request's buffer lies in the shared
/// memory (an offset; 0: none), `capacity` its size: the host's drivers read
/// and write it in place.
struct RequestHeader {
    static let size = 64
    var op: HostOp
    var id: UInt64
    var handle: UInt64
    var major: UInt8 = 0
    var code: UInt32 = 0
    var inputLength: UInt32 = 0
    var outputLength: UInt32 = 0
    var offset: Int64 = 0
    var length: UInt32 = 0
    var dataLength: UInt32 = 0
    var data: UInt64 = 0
    var capacity: UInt32 = 0

    func encode(into p: UnsafeMutableRawPointer) {
        p.initializeMemory(as: UInt8.self, repeating: 0, count: Self.size)
        p.storeBytes(of: op.rawValue, toByteOffset: 0, as: UInt8.self)
        p.storeBytes(of: major, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: code.littleEndian, toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: id.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: handle.littleEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: offset.littleEndian, toByteOffset: 24, as: Int64.self)
        p.storeBytes(of: inputLength.littleEndian, toByteOffset: 32, as: UInt32.self)
        p.storeBytes(of: outputLength.littleEndian, toByteOffset: 36, as: UInt32.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 40, as: UInt32.self)
        p.storeBytes(of: dataLength.littleEndian, toByteOffset: 44, as: UInt32.self)
        p.storeBytes(of: data.littleEndian, toByteOffset: 48, as: UInt64.self)
        p.storeBytes(of: capacity.littleEndian, toByteOffset: 56, as: UInt32.self)
    }

    static func decode(_ p: UnsafeRawPointer) -> RequestHeader? {
        guard let op = HostOp(rawValue: p.load(fromByteOffset: 0, as: UInt8.self)) else { return nil }
        var h = RequestHeader(op: op, id: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                              handle: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
        h.major = p.load(fromByteOffset: 1, as: UInt8.self)
        h.code = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        h.offset = Int64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: Int64.self))
        h.inputLength = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        h.outputLength = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        h.length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
        h.dataLength = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 44, as: UInt32.self))
        h.data = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
        h.capacity = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 56, as: UInt32.self))
        return h
    }
}

/// A reply's header.
struct ReplyHeader {
    static let size = 24
    var id: UInt64
    var status: NTStatus
    var information: Int64
    var dataLength: UInt32

    func encode(into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: id.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(dataLength).littleEndian, toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: information.littleEndian, toByteOffset: 16, as: Int64.self)
    }

    static func decode(_ p: UnsafeRawPointer) -> ReplyHeader {
        ReplyHeader(id: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                    status: NTStatus(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))),
                    information: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: Int64.self)),
                    dataLength: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
    }
}

/// One end of the socket. Writes are whole frames under a lock (several threads
/// reply at once); one thread reads.
final class Channel: @unchecked Sendable {
    let fd: Int32
    private let writeLock = HandoffMutex(())

    init(fd: Int32) { self.fd = fd }

    /// Writes `header` then `data` as one frame; false once the other end is gone.
    func send(_ header: UnsafeRawBufferPointer, _ data: UnsafeRawBufferPointer) -> Bool {
        writeLock.withLock { _ in
            var parts = [iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                         iovec(iov_base: UnsafeMutableRawPointer(mutating: data.baseAddress), iov_len: data.count)]
            var left = header.count + data.count
            var first = 0
            while left > 0 {
                let n = parts.withUnsafeMutableBufferPointer { writev(fd, $0.baseAddress! + first, Int32(2 - first)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                left -= n
                var done = n
                while first < 2, done >= parts[first].iov_len {
                    done -= parts[first].iov_len
                    first += 1
                }
                if first < 2, done > 0 {
                    parts[first].iov_base = parts[first].iov_base.map { $0 + done }
                    parts[first].iov_len -= done
                }
            }
            return true
        }
    }

    /// Reads exactly `count` bytes into `into`; false at end of file or on an error.
    func receive(_ into: UnsafeMutableRawPointer?, _ count: Int) -> Bool {
        var got = 0
        while got < count {
            let n = read(fd, into! + got, count - got)
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            got += n
        }
        return true
    }

    /// Reads and throws away `count` bytes (data for a request nobody waits for any more).
    func skip(_ count: Int) -> Bool {
        guard count > 0 else { return true }
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: min(count, 65536), alignment: 16)
        defer { scratch.deallocate() }
        var left = count
        while left > 0 {
            let n = min(left, 65536)
            guard receive(scratch, n) else { return false }
            left -= n
        }
        return true
    }

    func shutDown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    deinit { close(fd) }
}
