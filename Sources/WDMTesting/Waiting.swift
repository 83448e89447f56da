// Waiting for something another thread (the PnP manager's executor, a driver's
// worker) makes true. A request from `EmbeddedHost.begin…` has its own
// `PendingRequest.wait`; `IOManager.waitForPnP` waits for queued PnP actions.

import Dispatch

/// Polls `condition` every 10 ms until it is true or `seconds` have passed;
/// returns its last value.
@discardableResult
public func waitUntil(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = DispatchTime.now() + seconds
    while !condition() {
        if DispatchTime.now() >= deadline { return condition() }
        _ = DispatchSemaphore(value: 0).wait(timeout: .now() + 0.01)
    }
    return true
}
