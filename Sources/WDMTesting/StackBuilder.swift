// Stacks assembled from closures, for tests that need a function driver (and
// filters above it) without writing a driver target.

import WDM

/// Loads a function driver whose dispatch routines are `routines`, and optional
/// filter drivers above it, then builds one root device named `link`. The
/// function driver succeeds CREATE, CLEANUP and CLOSE and handles PnP and power
/// as a function driver does; each filter passes everything down. A routine in
/// `routines` or `filters` replaces the default for its major function. The
/// drivers are named `TestFunction`, `TestFilter0`, `TestFilter1`, ... (see `who`).
public func buildStack(
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

/// The name of a device's driver, for recording ("TestFilter0", "TestFunction").
/// The filter every WDM sample writes: copy the stack location down, set a
/// completion routine that propagates the pending mark (`if (Irp->PendingReturned)
/// IoMarkIrpPending(Irp)`), call the lower driver.
public let propagatingFilter: DispatchRoutine = { device, irp in
    irp.copyCurrentStackLocationToNext()
    irp.setCompletionRoutine { _, irp, _ in
        if irp.pendingReturned { irp.markPending() }
        return .success
    }
    return device.callLower(irp)
}

public func who(_ d: DeviceObject?) -> String {
    guard let d else { return "nil" }
    return String(d.driverObject.name.split(separator: "\\").last ?? "")
}
