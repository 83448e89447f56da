// The object namespace: symbolic links (IoCreateSymbolicLink) name devices;
// the name is the file name under the mount. Looked up by name in O(1); the
// creation order is kept for listings.

import Synchronization

/// The symbolic links: name -> device, and the names in creation order.
struct LinkTable {
    var byName: [String: DeviceObject] = [:]
    var order: [String] = []
    /// Names per device (a device may have several).
    var byDevice: [ObjectIdentifier: [String]] = [:]

    mutating func remove(_ name: String) -> Bool {
        guard let device = byName.removeValue(forKey: name) else { return false }
        if let i = order.firstIndex(of: name) { order.remove(at: i) }
        let id = ObjectIdentifier(device)
        byDevice[id]?.removeAll { $0 == name }
        if byDevice[id]?.isEmpty == true { byDevice[id] = nil }
        return true
    }
}

extension IOManager {
    /// `IoCreateSymbolicLink`: the name is the file name under the mount.
    /// STATUS_OBJECT_NAME_COLLISION when the name exists.
    public func createSymbolicLink(_ name: String, device: DeviceObject) throws(NTStatus) {
        let added = links.withLock { l -> Bool in
            guard l.byName[name] == nil else { return false }
            l.byName[name] = device
            l.order.append(name)
            l.byDevice[ObjectIdentifier(device), default: []].append(name)
            return true
        }
        guard added else { throw NTStatus.objectNameCollision }
        pnp.namespaceChanged()
    }

    /// `IoDeleteSymbolicLink`.
    public func deleteSymbolicLink(_ name: String) {
        if links.withLock({ $0.remove(name) }) { pnp.namespaceChanged() }
    }

    /// Deletes every symbolic link that names `device`.
    public func deleteSymbolicLinks(of device: DeviceObject) {
        let removed = links.withLock { l -> Bool in
            let names = l.byDevice[ObjectIdentifier(device)] ?? []
            for n in names { _ = l.remove(n) }
            return !names.isEmpty
        }
        if removed { pnp.namespaceChanged() }
    }

    /// The symbolic link names, in creation order.
    public var symbolicLinks: [String] { links.withLock { $0.order } }

    /// The device a symbolic link names.
    public func device(forLink name: String) -> DeviceObject? {
        links.withLock { $0.byName[name] }
    }

    /// The symbolic links that name `device`.
    public func links(of device: DeviceObject) -> [String] {
        links.withLock { $0.byDevice[ObjectIdentifier(device)] ?? [] }
    }

    /// Whether a symbolic link names a device that is there for users now (as the
    /// PnP manager last published it: a device's files appear when it starts and
    /// go when it is removed or surprise-removed).
    public func isPresent(_ link: String) -> Bool {
        pnp.snapshot.presentLinks.contains(link)
    }
}

extension NTStatus {
    /// `STATUS_OBJECT_NAME_COLLISION`
    @inlinable public static var objectNameCollision: NTStatus { NTStatus(0xC000_0035) }
}
