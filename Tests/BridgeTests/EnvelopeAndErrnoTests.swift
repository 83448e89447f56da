// The bridge's tables, without a mount: the envelope's request numbers and
// header layout, and the NTSTATUS -> errno table.

import Glibc
import Testing
import WDM
import WDMClient
@testable import WDMFuse

@Suite struct EnvelopeTests {
    @Test func requestNumbersEncodeTheCapacity() {
        for capacity in [0, 1, 64, IoctlEnvelope.maxCapacity] {
            let request = IoctlEnvelope.request(capacity: capacity)
            #expect(IoctlEnvelope.capacity(ofRequest: UInt32(truncatingIfNeeded: request)) == capacity)
        }
        // _IOC(_IOC_READ|_IOC_WRITE, 'W', 1, 24 + 64): nr 1 is version 2 of the envelope
        #expect(IoctlEnvelope.request(capacity: 64) == 0xC058_5701)
    }

    @Test func otherRequestNumbersAreNotEnvelopes() {
        let good = UInt32(truncatingIfNeeded: IoctlEnvelope.request(capacity: 8))
        #expect(IoctlEnvelope.capacity(ofRequest: good) == 8)
        #expect(IoctlEnvelope.capacity(ofRequest: good & ~0xFF) == nil)        // nr 0: version 1
        #expect(IoctlEnvelope.capacity(ofRequest: good | 2) == nil)            // nr 3
        #expect(IoctlEnvelope.capacity(ofRequest: (good & ~0xFF00) | 0x5800) == nil)  // type 'X'
        #expect(IoctlEnvelope.capacity(ofRequest: good & ~0x8000_0000) == nil)  // write only
        #expect(IoctlEnvelope.capacity(ofRequest: 0xC00A_5701) == nil)          // 10 bytes: shorter than the header
        #expect(IoctlEnvelope.capacity(ofRequest: 0x541B) == nil)               // FIONREAD
    }

    @Test func headerRoundTripsLittleEndian() {
        var bytes = [UInt8](repeating: 0, count: 24)
        let h = IoctlEnvelope.Header(code: 0x0007_405C, inputLength: 3, outputLength: 8, status: .bufferOverflow, information: 0x1_0000_0002)
        bytes.withUnsafeMutableBytes { h.write(to: $0.baseAddress!) }
        #expect(bytes == [0x5C, 0x40, 0x07, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0x05, 0, 0, 0x80, 2, 0, 0, 0, 1, 0, 0, 0])
        #expect(bytes.withUnsafeBytes { IoctlEnvelope.Header(from: $0.baseAddress!) } == h)
    }
}

@Suite struct ErrnoTableTests {
    @Test func theDocumentedMappings() {
        #expect(ErrnoTable.errno(for: .accessDenied) == EACCES)
        #expect(ErrnoTable.errno(for: .diskFull) == ENOSPC)
        #expect(ErrnoTable.errno(for: .cancelled) == EINTR)
        #expect(ErrnoTable.errno(for: .noSuchDevice) == ENODEV)
        #expect(ErrnoTable.errno(for: .invalidDeviceRequest) == EINVAL)
        #expect(ErrnoTable.errno(for: .deviceBusy) == EBUSY)
        #expect(ErrnoTable.errno(for: NTStatus(0xC000_0999)) == EIO)  // unmapped
    }

    @Test func onlyFailuresAreMapped() {
        for e in ErrnoTable.entries {
            #expect(!e.status.isSuccess)
            #expect(e.errno != 0)
        }
    }
}
