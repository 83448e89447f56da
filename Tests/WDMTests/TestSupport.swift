// Helpers for the core tests: drivers assembled from closures, a recorder that
// threads can append to, and a stack builder.

import Dispatch
import Synchronization
@testable import WDM

/// A thread-safe list of events.
final class Recorder: Sendable {
    private let items = HandoffMutex<[String]>([])
    func add(_ s: String) { items.withLock { $0.append(s) } }
    var all: [String] { items.withLock { $0 } }
}

/// Loads a function driver whose dispatch routines are `routines`, and optional
/// filter drivers above it, then builds one root device named `link`.
func buildStack(
    _ io: IOManager, link: String = "dev", flags: DeviceFlags = [],
    function routines: [MajorFunction: DispatchRoutine],
    filters: [[MajorFunction: DispatchRoutine]] = []
) throws -> DeviceObject {
    let fdoDriver = try io.loadDriver(name: "TestFunction") { d in
        d.majorFunction.succeed([.create, .cleanup, .close])
        d.majorFunction[.pnp] = PnP.functionDispatch()
        d.majorFunction[.power] = Power.functionDispatch
        for (m, r) in routines { d.majorFunction[m] = r }
        d.addDevice = { d, pdo in d.addFunctionDevice(for: pdo, deviceType: DeviceType.unknown, flags: flags) }
        return .success
    }
    var filterDrivers: [DriverObject] = []
    for (i, f) in filters.enumerated() {
        filterDrivers.append(try io.loadDriver(name: "TestFilter\(i)") { d in
            d.majorFunction.setAll { device, irp in
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            d.majorFunction[.pnp] = PnP.filterDispatch
            d.majorFunction[.power] = Power.filterDispatch
            for (m, r) in f { d.majorFunction[m] = r }
            d.addDevice = { d, pdo in
                d.createFilterDevice(for: pdo)
                return .success
            }
            return .success
        })
    }
    return try io.addRootDevice(instanceName: link, functionDriver: fdoDriver, upperFilters: filterDrivers)
}

/// Name of the device for recording ("TestFilter0", "TestFunction").
func who(_ d: DeviceObject?) -> String {
    guard let d else { return "nil" }
    return String(d.driverObject.name.split(separator: "\\").last ?? "")
}
