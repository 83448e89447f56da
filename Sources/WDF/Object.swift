// Framework objects (KMDF's WDFOBJECT): each has a parent and a lifetime. A
// device's queues are its children; deleting an object deletes its children
// first (the last made first), then runs its own cleanup callbacks. A device is
// deleted at REMOVE_DEVICE, after its queues drained.

import Synchronization
import WDM

/// A framework object with a parent, children and cleanup callbacks.
public class FrameworkObject: @unchecked Sendable {
    private struct Tree {
        var children: [FrameworkObject] = []
        var cleanups: [@Sendable () -> Void] = []
        var deleted = false
        /// Not counted: a parent owns its children, and the link is cleared when
        /// either goes (a weak reference would put every retain of the parent, a
        /// device on the I/O path, on the runtime's slow path). Safe because a
        /// parent is deleted (which clears its children's links) before its last
        /// reference goes: the framework deletes a device at REMOVE_DEVICE, or
        /// when its device-add routine fails, before its device object goes.
        var parent: Unmanaged<FrameworkObject>?
    }
    private let tree = HandoffMutex(Tree())
    /// The object this one goes with (nil for a device: it goes with its device object).
    public var parent: FrameworkObject? { tree.withLock { $0.parent?.takeUnretainedValue() } }

    init(parent: FrameworkObject?) {
        if let parent { tree.withLock { $0.parent = .passUnretained(parent) } }
        parent?.adopt(self)
    }

    deinit {
        // Children that outlive their parent (a driver kept one) lose the link.
        for child in tree.withLock({ $0.children }) { child.tree.withLock { $0.parent = nil } }
    }

    private func adopt(_ child: FrameworkObject) {
        let late = tree.withLock { t -> Bool in
            guard !t.deleted else { return true }
            t.children.append(child)
            return false
        }
        if late { child.delete() }  // a child made for a deleted parent goes at once
    }

    /// `EvtCleanupCallback`: runs when the object is deleted (after its children went).
    public func onCleanup(_ callback: @escaping @Sendable () -> Void) {
        let now = tree.withLock { t -> Bool in
            guard !t.deleted else { return true }
            t.cleanups.append(callback)
            return false
        }
        if now { callback() }
    }

    /// The objects made with this one as their parent, still alive.
    public var children: [FrameworkObject] { tree.withLock { $0.children } }
    /// True once `delete()` ran.
    public var isDeleted: Bool { tree.withLock { $0.deleted } }

    /// `WdfObjectDelete`: deletes the children (the last made first), then runs
    /// the cleanup callbacks (the last added first). Once only.
    public func delete() {
        let (kids, cleanups) = tree.withLock { t -> ([FrameworkObject], [@Sendable () -> Void]) in
            guard !t.deleted else { return ([], []) }
            t.deleted = true
            defer { t.children = []; t.cleanups = [] }
            return (t.children, t.cleanups)
        }
        for k in kids.reversed() { k.delete() }
        willDelete()
        for c in cleanups.reversed() { c() }
        if let parent = tree.withLock({ t in defer { t.parent = nil }; return t.parent?.takeUnretainedValue() }) {
            parent.tree.withLock { t in t.children.removeAll { $0 === self } }
        }
    }

    /// What a kind of object does as it goes (a queue completes what it still holds).
    func willDelete() {}
}
