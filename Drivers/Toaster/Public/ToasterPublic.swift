// The toaster sample's public header (its inc/public.h and driver.h): what the
// bus driver, the toaster function driver and applications share. Applications
// (the sample's enum program; here `wdmfs plug`, `unplug`, `eject`) import this
// and not the drivers: the bus IOCTL codes and the structures they carry, the
// GUIDs and IDs, and the interface the bus gives the toaster
// (TOASTER_INTERFACE_STANDARD). No driver code is here: the drivers are the
// ToasterDrivers target, whose bus driver adds its entry point to `ToasterBus`.

import WDM

/// The toaster bus's public names: its IOCTL codes, the structures they carry,
/// the GUIDs and the toaster's IDs.
public enum ToasterBus {
    /// `IOCTL_BUSENUM_PLUGIN_HARDWARE`: CTL_CODE(FILE_DEVICE_BUS_EXTENDER, 0, METHOD_BUFFERED, FILE_READ_DATA).
    public static let plugIn = ControlCode(rawValue: 0x002A_4000)
    /// `IOCTL_BUSENUM_UNPLUG_HARDWARE`
    public static let unplug = ControlCode(rawValue: 0x002A_4004)
    /// `IOCTL_BUSENUM_EJECT_HARDWARE`
    public static let eject = ControlCode(rawValue: 0x002A_4008)
    /// `IOCTL_BUSENUM_DONT_DISPLAY_IN_UI_DEVICE`: the child reports PNP_DEVICE_DONT_DISPLAY_IN_UI.
    public static let dontDisplayInUI = ControlCode(rawValue: 0x002A_400C)
    /// An internal IOCTL (IRP_MJ_INTERNAL_DEVICE_CONTROL, drivers only) the toaster's
    /// function driver sends its PDO for what the hardware would tell it: the serial
    /// number, as a ULONG in the buffer. CTL_CODE(FILE_DEVICE_BUS_EXTENDER, 0x200, METHOD_NEITHER, FILE_ANY_ACCESS).
    public static let internalGetSerial = ControlCode(rawValue: 0x002A_0803)
    /// `GUID_DEVCLASS_TOASTER`: the bus type the children report (QUERY_BUS_INFORMATION).
    public static let busTypeGuid = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}"
    /// `GUID_TOASTER_INTERFACE_STANDARD`, version 1 (IRP_MN_QUERY_INTERFACE).
    public static let interfaceStandard = "{E0B27630-5434-11d3-B890-00C04FAD5171}"
    /// The toaster's hardware and compatible IDs.
    public static let toasterHardwareID = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsToaster"
    public static let toasterCompatibleID = "{B85B7C50-6A01-11d2-B841-00C04FAD5171}\\MsCompatibleToaster"
    /// `GUID_DEVINTERFACE_BUSENUM_TOASTER`
    public static let interfaceClass = "{D35F7840-6A0C-11d2-B841-00C04FAD5171}"
    /// `GUID_DEVINTERFACE_TOASTER`
    public static let toasterInterfaceClass = "{781EF630-72B2-11d2-B852-00C04FAD5171}"

    /// BUSENUM_PLUGIN_HARDWARE { ULONG Size = 8; ULONG SerialNo; WCHAR HardwareIDs[] } with the
    /// IDs as a UTF-16LE multi-string (each ended by NUL, the list by a second NUL).
    /// `size` other than 8 builds a malformed request (for tests).
    public static func plugInRequest(serial: UInt32, hardwareIDs: [String] = [toasterHardwareID], size: UInt32 = 8) -> [UInt8] {
        var b = le(size) + le(serial)
        for id in hardwareIDs {
            for u in id.utf16 { b += [UInt8(u & 0xFF), UInt8(u >> 8)] }
            b += [0, 0]
        }
        return b + [0, 0]
    }

    /// BUSENUM_UNPLUG_HARDWARE / BUSENUM_EJECT_HARDWARE { ULONG Size = 16; ULONG SerialNo; ULONG Reserved[2] }.
    public static func unplugRequest(serial: UInt32) -> [UInt8] { le(16) + le(serial) + [UInt8](repeating: 0, count: 8) }

    static func le(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
}

/// `TOASTER_INTERFACE_STANDARD`: the direct-call interface a toaster's bus gives
/// its function driver through IRP_MN_QUERY_INTERFACE (`ToasterBus.interfaceStandard`,
/// version 1). Holding a reference makes the PDO refuse QUERY_REMOVE, so the
/// function driver lets go of it first. The bus driver implements it.
public protocol ToasterInterfaceStandard: AnyObject, Sendable {
    /// `InterfaceReference`
    func interfaceReference()
    /// `InterfaceDereference`
    func interfaceDereference()
    /// `GetCrispinessLevel`
    func getCrispinessLevel() -> UInt8
    /// `SetCrispinessLevel`: STATUS_SUCCESS (the sample accepts any level).
    func setCrispinessLevel(_ level: UInt8) -> NTStatus
    /// `IsSafetyLockEnabled`
    func isSafetyLockEnabled() -> Bool
}
