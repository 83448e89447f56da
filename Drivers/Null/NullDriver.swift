// NullDriver: the `null` device, like NUL on Windows and /dev/null on Linux.
// Reads complete with STATUS_END_OF_FILE (an empty read); writes consume
// everything. On the framework: it does PnP, power, CREATE, CLOSE and flush.

import WDF

public enum NullDriver {
    public static let name = "Null"

    /// `DriverEntry`
    public static let driverEntry = Framework.functionDriver(deviceType: DeviceType.null, flags: []) { (device: Device<NoContext>) in
        // Presented inline, in the dispatch routine: nothing pends.
        device.queue(.parallel(), for: [.read, .write, .flushBuffers]) { _, request in
            if request.major == .read { return request.complete(.endOfFile) }
            let n = request.length
            request.complete(.success, information: n)
        }
        return NoContext()
    }
}
