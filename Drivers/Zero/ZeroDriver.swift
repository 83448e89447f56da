// ZeroDriver: the `zero` device. A read fills the caller's whole buffer with
// zeros, in place (DO_DIRECT_IO: the buffer is the caller's memory); writes
// are consumed. On the framework: it does PnP, power, CREATE, CLOSE and flush.

import WDF

public enum ZeroDriver {
    public static let name = "Zero"

    /// `DriverEntry`
    public static let driverEntry = Framework.functionDriver(flags: .directIO) { (device: Device<NoContext>) in
        device.queue(.parallel(), for: [.read, .write, .flushBuffers]) { _, request in
            let n = request.length
            if request.major == .read, let out = try? request.output() {
                out.initializeMemory(as: UInt8.self, repeating: 0)
            }
            request.complete(.success, information: n)
        }
        return NoContext()
    }
}
