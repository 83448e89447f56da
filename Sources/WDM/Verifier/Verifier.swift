// Verifier: Driver Verifier's I/O checks. `Verifier` records violations (and
// hands them to a log); `VerifierRules` is the observer that checks each IRP
// at the call-down and completion choke points. The I/O manager itself reports
// what it must act on to stay consistent (a second completion, a reused IRP, a
// cancel routine left set), and keeps the system consistent where it can
// instead of stopping the machine.

import Synchronization

/// Driver Verifier for the model.
public final class Verifier: @unchecked Sendable {
    /// The rule a driver broke, with the code Windows shows for it.
    public enum Rule: String, Sendable, CaseIterable {
        /// IoCompleteRequest on an IRP already completed.
        case completedTwice
        /// An IRP used (completed, cancelled, freed, marked pending) after it was freed or reused.
        case staleIrpUsed
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
        /// A completion routine ran after the lower driver returned STATUS_PENDING and did not mark the IRP pending.
        case pendingNotPropagated
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
        /// A filter did not copy DO_BUFFERED_IO / DO_DIRECT_IO from the device below.
        case filterBufferingNotCopied
        /// A filter did not copy DeviceType from the device below.
        case filterDeviceTypeNotCopied
        /// A filter did not copy DO_POWER_PAGABLE from the device below.
        case filterPowerPagableNotCopied
        /// IoStatus.Information larger than a read's length or a query's buffer
        /// (not Verifier's 0x312, which is about METHOD_BUFFERED output).
        case informationExceedsLength
        /// A driver unloaded with devices it never deleted.
        case unloadWithDevices
        /// Checked mode: a request's buffer changed after the request completed (a driver kept it).
        case bufferWrittenAfterCompletion
        /// An IRP still not completed when its request had to be answered (a signal or shutdown, after a cancel and a grace period).
        case neverCompleted
        /// A request sent to a device after IoDeleteDevice (wdmfs keeps the device alive and refuses it).
        case requestToDeletedDevice
        /// IoDeleteDevice on a device still attached to a lower device.
        case deletedWhileAttached
        /// IoDetachDevice on a device with nothing attached above it.
        case detachedWithNothingAttached
        /// IoDeleteDevice on a device already deleted.
        case deletedTwice
        /// DO_BUFFERED_IO and DO_DIRECT_IO both set.
        case bufferedAndDirect
        /// IoCallDriver with a cancel routine still set.
        case callDownWithCancelRoutine
        /// IRP_MN_REMOVE_DEVICE returned with the driver's device still attached.
        case notDetachedAtRemove
        /// IRP_MN_REMOVE_DEVICE returned with the driver's device not deleted.
        case notDeletedAtRemove
        /// A driver failed an IRP that must not fail (SURPRISE_REMOVAL, CANCEL_REMOVE_DEVICE, CANCEL_STOP_DEVICE).
        case failedIrpThatMustNotFail
        /// A driver completed IRP_MN_REMOVE_DEVICE with a failure status (Verifier's own code for it).
        case failedRemove
        /// A PDO completed a PnP IRP its bus must answer (START, the remove and stop
        /// minors, SURPRISE_REMOVAL, QUERY_CAPABILITIES, QUERY_ID DeviceID,
        /// TargetDeviceRelation) with the STATUS_NOT_SUPPORTED it was sent with.
        case pdoLeftRequiredMinor
        /// A framework driver let a request go without completing, forwarding or
        /// queueing it (its `~Copyable` Request was destroyed): the framework
        /// completed it with STATUS_DRIVER_INTERNAL_ERROR.
        case requestDropped
        /// A device that is not a PDO in a bus's BusRelations.
        case nonPDOInBusRelations
        /// Two children of one bus with the same device and instance IDs.
        case duplicateChildIDs
        /// A device that is not a PDO given to IoRegisterDeviceInterface or IoInvalidateDeviceRelations.
        case nonPDOGivenForPDO
        /// A user IRP not completed within the stress option's deadline.
        case deadlineMissed
        /// IoDetachDevice while IRP_MN_SURPRISE_REMOVAL is in the stack.
        case detachedDuringSurpriseRemoval
        /// IoDeleteDevice while IRP_MN_SURPRISE_REMOVAL is in the stack.
        case deletedDuringSurpriseRemoval
        /// A bus deleted a PDO it still reports (its stack is still built).
        case reportedPDODeleted
        /// A non-PDO completed a PnP IRP with an unknown minor function without forwarding it.
        case unknownPnPNotForwarded
        /// A non-PDO completed a PnP IRP with success without forwarding it.
        case successfulPnPNotForwarded
        /// A non-PDO completed a PnP IRP it did not touch (STATUS_NOT_SUPPORTED) without forwarding it.
        case untouchedPnPNotForwarded
        /// A non-PDO completed a power IRP with an unknown minor function without forwarding it.
        case unknownPowerNotForwarded
        /// A non-PDO completed a power IRP with success without forwarding it.
        case successfulPowerNotForwarded
        /// A non-PDO completed a power IRP it did not touch without forwarding it.
        case untouchedPowerNotForwarded
        /// IRP_MN_REMOVE_DEVICE returned and the driver never released its remove lock and waited.
        case removeLockNotReleasedAtRemove

        /// What Windows shows: the bug check and, for 0xC9, Verifier's code.
        public var windowsCode: String {
            switch self {
            case .completedTwice: "bug check 0x44"
            case .staleIrpUsed: "bug check 0x44"
            case .completedWithPendingStatus: "0xC9/0x06"
            case .completedWithCancelRoutine: "0xC9/0x07 (0x23C)"
            case .pendingWithoutMark: "0xC9/0x23D"
            case .markedPendingReturnedOther: "0xC9/0x23E"
            case .returnedWithoutCompleting: "0xC9/0x226"
            case .statusMismatch: "0xC9/0x224"
            case .pendingNotPropagated: "0xC9/0x228"
            case .noStackLocationsLeft: "0xC9/0x208 (then bug check 0x35)"
            case .callDownWithNoLowerDevice: "0xC9/0x204"
            case .informationExceedsBuffer: "0xC9/0x312"
            case .freedInFlight: "0xC9/0x20A"
            case .deviceInitializingLeftSet: "0xC9/0x243"
            case .filterBufferingNotCopied: "0xC9/0x244"
            case .filterDeviceTypeNotCopied: "0xC9/0x246"
            case .filterPowerPagableNotCopied: "0xC9/0x23F"
            case .informationExceedsLength: "none (the I/O manager returns at most the buffer)"
            case .unloadWithDevices: "bug check 0xCE"
            case .bufferWrittenAfterCompletion: "none (Special Pool would catch it)"
            case .neverCompleted: "none (Windows waits 5 minutes for a cancelled IRP)"
            case .requestToDeletedDevice: "none (on Windows a use after free: bug check 0xD5 under Special Pool)"
            case .deletedWhileAttached: "0xC9/0x201"
            case .detachedWithNothingAttached: "0xC9/0x202"
            case .deletedTwice: "0xC9/0x240"
            case .bufferedAndDirect: "0xC9/0x245"
            case .callDownWithCancelRoutine: "0xC9/0x203"
            case .notDetachedAtRemove: "0xC9/0x21D"
            case .notDeletedAtRemove: "0xC9/0x21E"
            case .failedIrpThatMustNotFail: "0xC9/0x247"
            case .failedRemove: "0xC9/0x306"
            case .pdoLeftRequiredMinor: "0xC9/0x22A"
            case .requestDropped: "none (KMDF's verifier finds a leaked request only when its device goes)"
            case .nonPDOInBusRelations: "0xC9/0x248"
            case .duplicateChildIDs: "0xC9/0x249"
            case .nonPDOGivenForPDO: "0xC9/0x24D"
            case .deadlineMissed: "none (Windows times out a cancelled IRP after 5 minutes)"
            case .detachedDuringSurpriseRemoval: "0xC9/0x241"
            case .deletedDuringSurpriseRemoval: "0xC9/0x242"
            case .reportedPDODeleted: "0xC9/0x221"
            case .unknownPnPNotForwarded: "0xC9/0x22D"
            case .successfulPnPNotForwarded: "0xC9/0x22E"
            case .untouchedPnPNotForwarded: "0xC9/0x22F"
            case .unknownPowerNotForwarded: "0xC9/0x230"
            case .successfulPowerNotForwarded: "0xC9/0x231"
            case .untouchedPowerNotForwarded: "0xC9/0x232"
            case .removeLockNotReleasedAtRemove: "bug check 0xC4 (DDI compliance rule RemoveLockMnRemove)"
            }
        }

        /// The call that broke the rule.
        public var call: String {
            switch self {
            case .completedTwice, .staleIrpUsed, .completedWithPendingStatus, .completedWithCancelRoutine: "IoCompleteRequest"
            case .pendingWithoutMark, .returnedWithoutCompleting, .statusMismatch: "the dispatch routine's return"
            case .markedPendingReturnedOther: "IoMarkIrpPending, then the dispatch routine's return"
            case .pendingNotPropagated: "the completion routine's return"
            case .noStackLocationsLeft: "IoCallDriver (or IoCopyCurrentIrpStackLocationToNext, IoSetCompletionRoutine)"
            case .callDownWithNoLowerDevice: "IoCallDriver"
            case .informationExceedsBuffer, .informationExceedsLength: "IoCompleteRequest (IoStatus.Information)"
            case .freedInFlight: "IoFreeIrp"
            case .deviceInitializingLeftSet: "AddDevice's return"
            case .filterBufferingNotCopied, .filterDeviceTypeNotCopied, .filterPowerPagableNotCopied: "IoAttachDeviceToDeviceStack, then AddDevice's return"
            case .unloadWithDevices: "DriverUnload's return"
            case .bufferWrittenAfterCompletion: "a write into a buffer after IoCompleteRequest"
            case .neverCompleted: "no IoCompleteRequest after IoCancelIrp"
            case .requestToDeletedDevice: "a request after IoDeleteDevice"
            case .deletedWhileAttached, .deletedTwice: "IoDeleteDevice"
            case .detachedWithNothingAttached: "IoDetachDevice"
            case .bufferedAndDirect: "AddDevice's return"
            case .callDownWithCancelRoutine: "IoCallDriver"
            case .notDetachedAtRemove, .notDeletedAtRemove: "IRP_MN_REMOVE_DEVICE's return"
            case .failedIrpThatMustNotFail, .failedRemove: "IoCompleteRequest"
            case .pdoLeftRequiredMinor: "IoCompleteRequest (by the PDO, IoStatus.Status untouched)"
            case .requestDropped: "the end of a framework Request's life with no complete, forward or requeue"
            case .nonPDOInBusRelations, .duplicateChildIDs: "IRP_MN_QUERY_DEVICE_RELATIONS (BusRelations)"
            case .nonPDOGivenForPDO: "IoRegisterDeviceInterface or IoInvalidateDeviceRelations"
            case .deadlineMissed: "no IoCompleteRequest within the deadline (stress option)"
            case .detachedDuringSurpriseRemoval: "IoDetachDevice during IRP_MN_SURPRISE_REMOVAL"
            case .deletedDuringSurpriseRemoval: "IoDeleteDevice during IRP_MN_SURPRISE_REMOVAL"
            case .reportedPDODeleted: "IoDeleteDevice"
            case .unknownPnPNotForwarded, .successfulPnPNotForwarded, .untouchedPnPNotForwarded,
                 .unknownPowerNotForwarded, .successfulPowerNotForwarded, .untouchedPowerNotForwarded: "IoCompleteRequest"
            case .removeLockNotReleasedAtRemove: "IRP_MN_REMOVE_DEVICE's return (no IoReleaseRemoveLockAndWait)"
            }
        }

        /// Driver Verifier's own rules, checked only for the drivers it verifies
        /// (`Verifier.scope`). The rest are the I/O manager's consistency checks,
        /// always on: it must act on them to keep every request answered once.
        public var isOptIn: Bool {
            switch self {
            case .completedWithPendingStatus, .pendingWithoutMark, .markedPendingReturnedOther, .returnedWithoutCompleting,
                 .statusMismatch, .pendingNotPropagated, .informationExceedsBuffer, .informationExceedsLength,
                 .deviceInitializingLeftSet, .filterBufferingNotCopied, .filterDeviceTypeNotCopied, .filterPowerPagableNotCopied,
                 .deletedWhileAttached, .detachedWithNothingAttached, .deletedTwice, .bufferedAndDirect, .callDownWithCancelRoutine,
                 .notDetachedAtRemove, .notDeletedAtRemove, .failedIrpThatMustNotFail, .failedRemove, .pdoLeftRequiredMinor,
                 .nonPDOInBusRelations, .duplicateChildIDs, .nonPDOGivenForPDO, .deadlineMissed,
                 .detachedDuringSurpriseRemoval, .deletedDuringSurpriseRemoval, .reportedPDODeleted,
                 .unknownPnPNotForwarded, .successfulPnPNotForwarded, .untouchedPnPNotForwarded,
                 .unknownPowerNotForwarded, .successfulPowerNotForwarded, .untouchedPowerNotForwarded, .removeLockNotReleasedAtRemove:
                true
            default: false
            }
        }
    }

    /// Which drivers Verifier checks.
    public enum Scope: Equatable, Sendable, CustomStringConvertible {
        case none, all
        /// By name, with or without `\Driver\` (`Misbehave`, `\Driver\Misbehave`).
        case drivers(Set<String>)

        /// `all`, `none`, or names separated by commas.
        public init?(_ text: String) {
            let t = Scope.trimmed(text)
            switch t {
            case "all": self = .all
            case "none", "": self = .none
            default:
                let names = t.split(separator: ",", omittingEmptySubsequences: false).map { Scope.shortName(Scope.trimmed(String($0))) }
                guard !names.contains(where: \.isEmpty) else { return nil }
                self = .drivers(Set(names))
            }
        }

        static func trimmed(_ s: String) -> String {
            String(s.drop(while: { $0 == " " || $0 == "\t" || $0 == "\n" }).reversed().drop(while: { $0 == " " || $0 == "\t" || $0 == "\n" }).reversed())
        }

        static func shortName(_ n: String) -> String { n.hasPrefix("\\Driver\\") ? String(n.dropFirst(8)) : n }

        public func covers(_ driverName: String) -> Bool {
            switch self {
            case .none: false
            case .all: true
            case .drivers(let names): names.contains { Scope.shortName($0) == Scope.shortName(driverName) }
            }
        }

        public var description: String {
            switch self {
            case .none: "none"
            case .all: "all"
            case .drivers(let names): names.sorted().joined(separator: ",")
            }
        }
    }

    /// What a violation of an opt-in rule does besides being reported.
    public enum Action: String, Sendable, CaseIterable {
        /// Report only.
        case log
        /// Report, and fail the IRP with STATUS_DRIVER_INTERNAL_ERROR when the
        /// verifier holds it (rules checked at completion).
        case fail
        /// Report, then stop: `onBugCheck` runs once (the daemon unmounts, every
        /// request answered, as Windows stops with bug check 0xC9).
        case bugcheck
    }

    public struct Violation: Sendable, CustomStringConvertible {
        public let rule: Rule
        public let majorFunction: MajorFunction?
        public let minorFunction: UInt8?
        public let driver: String?
        public let device: String?
        /// The IRP as `packet-address#generation`.
        public let irp: String?
        /// The stack location the rule was broken at (1 is the bottom), and how many the IRP has.
        public let location: (at: Int, of: Int)?
        public let detail: String?
        /// What the verifier did about it besides reporting (`failed the IRP`...).
        public let outcome: String?
        public var description: String {
            var s = "verifier: \(rule.rawValue) [\(rule.windowsCode)]"
            if let majorFunction {
                s += " on \(majorFunction.wdmName)"
                if let minorFunction, minorFunction != 0 || majorFunction == .pnp || majorFunction == .power {
                    let known = majorFunction == .pnp ? PnPMinor(rawValue: minorFunction)?.wdmName
                        : majorFunction == .power ? PowerMinor(rawValue: minorFunction)?.wdmName : nil
                    s += " " + (known ?? "minor 0x" + String(minorFunction, radix: 16, uppercase: true))
                }
            }
            s += " by \(driver ?? "(driver unknown)") device \(device ?? "(unknown)")"
            if let irp { s += " irp \(irp)" }
            if let location { s += " location \(location.at) of \(location.of)" }
            s += " in \(rule.call)"
            if let detail { s += ": \(detail)" }
            if let outcome { s += " (\(outcome))" }
            return s
        }
    }

    /// Names drivers a stale IRP report refers to by identity.
    nonisolated(unsafe) var driverNames: (@Sendable (ObjectIdentifier) -> String?)?
    /// Finds a device a stale IRP report refers to by identity, if it still exists.
    nonisolated(unsafe) var devices: (@Sendable (ObjectIdentifier) -> DeviceObject?)?

    private let log = HandoffMutex<[Violation]>([])
    private let total = Atomic<Int>(0)
    /// Called for every violation (the daemon logs them). Set before I/O starts.
    public nonisolated(unsafe) var onViolation: (@Sendable (Violation) -> Void)?

    public init() {}

    /// The stress options and their seeded stream (see Stress.swift).
    let stressState = HandoffMutex<(options: Stress, random: SeededRandom)>((Stress(), SeededRandom(seed: 0)))
    /// User IRPs whose deadline (stress option) has passed and been looked at, late or not.
    public var deadlinesChecked: Int { deadlineChecks.load(ordering: .acquiring) }
    let deadlineChecks = Atomic<Int>(0)
    /// `StressBits` of the options on: what the I/O path loads.
    let stressBits = Atomic<UInt8>(0)
    /// Told of every change of the stress options (the I/O manager installs the IRP log).
    nonisolated(unsafe) var onStressChange: (@Sendable (Stress) -> Void)?

    /// The drivers checked now. Setting it marks each loaded driver (one atomic
    /// flag per driver, which the rules read: a driver not verified costs a load).
    public var scope: Scope {
        get { scopeState.withLock { $0 } }
        set {
            scopeState.withLock { $0 = newValue }
            for d in drivers?() ?? [] { d.verified.store(newValue.covers(d.name), ordering: .relaxed) }
        }
    }
    private let scopeState = HandoffMutex<Scope>(.all)
    /// The loaded drivers (set by the I/O manager).
    nonisolated(unsafe) var drivers: (@Sendable () -> [DriverObject])?

    /// What an opt-in violation does besides being reported.
    public var action: Action {
        get { Action.allCases[Int(actionState.load(ordering: .relaxed))] }
        set { actionState.store(UInt8(Action.allCases.firstIndex(of: newValue)!), ordering: .relaxed) }
    }
    private let actionState = Atomic<UInt8>(0)
    /// Runs once, for the first violation under `.bugcheck` (the daemon ends itself).
    public nonisolated(unsafe) var onBugCheck: (@Sendable (Violation) -> Void)?
    private let bugChecked = Atomic<Bool>(false)
    private let due = Atomic<Bool>(false)
    /// Before an IRP goes back to its requester: a bug check found while it was
    /// completed, as a call to make once it is back. The call holds what it needs:
    /// once the requester has its answer the I/O manager (and this) may be gone.
    @inline(__always) func takeDueBugCheck() -> (@Sendable () -> Void)? {
        guard due.load(ordering: .relaxed) else { return nil }
        return takeDueBugCheckSlow()
    }

    private func takeDueBugCheckSlow() -> (@Sendable () -> Void)? {
        let (mine, _) = due.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing)
        guard mine, let v = bugCheck, let stop = onBugCheck else { return nil }
        return { stop(v) }
    }
    /// The violation that stopped the system, if one did.
    public var bugCheck: Violation? { bugChecked.load(ordering: .acquiring) ? log.withLock { $0.last { $0.outcome == "bug check" } } : nil }

    /// Whether the opt-in rules apply to `driver` now.
    @inline(__always) public func verifies(_ driver: DriverObject) -> Bool { driver.verified.load(ordering: .relaxed) }

    /// Records a violation. `device` defaults to the device at the IRP's current
    /// location. Reads the IRP's locations: for an IRP the calling thread owns
    /// (or one that was freed, whose last owners the packet remembers).
    @discardableResult
    public func report(_ rule: Rule, irp: IRP? = nil, device: DeviceObject? = nil, detail: String? = nil) -> Action {
        var major: MajorFunction?, minor: UInt8?
        var dev = device
        var driverName: String?
        var location: (Int, Int)?
        if let irp {
            let p = irp.packet
            // Only read the locations of the IRP's own incarnation.
            if p.generation != irp.generation || p.life == .free {
                if let r = p.retiredIncarnation(irp.generation), let id = r.driver {
                    major = r.major
                    driverName = driverNames?(id)
                    if dev == nil, let d = r.device { dev = devices?(d) }
                }
            } else {
                let loc = min(max(p.currentLocation, 1), p.stackCount)
                if p.stackCount > 0 {
                    major = p.locations[loc - 1].majorFunction
                    minor = p.locations[loc - 1].minorFunction
                    if dev == nil { dev = p.locations[loc - 1].deviceObject ?? p.targetDevice }
                    // The location of the reported device, if it has one in this IRP.
                    let at = dev.flatMap { d in (1...p.stackCount).first { p.locations[$0 - 1].deviceObject === d } } ?? loc
                    location = (at, p.stackCount)
                }
            }
        }
        return record(rule, irp: irp, device: dev, driverName: driverName, major: major, minor: minor, location: location, detail: detail)
    }

    /// Records a violation about an IRP the calling thread does not own (a dispatch
    /// routine returned, and another thread may be completing, freeing or reusing
    /// the IRP): everything comes from the caller, nothing from the packet.
    func report(_ rule: Rule, notOwned irp: IRP, device: DeviceObject, location: Int, major: MajorFunction, minor: UInt8, detail: String? = nil) {
        record(rule, irp: irp, device: device, driverName: nil, major: major, minor: minor, location: (location, 0), detail: detail, owned: false)
    }

    @discardableResult
    private func record(_ rule: Rule, irp: IRP?, device dev: DeviceObject?, driverName: String?, major: MajorFunction?, minor: UInt8?,
                        location: (Int, Int)?, detail: String?, owned: Bool = true) -> Action {
        let irpName = irp.map { "0x" + String(UInt(bitPattern: Unmanaged.passUnretained($0.packet).toOpaque()), radix: 16) + "#\($0.generation)" }
        let action = rule.isOptIn ? self.action : .log
        var outcome: String?
        switch action {
        case .log: break
        case .fail: outcome = owned && irp != nil ? "failed the IRP: STATUS_DRIVER_INTERNAL_ERROR" : "not failed: the IRP was not the verifier's to touch"
        case .bugcheck:
            let (first, _) = bugChecked.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
            outcome = first ? "bug check" : nil
        }
        let v = Violation(
            rule: rule, majorFunction: major, minorFunction: minor, driver: dev?.driverObject.name ?? driverName,
            device: dev.map { $0.name ?? $0.deviceNode.map { "(\($0.instanceName))" } ?? "(unnamed)" },
            irp: irpName, location: location.map { $0.1 == 0 ? ($0.0, irp?.packet.stackCount ?? 0) : $0 }, detail: detail, outcome: outcome)
        total.add(1, ordering: .relaxed)
        log.withLock {
            if $0.count >= 256 { $0.removeFirst() }
            $0.append(v)
        }
        onViolation?(v)
        if outcome == "bug check" {
            // Found in the completion walk: the IRP goes back to its requester first
            // (`deliver` calls `stopIfDue`), so its caller is answered before the stop.
            if owned && irp != nil { due.store(true, ordering: .releasing) } else { onBugCheck?(v) }
        }
        return action
    }

    /// The most recent violations (up to 256).
    public var violations: [Violation] { log.withLock { $0 } }
    /// How many violations were reported in all.
    public var count: Int { total.load(ordering: .relaxed) }
}

/// Driver Verifier's IRP rules, as an observer at the choke points.
///
/// Who reads what. `completing`, `completionRoutineReturned` and `completed` run
/// in the completion walk, on the thread that owns the IRP then, and read it
/// freely. `driverReturned` runs on the dispatching thread once the routine
/// returned; after STATUS_PENDING (or with a completion under way elsewhere)
/// that thread no longer owns the IRP, which another thread may be completing,
/// freeing or reusing. It reads only atomics there: the packet's state, its
/// current location (which the walk publishes with releasing stores) and the
/// locations' pending notes (`IRPPacket.notePending`), and reports with what the
/// I/O manager handed it (the device, the major and minor function).
///
/// STATUS_PENDING without IoMarkIrpPending (0x23D) needs both threads: the
/// dispatching one knows the routine returned STATUS_PENDING, the walk knows
/// whether the location was marked by the time it passed (a filter's completion
/// routine may mark it late). Each writes its half, then reads the other's, all
/// sequentially consistent: `driverReturned` adds `returnedPending` to the
/// location's note and stores the generation in `returnedPendingIn`, then reads
/// whether the walk finished (the packet's state); the walk stores `completed` in
/// that state, then `completed` here reads `returnedPendingIn` and, if it names
/// this generation, every note. In the one total order of these operations at
/// least one side sees the other's writes; when both do, the one that adds
/// `checked` first reports.
public final class VerifierRules: IRPObserver, @unchecked Sendable {
    unowned let verifier: Verifier
    public init(_ verifier: Verifier) { self.verifier = verifier }

    /// Through the protocol rather than the I/O manager's chain: for a caller that
    /// owns the IRP (the chain reads major and minor before the routine runs).
    public func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus) {
        let l = irp.packet.locations[location - 1]
        driverReturned(device, irp, location: location, status: status, major: l.majorFunction, minor: l.minorFunction)
    }

    func driverReturned(_ device: DeviceObject, _ irp: IRP, location: Int, status: NTStatus, major: MajorFunction, minor: UInt8) {
        let p = irp.packet
        let g = irp.generation
        let i = location - 1
        guard verifier.verifies(device.driverObject) else { return }
        func report(_ rule: Verifier.Rule, _ detail: String? = nil) {
            verifier.report(rule, notOwned: irp, device: device, location: location, major: major, minor: minor, detail: detail)
        }
        if status == .pending {
            // Nil: the packet already serves another request; nothing left to check.
            guard let had = p.notePending(.returnedPending, at: i, generation: g), !had.contains(.marked) else { return }
            p.returnedPendingIn.store(g, ordering: .sequentiallyConsistent)
            // Not marked (yet): a completion routine of this driver may still mark the
            // location. Unless the walk has finished, `completed` checks it.
            let w = p.state.load(ordering: .sequentiallyConsistent)
            let life = IRPPacket.Life(rawValue: UInt8(truncatingIfNeeded: w)) ?? .free
            guard UInt32(truncatingIfNeeded: w >> 8) == g, life == .completed || life == .free else { return }
            // It has, and may have read this note before `returnedPending` was in it.
            guard let seen = p.notePending(.checked, at: i, generation: g),
                  !seen.contains(.marked), !seen.contains(.checked) else { return }
            report(.pendingWithoutMark)
            return
        }
        if p.notes(at: i, generation: g).contains(.marked) { report(.markedPendingReturnedOther) }
        let w = p.state.load(ordering: .acquiring)
        let life = IRPPacket.Life(rawValue: UInt8(truncatingIfNeeded: w)) ?? .free
        // Freed or reused already (a bug the I/O manager reports where it happens), or
        // a walk running on another thread right now: its outcome is not known yet.
        guard UInt32(truncatingIfNeeded: w >> 8) == g, life == .inFlight || life == .completed else { return }
        // The walk has passed this location if the IRP was completed below (or here);
        // the acquiring load then also sees the status it left there.
        if p.location.load(ordering: .acquiring) <= location {
            report(.returnedWithoutCompleting, "returned \(status)")
        } else if life == .completed, let completed = p.completedNote(at: i, generation: g), status != completed {
            // Only once the IRP is completed for good: while it is in flight a completion
            // routine that returned STATUS_MORE_PROCESSING_REQUIRED may be completing it
            // again on another thread, walking this location once more. Read from the
            // atomic note, not the location: the packet may be serving the next request
            // by now (ThreadSanitizer saw both races).
            report(.statusMismatch, "returned \(status), completed with \(completed)")
        }
    }

    /// IoCallDriver: the caller (the device above, whose driver still owns the IRP)
    /// must not leave a cancel routine set (0x203).
    public func callingDriver(_ device: DeviceObject, _ irp: IRP, location: Int) {
        let p = irp.packet
        // A PnP or power IRP: the caller forwarded it (0x22D-0x232 look at who did).
        let major = p.locations[location - 1].majorFunction
        if major == .pnp || major == .power {
            if p.forwardersGeneration != irp.generation {
                p.forwardersGeneration = irp.generation
                p.forwarders.removeAll(keepingCapacity: true)
            }
            if let caller = device.attachedDevice { p.forwarders.append(ObjectIdentifier(caller)) }
        }
        // The caller is the device attached above the one called (a call down its
        // stack; the location above may be the caller's or, after
        // IoSkipCurrentIrpStackLocation, nobody's).
        guard p.cancelRoutineSet.load(ordering: .relaxed), let caller = device.attachedDevice,
              verifier.verifies(caller.driverObject) else { return }
        verifier.report(.callDownWithCancelRoutine, irp: irp, device: caller)
    }

    /// Under `.fail`, an opt-in violation found while the walk holds the IRP fails it.
    func failIfAsked(_ action: Verifier.Action, _ irp: IRP) {
        if action == .fail { irp.packet.ioStatus = IOStatusBlock(status: .driverInternalError) }
    }

    public func completing(_ irp: IRP) {
        let p = irp.packet
        // Who completed: the device at the current location (`completed` reads it).
        p.completer = p.currentLocation <= p.stackCount ? p.locations[p.currentLocation - 1].deviceObject : p.targetDevice
        if p.currentLocation <= p.stackCount, let d = p.completer {
            let l = p.locations[p.currentLocation - 1]
            if l.majorFunction == .pnp || l.majorFunction == .power, verifier.verifies(d.driverObject) {
                checkPnPAndPower(irp, d, major: l.majorFunction, minor: l.minorFunction)
            }
        }
        guard p.ioStatus.status == .pending, let d = p.completer, verifier.verifies(d.driverObject) else { return }
        failIfAsked(verifier.report(.completedWithPendingStatus, irp: irp, device: d), irp)
    }

    /// A PnP or power IRP completed by `d`: a function or filter device completes
    /// one only after forwarding it, unless it fails it (0x22D-0x232).
    func checkPnPAndPower(_ irp: IRP, _ d: DeviceObject, major: MajorFunction, minor: UInt8) {
        let p = irp.packet
        let status = p.ioStatus.status
        // A PDO completes what it handles: nothing to forward to.
        guard d.lowerDevice != nil else { return }
        let forwarded = p.forwardersGeneration == irp.generation && p.forwarders.contains(ObjectIdentifier(d))
        guard !forwarded else { return }
        let known = major == .pnp ? PnPMinor(rawValue: minor) != nil : PowerMinor(rawValue: minor) != nil
        let name = major == .pnp ? PnPMinor(rawValue: minor)?.wdmName : PowerMinor(rawValue: minor)?.wdmName
        let rule: Verifier.Rule
        if !known {
            rule = major == .pnp ? .unknownPnPNotForwarded : .unknownPowerNotForwarded
        } else if status == .notSupported {
            rule = major == .pnp ? .untouchedPnPNotForwarded : .untouchedPowerNotForwarded
        } else if status.isSuccess {
            rule = major == .pnp ? .successfulPnPNotForwarded : .successfulPowerNotForwarded
        } else {
            return  // failing it without passing it down is allowed
        }
        verifier.report(rule, irp: irp, device: d, detail: "\(name ?? "minor 0x" + String(minor, radix: 16)) completed with \(status), not passed down")
    }

    public func completionRoutineReturned(_ device: DeviceObject?, _ irp: IRP, pendingReturned: Bool, result: NTStatus) {
        let p = irp.packet
        guard pendingReturned, result != .moreProcessingRequired, p.currentLocation <= p.stackCount,
              let device, verifier.verifies(device.driverObject) else { return }
        if !p.locations[p.currentLocation - 1].control.contains(.pendingReturned) {
            failIfAsked(verifier.report(.pendingNotPropagated, irp: irp, device: device), irp)
        }
    }

    /// The PnP minors a bus driver must answer for its child PDOs: START_DEVICE,
    /// the query, cancel and do of stop and remove, SURPRISE_REMOVAL,
    /// QUERY_CAPABILITIES, QUERY_ID for BusQueryDeviceID and
    /// QUERY_DEVICE_RELATIONS for TargetDeviceRelation (the other ID and relation
    /// types, QUERY_PNP_DEVICE_STATE, EJECT and the rest are the bus's choice).
    static func pdoMustAnswer(_ m: PnPMinor, _ q: PnPRequest?) -> Bool {
        switch m {
        case .startDevice, .queryRemoveDevice, .removeDevice, .cancelRemoveDevice, .stopDevice, .queryStopDevice,
             .cancelStopDevice, .surpriseRemoval, .queryCapabilities:
            true
        case .queryId: q?.idType == .deviceID
        case .queryDeviceRelations: q?.relationType == .targetDeviceRelation
        default: false
        }
    }

    static func pnpQualifier(_ m: PnPMinor, _ q: PnPRequest?) -> String {
        switch m {
        case .queryId: q.map { " (\($0.idType))" } ?? ""
        case .queryDeviceRelations: q.map { " (\($0.relationType))" } ?? ""
        default: ""
        }
    }

    public func completed(_ irp: IRP) {
        let p = irp.packet
        let g = irp.generation
        // Every mark is final now. A routine that returned STATUS_PENDING after this
        // read its note checks it itself (see above). None did: nothing to read.
        let pended = p.returnedPendingIn.load(ordering: .sequentiallyConsistent) == g
        for i in 0..<(pended ? p.stackCount : 0) {
            let n = p.notes(at: i, generation: g)
            guard n.contains(.returnedPending), !n.contains(.marked), !n.contains(.checked) else { continue }
            guard let seen = p.notePending(.checked, at: i, generation: g),
                  !seen.contains(.marked), !seen.contains(.checked) else { continue }
            guard let d = p.locations[i].deviceObject, verifier.verifies(d.driverObject) else { continue }
            failIfAsked(verifier.report(.pendingWithoutMark, irp: irp, device: d,
                                        detail: "returned STATUS_PENDING; the location was never marked"), irp)
        }
        if p.stackCount > 0, p.ioStatus.status.isError, let d = p.completer, verifier.verifies(d.driverObject) {
            // The major and minor of the IRP as its requester built it (the top location).
            let top = p.locations[p.stackCount - 1]
            if top.majorFunction == .pnp, let m = PnPMinor(rawValue: top.minorFunction) {
                if p.ioStatus.status == .notSupported, d.lowerDevice == nil, Self.pdoMustAnswer(m, p.pnp) {
                    // 0x22A: the PDO (the bottom of the stack) completed a minor its
                    // bus must answer with the status the PnP manager sent it with.
                    verifier.report(.pdoLeftRequiredMinor, irp: irp, device: d,
                                    detail: "\(m)\(Self.pnpQualifier(m, p.pnp)) left at STATUS_NOT_SUPPORTED")
                } else if m == .removeDevice {
                    verifier.report(.failedRemove, irp: irp, device: d, detail: "\(m) completed with \(p.ioStatus.status)")
                } else if [.surpriseRemoval, .cancelRemoveDevice, .cancelStopDevice].contains(m) {
                    verifier.report(.failedIrpThatMustNotFail, irp: irp, device: d, detail: "\(m) completed with \(p.ioStatus.status)")
                }
            }
        }
        let limit = p.informationLimit
        if limit >= 0, !p.ioStatus.status.isError, p.ioStatus.information > limit || p.ioStatus.information < 0,
           let d = p.completer, verifier.verifies(d.driverObject) {
            let rule: Verifier.Rule = p.informationIsBufferedOutput ? .informationExceedsBuffer : .informationExceedsLength
            failIfAsked(verifier.report(rule, irp: irp, device: d,
                                        detail: "Information \(p.ioStatus.information), \(p.informationIsBufferedOutput ? "output buffer" : "buffer") \(limit)"), irp)
        }
    }
}
