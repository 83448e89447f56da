// IRPPath: the cost of one IRP through a stack three devices deep (two filters
// over a function driver, one of them with a completion routine), in-process,
// with no FUSE; and the heap allocations per IRP in steady state, counted by
// the malloc interposer. Requests go through the same seam the FUSE bridge
// uses (IOManager.send on an open handle).
//
//   cd Benchmarks && swift package benchmark --target IRPPath   (its own package: Benchmarks/Package.swift)

import Benchmark
import IoctlDemoDriver
import NullDriver
import PassThroughFilter
import WDM
import WDMTesting
import ZeroDriver

/// Takes each IRP back, as the bridge does when it replies (the I/O manager frees it).
final class Recycler: IRPRequester {
    func irpCompleted(_ irp: IRP) {}
}

/// A filter that wants to see every result: it copies its stack location down
/// and sets a completion routine (which looks at the status and lets it go on).
enum CompletionFilter {
    static let driverEntry: DriverEntry = { driver in
        driver.addDevice = { driver, pdo in
            driver.createFilterDevice(for: pdo)
            return .success
        }
        driver.majorFunction.setAll { device, irp in
            irp.copyCurrentStackLocationToNext()
            irp.setCompletionRoutine { _, irp, _ in
                if irp.pendingReturned { irp.markPending() }
                return .success
            }
            return device.callLower(irp)
        }
        driver.majorFunction[.pnp] = PnP.filterDispatch
        driver.majorFunction[.power] = Power.filterDispatch
        return .success
    }
}

/// Three stacks: zero, null and ioctl-demo, each under a completion filter and a pass-through filter.
final class Rig: @unchecked Sendable {
    let io: IOManager
    let recycler = Recycler()
    let zero: FileObject, null: FileObject, demo: FileObject
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)

    init(verifierRules: Bool) throws {
        io = IOManager(verifierRules: verifierRules)
        let z = try io.loadDriver(name: ZeroDriver.name, entry: ZeroDriver.driverEntry)
        let n = try io.loadDriver(name: NullDriver.name, entry: NullDriver.driverEntry)
        let d = try io.loadDriver(name: IoctlDemoDriver.name, entry: IoctlDemoDriver.driverEntry)
        let c = try io.loadDriver(name: "CompletionFilter", entry: CompletionFilter.driverEntry)
        let p = try io.loadDriver(name: PassThroughFilter.name, entry: PassThroughFilter.driverEntry)
        try io.addRootDevice(instanceName: "zero", functionDriver: z, upperFilters: [c, p])
        try io.addRootDevice(instanceName: "null", functionDriver: n, upperFilters: [c, p])
        try io.addRootDevice(instanceName: "demo", functionDriver: d, upperFilters: [c, p])
        zero = try io.open("zero", access: .readData)
        null = try io.open("null", access: .writeData)
        demo = try io.open("demo", access: [.readData, .writeData])
    }

    @inline(__always) func read(_ length: Int) -> NTStatus {
        io.send(.read(buffer: buffer, length: length, offset: 0), on: zero, requester: recycler)
    }

    @inline(__always) func write(_ length: Int) -> NTStatus {
        io.send(.write(buffer: buffer, length: length, offset: 0, borrowedFrom: buffer), on: null, requester: recycler)
    }

    @inline(__always) func ioctl(_ length: Int) -> NTStatus {
        io.send(.deviceControl(code: IoctlDemoDriver.upperCode(.buffered), buffer: buffer, capacity: length,
                               inputLength: length, outputLength: length, borrowedFrom: buffer),
                on: demo, requester: recycler)
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )
    let rig = try! Rig(verifierRules: false)
    let checked = try! Rig(verifierRules: true)
    // With a reader of the trace open (it does not read: once its 1 MiB is full each
    // event is formatted and counted lost, the cost an IRP pays whatever the reader does).
    let traced = try! Rig(verifierRules: false)
    try! traced.io.createTraceDevice()
    let traceReader = try! traced.io.open(TraceDevice.link, access: .readData)

    Benchmark("read 4 KiB IRP, 3-deep stack") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(rig.read(4096)) }
    }
    Benchmark("write 4 KiB IRP, 3-deep stack") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(rig.write(4096)) }
    }
    Benchmark("ioctl 64 B IRP, 3-deep stack") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(rig.ioctl(64)) }
    }
    // The same with Driver Verifier's rules observing both choke points (the daemon's default).
    Benchmark("read 4 KiB IRP, 3-deep stack, verifier rules") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(checked.read(4096)) }
    }
    Benchmark("ioctl 64 B IRP, 3-deep stack, verifier rules") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(checked.ioctl(64)) }
    }
    Benchmark("read 4 KiB IRP, 3-deep stack, tracing on") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(traced.read(4096)) }
        blackHole(traceReader)
    }
    // The control: the embedded host's convenience API copies into Swift arrays,
    // so the malloc counter must show allocations here (proof it is counting).
    let host = EmbeddedHost(rig.io)
    let file = try! host.open("zero", access: .readData)
    Benchmark("control: read through EmbeddedHost (allocates)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(host.read(file, count: 64)) }
    }
}
