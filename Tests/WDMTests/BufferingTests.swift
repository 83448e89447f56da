// Buffering as WDM defines it, and the zero-copy rule: the memory a driver
// works on is the caller's own.

import Testing
@testable import WDM
import WDMTesting

@Suite struct BufferingTests {
    @Test func ctlCodeEncodesAndDecodes() {
        let c = ControlCode(deviceType: DeviceType.disk, function: 0x17, method: .buffered, access: .readData)
        #expect(c == .diskGetLengthInfo)
        #expect(c.rawValue == 0x0007_405C)
        #expect(c.deviceType == 7 && c.function == 0x17 && c.method == .buffered && c.requiredAccess == .readData)
        #expect(ControlCode.diskGetDriveGeometryEx.method == .buffered)
        #expect(ControlCode(rawValue: 0x0022_A044).requiredAccess == .writeData)
        #expect(ControlCode(deviceType: 0x22, function: 0x803, method: .neither, access: []).rawValue == 0x0022_200F)
    }

    @Test func ntStatusSeverity() {
        #expect(NTStatus.success.isSuccess && NTStatus.pending.isSuccess)
        #expect(!NTStatus.bufferOverflow.isSuccess && NTStatus.bufferOverflow.isWarning)
        #expect(NTStatus.accessDenied.isError && NTStatus.accessDenied.rawValue == 0xC000_0022)
        #expect(NTStatus(0xC000_0999).description == "0xC0000999")
        #expect(NTStatus.cancelled.description == "STATUS_CANCELLED")
    }

    /// Records the buffer pointers a METHOD_BUFFERED IOCTL arrives with and answers in place.
    final class Probe: @unchecked Sendable {
        var systemBuffer: UnsafeMutableRawPointer?
        var inputSeen: [UInt8] = []
        var calls = 0
    }

    func ioctlStack(_ io: IOManager, probe: Probe) throws -> EmbeddedHost {
        let fdo: DispatchRoutine = { _, irp in
            probe.calls += 1
            let p = irp.parameters.deviceIoControl
            probe.systemBuffer = irp.systemBuffer
            probe.inputSeen = Array(UnsafeRawBufferPointer(start: irp.systemBuffer, count: p.inputBufferLength))
            // Output written over the input, in the one SystemBuffer.
            for i in 0..<p.outputBufferLength { irp.systemBuffer!.storeBytes(of: UInt8(0xF0 + i), toByteOffset: i, as: UInt8.self) }
            irp.complete(.success, information: p.outputBufferLength)
            return .success
        }
        _ = try buildStack(io, function: [.deviceControl: fdo])
        return EmbeddedHost(io)
    }

    @Test func methodBufferedSharesOneBufferForInputAndOutput() throws {
        let io = IOManager()
        let probe = Probe()
        _ = try ioctlStack(io, probe: probe)
        let file = try io.open("dev", access: [.readData, .writeData])
        var memory: [UInt8] = [1, 2, 3, 0, 0, 0, 0, 0]
        let code = ControlCode(deviceType: 0x22, function: 0x900, method: .buffered, access: [])
        let status = memory.withUnsafeMutableBytes { raw -> NTStatus in
            let s = io.call(.deviceControl(code: code, buffer: raw.baseAddress, capacity: 8, inputLength: 3, outputLength: 5, borrowedFrom: nil), on: file).status
            #expect(probe.systemBuffer == raw.baseAddress)  // the caller's memory itself
            return s
        }
        #expect(status == .success)
        #expect(probe.inputSeen == [1, 2, 3])
        #expect(Array(memory.prefix(5)) == [0xF0, 0xF1, 0xF2, 0xF3, 0xF4])
        #expect(io.statistics.bytesCopied == 0)
    }

    @Test func bounceBuffersCopyAsWindowsDoesAndTheCounterSeesIt() throws {
        let io = IOManager(bounceBuffers: true)
        let probe = Probe()
        let host = try ioctlStack(io, probe: probe)
        let file = try host.open("dev")
        let code = ControlCode(deviceType: 0x22, function: 0x900, method: .buffered, access: [])
        let r = host.deviceIoControl(file, code, input: [1, 2, 3], outputLength: 5)
        #expect(r.status == .success)
        #expect(r.output == [0xF0, 0xF1, 0xF2, 0xF3, 0xF4])
        #expect(probe.inputSeen == [1, 2, 3])
        #expect(io.statistics.bytesCopied == 3 + 5)
    }

    @Test func requiredAccessIsCheckedBeforeAnyDriverSeesTheIrp() throws {
        let io = IOManager()
        let probe = Probe()
        let host = try ioctlStack(io, probe: probe)
        let readOnly = try host.open("dev", access: .readData)
        let needsWrite = ControlCode(deviceType: 0x22, function: 0x901, method: .buffered, access: .writeData)
        let needsRead = ControlCode(deviceType: 0x22, function: 0x902, method: .buffered, access: .readData)
        #expect(host.deviceIoControl(readOnly, needsWrite, input: [1], outputLength: 1).status == .accessDenied)
        #expect(probe.calls == 0)
        #expect(host.deviceIoControl(readOnly, needsRead, input: [1], outputLength: 1).status == .success)
        #expect(probe.calls == 1)
    }

    @Test func directIoReadsAndWritesArriveAsAnMdlOverTheCallersMemory() throws {
        let io = IOManager()
        let seen = Recorder()
        let fdo: DispatchRoutine = { _, irp in
            seen.add("mdl=\(irp.mdlAddress != nil) sys=\(irp.systemBuffer != nil) user=\(irp.userBuffer != nil)")
            irp.complete(.success, information: irp.parameters.read.length)
            return .success
        }
        _ = try buildStack(io, flags: .directIO, function: [.read: fdo, .write: fdo], filters: [[:]])
        let host = EmbeddedHost(io)
        let f = try host.open("dev")
        #expect(f.deviceObject.topOfStack.flags.contains(.directIO))  // the filter mirrors the FDO's flag
        _ = host.read(f, count: 4)
        _ = host.write(f, [1, 2])
        #expect(seen.all == ["mdl=true sys=false user=false", "mdl=true sys=false user=false"])
    }
}
