// Verifier: the rules Driver Verifier's I/O verification checks, caught at run
// time. A violation is recorded (and logged) instead of stopping the machine,
// and the I/O manager keeps the system consistent where it can.

import Synchronization

/// Driver Verifier for the model.
public final class Verifier: @unchecked Sendable {
    /// The rule a driver broke.
    public enum Rule: String, Sendable {
        /// IoCompleteRequest on an IRP already completed.
        case completedTwice
        /// IoCompleteRequest with IoStatus.Status == STATUS_PENDING.
        case completedWithPendingStatus
        /// IoCompleteRequest while a cancel routine is still set.
        case completedWithCancelRoutine
        /// Dispatch returned STATUS_PENDING without IoMarkIrpPending.
        case pendingWithoutMark
        /// IoMarkIrpPending, but dispatch returned another status.
        case markedPendingReturnedOther
        /// Dispatch returned a status other than STATUS_PENDING without completing the IRP.
        case returnedWithoutCompleting
        /// Dispatch returned a status that differs from IoStatus.Status of the completed IRP.
        case statusMismatch
        /// IoCallDriver with no stack location left.
        case noStackLocationsLeft
        /// A driver passed an IRP down from the bottom of the stack.
        case callDownWithNoLowerDevice
        /// IoStatus.Information larger than the buffer it describes.
        case informationExceedsBuffer
        /// An IRP freed while a driver still owns it.
        case freedInFlight
        /// AddDevice returned with DO_DEVICE_INITIALIZING still set.
        case deviceInitializingLeftSet
        /// A driver unloaded with devices it never deleted.
        case unloadWithDevices
    }

    public struct Violation: Sendable, CustomStringConvertible {
        public let rule: Rule
        public let majorFunction: MajorFunction?
        public let driver: String?
        public var description: String {
            "verifier: \(rule.rawValue)" + (majorFunction.map { " on \($0.wdmName)" } ?? "") + (driver.map { " by \($0)" } ?? "")
        }
    }

    private let log = Mutex<[Violation]>([])
    private let total = Atomic<Int>(0)
    /// Called for every violation (the daemon logs them). Set before I/O starts.
    public nonisolated(unsafe) var onViolation: (@Sendable (Violation) -> Void)?

    public init() {}

    /// Records a violation.
    public func report(_ rule: Rule, irp: IRP? = nil, device: DeviceObject? = nil) {
        var major: MajorFunction?
        if let irp, irp.currentLocation >= 1, irp.currentLocation <= irp.stackCount {
            major = irp.currentStackLocation.majorFunction
        }
        let v = Violation(rule: rule, majorFunction: major, driver: device?.driverObject.name)
        total.add(1, ordering: .relaxed)
        log.withLock {
            if $0.count >= 256 { $0.removeFirst() }
            $0.append(v)
        }
        onViolation?(v)
    }

    /// The most recent violations (up to 256).
    public var violations: [Violation] { log.withLock { $0 } }
    /// How many violations were reported in all.
    public var count: Int { total.load(ordering: .relaxed) }
}
