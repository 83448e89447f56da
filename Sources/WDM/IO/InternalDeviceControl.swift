// IRP_MJ_INTERNAL_DEVICE_CONTROL: IOCTLs between kernel drivers (a class driver
// and its port or bus driver). Only a driver can build one
// (IoBuildDeviceIoControlRequest with InternalDeviceIoControl TRUE): the host
// seam and the ioctl envelope send IRP_MJ_DEVICE_CONTROL only, so a user-mode
// caller cannot reach a driver's internal IOCTLs, as on Windows.

import Synchronization

/// `Parameters.Others.Argument1...4` of an internal IOCTL (a USB URB, a HID
/// packet): what the two drivers agree on.
public final class InternalArguments: @unchecked Sendable {
    public var argument1: AnyObject?
    public var argument2: AnyObject?
    public var argument3: AnyObject?
    public var argument4: AnyObject?
    public init(_ argument1: AnyObject? = nil, _ argument2: AnyObject? = nil, _ argument3: AnyObject? = nil, _ argument4: AnyObject? = nil) {
        self.argument1 = argument1
        self.argument2 = argument2
        self.argument3 = argument3
        self.argument4 = argument4
    }
}

extension IRP {
    /// `Parameters.Others` of an IRP_MJ_INTERNAL_DEVICE_CONTROL IRP (nil for others).
    public var others: InternalArguments? { packet.others }
}

extension IOManager {
    /// `IoBuildDeviceIoControlRequest(code, device, in, out, InternalDeviceIoControl)`
    /// followed by IoCallDriver and a wait on its event, as a driver does at
    /// PASSIVE_LEVEL: the IOCTL goes to `device` (usually the top of the stack
    /// below the caller) and this returns its final status and Information.
    /// `internal` sends IRP_MJ_INTERNAL_DEVICE_CONTROL with `arguments` as
    /// Parameters.Others; otherwise IRP_MJ_DEVICE_CONTROL (METHOD_BUFFERED and
    /// METHOD_NEITHER buffers: `buffer` holds the input and takes the output).
    public func callDeviceIoControl(
        _ code: ControlCode, to device: DeviceObject, internal isInternal: Bool, arguments: InternalArguments? = nil,
        buffer: UnsafeMutableRawPointer? = nil, inputLength: Int = 0, outputLength: Int = 0
    ) -> IOStatusBlock {
        let irp = allocateIrp(stackSize: device.stackSize)
        let p = irp.packet
        p.targetDevice = device
        p.others = isInternal ? (arguments ?? InternalArguments()) : nil
        let loc = p.currentLocation - 2
        p.locations[loc].majorFunction = isInternal ? .internalDeviceControl : .deviceControl
        p.locations[loc].parameters.deviceIoControl.ioControlCode = code
        p.locations[loc].parameters.deviceIoControl.inputBufferLength = inputLength
        p.locations[loc].parameters.deviceIoControl.outputBufferLength = outputLength
        p.informationLimit = outputLength
        if let buffer {
            if code.method == .neither {
                p.locations[loc].parameters.deviceIoControl.type3InputBuffer = buffer
                p.userBuffer = buffer
            } else {
                p.systemBuffer = buffer
            }
        }
        let (status, completed) = callSynchronously(irp)
        guard completed else { return IOStatusBlock(status: status) }
        let result = p.ioStatus
        freeIrp(irp)
        return result
    }
}
