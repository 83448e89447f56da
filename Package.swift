// swift-tools-version: 6.1
// wdmfs: Windows-Driver-Model device stacks, written in Swift, exposed as files through FUSE.
import PackageDescription

// MARK: - Drivers (each depends on WDM only, as a third-party driver would; a driver with a
// public header also on that)
let driverNames: [(target: String, folder: String)] = [
    ("EchoDriver", "Echo"),
    ("MisbehaveDriver", "Misbehave"),
    ("ToasterDrivers", "Toaster"),
    ("FaultFilters", "FaultFilters"),
    ("HostFileDriver", "HostFile"),
]
// Drivers written on the framework (WDF): each depends on WDF (and WDM, which it
// re-exports the parts of it uses), and on the public header of its family.
let frameworkDriverNames: [(target: String, folder: String, headers: [String])] = [
    ("ToasterFxDrivers", "ToasterFx", ["ToasterPublic"]),
    ("NullDriver", "Null", []),
    ("ZeroDriver", "Zero", []),
    ("PassThroughFilter", "PassThroughFilter", []),
    ("IoctlDemoDriver", "IoctlDemo", []),
    ("RamDiskDriver", "RamDisk", []),
]
// A driver whose public header (IOCTL codes, structures, GUIDs, interfaces) is a
// target of its own, at Drivers/<folder>/Public: applications (the wdmfs tool)
// import the header, not the driver.
let driverHeaders: [(driver: String, header: String)] = [
    ("ToasterDrivers", "ToasterPublic"),
]
// No unsafeFlags anywhere: a package that depends on this one by version must
// be able to build WDM and the drivers (SwiftPM refuses unsafeFlags there). The
// hot stored properties carry @exclusivity(unchecked) instead.
let driverTargets: [Target] = driverNames.flatMap { d -> [Target] in
    guard let header = driverHeaders.first(where: { $0.driver == d.target })?.header else {
        return [.target(name: d.target, dependencies: ["WDM"], path: "Drivers/\(d.folder)")]
    }
    return [
        .target(name: header, dependencies: ["WDM"], path: "Drivers/\(d.folder)/Public"),
        .target(name: d.target, dependencies: ["WDM", .target(name: header)], path: "Drivers/\(d.folder)", exclude: ["Public"]),
    ]
}
let frameworkDriverTargets: [Target] = frameworkDriverNames.map { d in
    .target(name: d.target, dependencies: ["WDF", "WDM"] + d.headers.map { .target(name: $0) }, path: "Drivers/\(d.folder)")
}
let driverDependencies: [Target.Dependency] = (driverNames.map(\.target) + frameworkDriverNames.map(\.target)).map { .target(name: $0) }
let headerDependencies: [Target.Dependency] = driverHeaders.map { .target(name: $0.header) }

let package = Package(
    name: "wdmfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "wdmfs", targets: ["wdmfs"]),
        .library(name: "WDM", targets: ["WDM"]),
        .library(name: "WDMClient", targets: ["WDMClient"]),
        .library(name: "WDMTesting", targets: ["WDMTesting"]),
        // The framework on WDM (KMDF's programming model): queues, requests, PnP and power done for the driver.
        .library(name: "WDF", targets: ["WDF"]),
        // A driver package's host executable: DriverHost.main(drivers:).
        .library(name: "WDMHost", targets: ["WDMHost"]),
        .library(name: "WDMDrivers", targets: driverNames.map(\.target) + frameworkDriverNames.map(\.target) + driverHeaders.map(\.header)),
    ],
    // The benchmark (ordo-one/benchmark) is a package of its own, Benchmarks/Package.swift:
    // a package that depends on this one resolves only these.
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Drivers log through swift-log, the Swift ecosystem's logging API (WDM re-exports it).
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Driver package signatures (Ed25519); only the command-line tool links it.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // MARK: - C
        .systemLibrary(
            name: "CFuse",
            path: "Sources/CFuse",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),

        .target(name: "CWDMSys"),

        // MARK: - Kernel model (pure Swift, no C, no FUSE)
        .target(name: "WDM", dependencies: [.product(name: "Logging", package: "swift-log")]),

        // MARK: - The framework (KMDF's model, on WDM only)
        // Lifetimes: a Request is ~Escapable (it cannot outlive the handler it was
        // presented to); its clients need no flag, only the module that declares it.
        .target(name: "WDF", dependencies: ["WDM"], swiftSettings: [.enableExperimentalFeature("Lifetimes")]),

        // MARK: - Driver hosts: a device's stack in a process of its own (UMDF's isolation)
        .target(name: "WDMHost", dependencies: ["WDM", "CWDMSys"]),

        // MARK: - Testing drivers in-process: the embedded host, recorders, stack builders
        .target(name: "WDMTesting", dependencies: ["WDM"]),

        // MARK: - Client side: the envelope, process plumbing (no libfuse)
        .target(name: "WDMClient", dependencies: ["WDM", "CWDMSys"]),

        // MARK: - Bridge (the only module that imports CFuse)
        .target(name: "WDMFuse", dependencies: ["WDM", "WDMClient", "CFuse", "CWDMSys"]),

        // MARK: - The default device tree, and the command-line tool that mounts it
        .target(name: "DefaultTree", dependencies: ["WDM", "WDMHost", .product(name: "Yams", package: "Yams")] + driverDependencies + headerDependencies),
        .executableTarget(
            name: "wdmfs",
            dependencies: [
                "WDM", "WDMClient", "WDMFuse", "WDMHost", "DefaultTree", "ToasterPublic",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // MARK: - Tests
        .testTarget(name: "WDMTests", dependencies: ["WDM", "WDMTesting"]),
        .testTarget(name: "BridgeTests", dependencies: ["WDM", "WDMTesting", "WDMClient", "WDMFuse", "WDMHost", "CFuse", "DefaultTree"] + driverDependencies + headerDependencies),
        .testTarget(name: "DriverTests", dependencies: ["WDM", "WDF", "WDMTesting", "DefaultTree"] + driverDependencies + headerDependencies),
    ] + driverTargets + frameworkDriverTargets
)
