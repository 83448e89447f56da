// IoctlEnvelope: the user-facing ioctl ABI, version 2. Every IOCTL travels in
// one restricted FUSE ioctl whose buffer is a 24-byte header and `capacity`
// bytes of data, so any CTL_CODE reaches the driver and the exact NTSTATUS
// comes back. include/wdmfs_ioctl.h is the same layout for C callers. This is
// client code: it needs no libfuse.

import CWDMSys
import Glibc
import WDM

/// The envelope's layout.
///
///     request = _IOC(_IOC_READ | _IOC_WRITE, 'W', 1, 24 + capacity)   (nr 1: version 2)
///     offset 0  uint32 code            the CTL_CODE
///     offset 4  uint32 input_length    bytes of input in data (<= capacity)
///     offset 8  uint32 output_length   bytes of output wanted (<= capacity)
///     offset 12 uint32 status          out: the NTSTATUS
///     offset 16 uint64 information     out: IoStatus.Information
///     offset 24 data[capacity]         the input in, the output out
///
/// The output starts at data[0] for METHOD_BUFFERED and METHOD_NEITHER, and at
/// data[align8(input_length)] for METHOD_IN_DIRECT and METHOD_OUT_DIRECT, whose
/// input and output are separate buffers on Windows (`DirectLayout`).
public enum IoctlEnvelope {
    public static let headerSize = 24
    /// The largest FUSE restricted ioctl (_IOC_SIZE is 14 bits).
    public static let maxTotalSize = 16383
    public static let maxCapacity = maxTotalSize - headerSize
    /// `'W'`
    public static let type: UInt32 = 0x57
    /// The `_IOC_NR` of this version of the envelope (version 1 used 0).
    public static let number: UInt32 = 1
    public static let version = 2

    /// The request number for a capacity.
    public static func request(capacity: Int) -> UInt {
        UInt(UInt32(3) << 30 | UInt32(headerSize + capacity) << 16 | type << 8 | number)
    }

    /// The capacity a request number stands for, or nil if it is not an envelope.
    public static func capacity(ofRequest cmd: UInt32) -> Int? {
        // _IOC layout on x86_64/arm64: nr 0..7, type 8..15, size 16..29, dir 30..31.
        let dir = cmd >> 30, size = Int((cmd >> 16) & 0x3FFF), type = (cmd >> 8) & 0xFF, nr = cmd & 0xFF
        guard dir == 3, type == IoctlEnvelope.type, nr == number, size >= headerSize else { return nil }
        return size - headerSize
    }

    /// True when `cmd` is this envelope's type, number and direction, whatever its
    /// size (one shorter than the header is then a malformed envelope, not another request).
    public static func isEnvelopeFamily(_ cmd: UInt32) -> Bool {
        cmd >> 30 == 3 && (cmd >> 8) & 0xFF == type && cmd & 0xFF == number
    }

    /// Where the output starts in the data area for `code`.
    public static func outputOffset(code: UInt32, inputLength: Int) -> Int {
        let method = code & 3
        return method == 1 || method == 2 ? DirectLayout.outputOffset(inputLength: inputLength) : 0
    }

    /// The data capacity a call needs.
    public static func capacity(code: UInt32, inputLength: Int, outputLength: Int) -> Int {
        let method = code & 3
        return method == 1 || method == 2
            ? DirectLayout.capacity(inputLength: inputLength, outputLength: outputLength)
            : max(inputLength, outputLength)
    }

    /// The header fields.
    public struct Header: Equatable, Sendable {
        public var code: UInt32
        public var inputLength: Int
        public var outputLength: Int
        public var status: NTStatus
        public var information: UInt64

        public init(code: UInt32, inputLength: Int, outputLength: Int, status: NTStatus = .success, information: UInt64 = 0) {
            self.code = code
            self.inputLength = inputLength
            self.outputLength = outputLength
            self.status = status
            self.information = information
        }

        public init(from p: UnsafeRawPointer) {
            code = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            inputLength = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            outputLength = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            status = NTStatus(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            information = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        }

        public func write(to p: UnsafeMutableRawPointer) {
            p.storeBytes(of: code.littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: UInt32(inputLength).littleEndian, toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: UInt32(outputLength).littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 12, as: UInt32.self)
            p.storeBytes(of: information.littleEndian, toByteOffset: 16, as: UInt64.self)
        }
    }

    /// Writes the results into an envelope's header in place.
    public static func storeResult(status: NTStatus, information: Int, into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: UInt64(truncatingIfNeeded: information).littleEndian, toByteOffset: 16, as: UInt64.self)
    }

    /// The client side: one DeviceIoControl through an open descriptor.
    /// Throws the errno when the ioctl itself fails (the IRP did not run).
    public static func call(
        fd: Int32, code: UInt32, input: [UInt8], outputLength: Int
    ) throws(EnvelopeError) -> (status: NTStatus, information: UInt64, output: [UInt8]) {
        let capacity = capacity(code: code, inputLength: input.count, outputLength: outputLength)
        guard capacity <= maxCapacity else { throw .tooLarge(capacity) }
        var buffer = [UInt8](repeating: 0, count: headerSize + capacity)
        let rc = buffer.withUnsafeMutableBytes { raw -> Int32 in
            let p = raw.baseAddress!
            Header(code: code, inputLength: input.count, outputLength: outputLength).write(to: p)
            if !input.isEmpty {
                input.withUnsafeBytes { (p + headerSize).copyMemory(from: $0.baseAddress!, byteCount: input.count) }
            }
            return cwdmsys_ioctl_ptr(fd, request(capacity: capacity), p)
        }
        if rc < 0 { throw .system(cwdmsys_errno()) }
        let h = buffer.withUnsafeBytes { Header(from: $0.baseAddress!) }
        let n = h.status.isError ? 0 : Int(min(h.information, UInt64(outputLength)))
        let at = headerSize + outputOffset(code: code, inputLength: input.count)
        return (h.status, h.information, Array(buffer[at..<at + n]))
    }

    public enum EnvelopeError: Error, Equatable {
        case tooLarge(Int)
        case system(Int32)
    }
}

/// Opening and closing device files for envelope calls.
public enum DeviceFile {
    /// Opens `path` read-write, or read-only.
    public static func open(_ path: String, readOnly: Bool) throws(IoctlEnvelope.EnvelopeError) -> Int32 {
        let fd = Glibc.open(path, readOnly ? O_RDONLY : O_RDWR)
        if fd < 0 { throw .system(errno) }
        return fd
    }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    /// `strerror`.
    public static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }
}
