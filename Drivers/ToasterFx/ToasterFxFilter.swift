// The toaster sample's filter on the framework: one source for all six
// positions, logging every PnP and power IRP it sees (a WDM preprocess
// callback, as a KMDF filter sees them); the framework sends everything down.

import WDF

public enum ToasterFxFilter {
    /// The positions; the catalog names each `Fx` + position (`FxDevUpperFilter`).
    public static let positions = ["DevUpperFilter", "DevLowerFilter", "ClassUpperFilter", "ClassLowerFilter", "BusUpperFilter", "BusLowerFilter"]

    public static func driverEntry(position: String) -> DriverEntry {
        Framework.filterDriver { (device: Device<NoContext>) in
            device.preprocess([.pnp, .power]) { device, irp in device.node?.appendLog("\(position) \(irp.minorDescription)") }
            return NoContext()
        }
    }
}
