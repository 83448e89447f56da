import Foundation
import Synchronization
import WDM

final class Recorder: Sendable {
    private let items = HandoffMutex<[String]>([])
    func add(_ s: String) { items.withLock { $0.append(s) } }
    var all: [String] { items.withLock { $0 } }
}
