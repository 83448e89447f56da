// The toaster sample's filter (its filter/ folder).

import WDM

/// The toaster sample's filter: one source that serves all six positions (device,
/// class and bus filters, upper and lower). It passes everything down and logs
/// every PnP and power IRP it sees, with its position, to its device node's log
/// (`.devices/NODE/filter.log` under the mount).
public enum ToasterFilter {
    /// The six positions, as the service names that load this one source.
    public static let positions = ["DevUpperFilter", "DevLowerFilter", "ClassUpperFilter", "ClassLowerFilter", "BusUpperFilter", "BusLowerFilter"]

    public static func driverEntry(position: String) -> DriverEntry {
        { driver in
            driver.addDevice = { driver, pdo in
                driver.createFilterDevice(for: pdo)
                return .success
            }
            driver.majorFunction.setAll { device, irp in
                irp.skipCurrentStackLocation()
                return device.callLower(irp)
            }
            driver.majorFunction[.pnp] = { device, irp in
                device.deviceNode?.appendLog("\(position) \(irp.minorDescription)")
                return PnP.filterDispatch(device, irp)
            }
            driver.majorFunction[.power] = { device, irp in
                device.deviceNode?.appendLog("\(position) \(irp.minorDescription)")
                return Power.filterDispatch(device, irp)
            }
            return .success
        }
    }
}
