// IOStackLocation: one device's view of an IRP: the major and minor function,
// the parameters for it, and the completion routine the device above set.

/// `PIO_COMPLETION_ROUTINE`. `device` is the device that set the routine
/// (nil for a routine set by the IRP's creator above the top of the stack).
/// Returning `.moreProcessingRequired` stops completion: the driver owns the IRP again.
public typealias CompletionRoutine = @Sendable (_ device: DeviceObject?, _ irp: IRP, _ context: AnyObject?) -> NTStatus

/// `IO_STACK_LOCATION`.
public struct IOStackLocation: @unchecked Sendable {
    /// `MajorFunction`
    public var majorFunction: MajorFunction = .create
    /// `MinorFunction`
    public var minorFunction: UInt8 = 0
    /// `Flags`
    public var flags: UInt8 = 0
    /// `Control`: SL_PENDING_RETURNED and the SL_INVOKE_ON_* bits.
    public var control: StackControl = []
    /// `Parameters`
    public var parameters = Parameters()
    /// `DeviceObject`: the device this location belongs to (set by IoCallDriver).
    /// Not counted, as in Windows: a device outlives the IRPs that pass through it
    /// (its driver deletes it only once its I/O is done).
    public unowned(unsafe) var deviceObject: DeviceObject?
    /// `FileObject`. Not counted here: the IRP holds the one reference it needs
    /// (`IRPPacket.file`), so copying a location down costs nothing.
    public unowned(unsafe) var fileObject: FileObject?
    /// `CompletionRoutine` (set with `IRP.setCompletionRoutine`).
    public internal(set) var completionRoutine: CompletionRoutine?
    /// `Context`
    public internal(set) var context: AnyObject?
    /// The status the completion walk carried when it left this location (what
    /// this location's driver saw as the result; the verifier compares it with
    /// what the driver returned).
    public internal(set) var completedStatus: NTStatus = .success

    public init() {}

    /// `Parameters`: in WDM a union; here one field per family.
    public struct Parameters: @unchecked Sendable {
        /// `Parameters.Create`
        public var create = Create()
        /// `Parameters.Read` / `Parameters.Write` (same layout, as in WDM).
        public var read = ReadWrite()
        /// `Parameters.Write`
        public var write: ReadWrite { get { read } set { read = newValue } }
        /// `Parameters.DeviceIoControl`
        public var deviceIoControl = DeviceIoControl()
        /// `Parameters.QueryFile` / `Parameters.SetFile`
        public var queryFile = QueryFile()
        public init() {}
    }

    public struct Create: Sendable {
        /// `SecurityContext->DesiredAccess`
        public var desiredAccess: AccessMask = []
        /// `Options`
        public var options: UInt32 = 0
        public init() {}
    }

    public struct ReadWrite: Sendable {
        /// `Length`
        public var length: Int = 0
        /// `ByteOffset`
        public var byteOffset: Int64 = 0
        /// `Key`
        public var key: UInt32 = 0
        public init() {}
    }

    public struct DeviceIoControl: @unchecked Sendable {
        /// `OutputBufferLength`
        public var outputBufferLength: Int = 0
        /// `InputBufferLength`
        public var inputBufferLength: Int = 0
        /// `IoControlCode`
        public var ioControlCode = ControlCode(rawValue: 0)
        /// `Type3InputBuffer` (METHOD_NEITHER only)
        public var type3InputBuffer: UnsafeMutableRawPointer?
        public init() {}
    }

    public struct QueryFile: Sendable {
        /// `Length`
        public var length: Int = 0
        /// `FileInformationClass`
        public var fileInformationClass: FileInformationClass = .standard
        public init() {}
    }
}

/// `IO_STACK_LOCATION->Control` bits.
public struct StackControl: OptionSet, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// `SL_PENDING_RETURNED`
    public static let pendingReturned = StackControl(rawValue: 0x01)
    /// `SL_INVOKE_ON_CANCEL`
    public static let invokeOnCancel = StackControl(rawValue: 0x20)
    /// `SL_INVOKE_ON_SUCCESS`
    public static let invokeOnSuccess = StackControl(rawValue: 0x40)
    /// `SL_INVOKE_ON_ERROR`
    public static let invokeOnError = StackControl(rawValue: 0x80)
}
