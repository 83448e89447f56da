// swift-tools-version: 6.1
// wdmfs's in-process benchmark, a package of its own so that a package depending
// on wdmfs resolves only what WDM needs (not ordo-one/benchmark and its tree).
//
//   cd Benchmarks && swift package benchmark --target IRPPath
//
// Benchmarks/run.sh runs it after the FUSE comparison against the C yardstick.
import PackageDescription

let package = Package(
    name: "wdmfs-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "wdmfs", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "IRPPath",
            dependencies: [
                .product(name: "WDM", package: "wdmfs"),
                .product(name: "WDMTesting", package: "wdmfs"),
                .product(name: "WDMDrivers", package: "wdmfs"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "IRPPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
