// The toaster function driver on the framework (KMDF's simple toaster, shorter
// still). Each write puts a slice of bread in; a read says how many slices were
// toasted, and waits while there is no bread; a toaster that goes away fails the
// reads waiting in it with STATUS_NO_SUCH_DEVICE. The framework does the rest:
// PnP, power (I/O waits while the toaster is not in D0), the remove lock, the
// device interface, the handle's waiting reads cancelled at CLEANUP.

import Synchronization
import ToasterPublic
import WDF

public enum ToasterFx {
    public static let name = "ToasterFx"
    /// What a toaster plugged in for this driver says it is (`wdmfs plug BUS N --hardware-id ...`).
    public static let hardwareID = ToasterBus.busTypeGuid + "\\MsToasterFx"

    final class Toaster: Sendable {
        let toasts = Atomic<Int>(0)
        let waiting: Queue
        init(waiting: Queue) { self.waiting = waiting }
    }

    static func answer(_ device: Device<Toaster>, _ request: consuming Request) {
        let text = Array("\(device.node?.instanceName ?? "toaster"): \(device.context.toasts.load(ordering: .acquiring)) slices toasted\n".utf8)
        let offset = Int(request.offset)
        guard offset < text.count, let out = try? request.output() else { return request.complete(.endOfFile) }
        let n = min(out.count, text.count - offset)
        out.copyBytes(from: text[offset..<offset + n])
        request.complete(.success, information: n)
    }

    public static let driverEntry = Framework.functionDriver(flags: [.bufferedIO, .powerPagable]) { (device: Device<Toaster>) in
        device.createInterface(ToasterBus.toasterInterfaceClass)
        device.onSurpriseRemoval { $0.context.waiting.purge(.noSuchDevice) }
        // Reads and writes one at a time: a read sees the bread of every write before it.
        device.queue(.sequential, for: [.read, .write, .flushBuffers]) { device, request in
            let toaster = device.context, length = request.length, major = request.major
            if major == .flushBuffers { return request.complete(.success) }  // as the WDM toaster
            if major == .write {
                toaster.toasts.add(1, ordering: .releasing)
                request.complete(.success, information: length)
                while let waiting = toaster.waiting.next() { answer(device, waiting) }
            } else if toaster.toasts.load(ordering: .acquiring) == 0 {
                request.forward(to: toaster.waiting)
            } else {
                answer(device, request)
            }
        }
        return Toaster(waiting: device.manualQueue())
    }
}
