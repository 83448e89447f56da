// Device interfaces: how applications find devices by what they are. A driver
// registers an interface of a class (a GUID) for its PDO in AddDevice
// (IoRegisterDeviceInterface), enables it at START and disables it at
// SURPRISE_REMOVAL or REMOVE (IoSetDeviceInterfaceState). The mount lists the
// enabled ones under `.interfaces/{GUID}/`.

import Synchronization

/// One registered device interface.
public struct DeviceInterface: Sendable, Equatable {
    /// The interface class GUID, `{781EF630-72B2-11d2-B852-00C04FAD5171}`.
    public let classGUID: String
    /// The symbolic link name the registration returned (unique per PDO and class).
    public let name: String
    /// The instance name of the device node it belongs to.
    public let instance: String
    public internal(set) var enabled: Bool
}

extension NTStatus {
    /// `STATUS_OBJECT_NAME_EXISTS` (informational): the interface was already enabled.
    @inlinable public static var objectNameExists: NTStatus { NTStatus(0x4000_0000) }
}

extension IOManager {
    /// `IoRegisterDeviceInterface(pdo, classGUID)`: returns the interface's
    /// symbolic link name; registering it again returns the same name.
    public func registerDeviceInterface(_ pdo: DeviceObject, classGUID: String) -> String {
        if pdo.lowerDevice != nil, verifier.verifies(pdo.driverObject) {
            verifier.report(.nonPDOGivenForPDO, device: pdo, detail: "IoRegisterDeviceInterface with a device that is attached to another (not a PDO)")
        }
        let instance = pdo.deviceNode?.instanceName ?? pdo.name ?? "device"
        let name = "\(instance)#\(classGUID)"
        interfaces.withLock { list in
            if !list.contains(where: { $0.name == name }) {
                list.append(DeviceInterface(classGUID: classGUID, name: name, instance: instance, enabled: false))
            }
        }
        pdo.interfaceNames.withLock { if !$0.contains(name) { $0.append(name) } }
        interfaceClasses.withLock { if !$0.contains(classGUID) { $0.append(classGUID) } }
        return name
    }

    /// Every interface class a device ever registered, in the order first seen (as
    /// Windows keeps a class's key once it exists).
    public var knownInterfaceClasses: [String] { interfaceClasses.withLock { $0 } }

    /// Whether a device ever registered an interface of `classGUID`.
    public func isRegisteredInterfaceClass(_ classGUID: String) -> Bool { interfaceClasses.withLock { $0.contains(classGUID) } }

    /// `IoSetDeviceInterfaceState(name, enable)`: STATUS_OBJECT_NAME_EXISTS when
    /// enabling one that is enabled, STATUS_OBJECT_NAME_NOT_FOUND for an unknown name.
    @discardableResult
    public func setDeviceInterfaceState(_ name: String, enabled: Bool) -> NTStatus {
        let status: NTStatus = interfaces.withLock { list in
            guard let i = list.firstIndex(where: { $0.name == name }) else { return .objectNameNotFound }
            if enabled && list[i].enabled { return .objectNameExists }
            list[i].enabled = enabled
            return .success
        }
        return status
    }

    /// The enabled interfaces of a class (all classes when nil).
    public func enabledInterfaces(classGUID: String? = nil) -> [DeviceInterface] {
        interfaces.withLock { $0.filter { $0.enabled && (classGUID == nil || $0.classGUID == classGUID) } }
    }

    /// The device file a device node's interface leads to: the symbolic link of a
    /// device in its stack (as the PnP manager last published the tree).
    public func link(forInstance instance: String) -> String? {
        pnp.snapshot.node(named: instance)?.link
    }

    /// Drops a PDO's interfaces (it is deleted).
    func forgetInterfaces(of pdo: DeviceObject) {
        let names = pdo.interfaceNames.withLock { n in defer { n.removeAll() }; return n }
        interfaces.withLock { $0.removeAll { names.contains($0.name) } }
    }
}

extension NTStatus {
    /// `STATUS_OBJECT_NAME_NOT_FOUND`
    @inlinable public static var objectNameNotFound: NTStatus { NTStatus(0xC000_0034) }
}
