import Foundation

/// The Raft thread's queue of events: posted from any thread, drained in batches by the Raft
/// thread (each drain becomes one `Ready`, one fsync: group commit). Bounded by `eventsMax`.
final class Inbox<Machine: ReplicatedStateMachine>: @unchecked Sendable {
    private let condition = NSCondition()
    private var events: [Event<Machine>] = []
    private var stopping = false
    private var finished = false
    private var finishWaiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiter: UInt64 = 0
    let eventsMax: Int

    init(eventsMax: Int) { self.eventsMax = eventsMax }

    /// Queues an event; false if the inbox is full or stopping. `droppable` events (peer
    /// messages) are the ones a caller may lose silently.
    func post(_ event: Event<Machine>, droppable: Bool) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping, events.count < eventsMax else { return false }
        events.append(event)
        condition.signal()
        return true
    }

    /// Waits until an event arrives, `deadline` passes or the inbox stops; takes every queued
    /// event.
    func take(until deadline: ContinuousClock.Instant) -> (events: [Event<Machine>], stopping: Bool) {
        condition.lock()
        defer { condition.unlock() }
        while events.isEmpty && !stopping {
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { break }
            let seconds = Double(remaining.components.seconds) + Double(remaining.components.attoseconds) / 1e18
            _ = condition.wait(until: Date(timeIntervalSinceNow: seconds))
        }
        let taken = events
        events.removeAll(keepingCapacity: true)
        return (taken, stopping)
    }

    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Called by the Raft thread as it exits.
    func markFinished() -> [Event<Machine>] {
        condition.lock()
        finished = true
        let waiters = finishWaiters.values
        finishWaiters = [:]
        let leftover = events
        events = []
        condition.unlock()
        for waiter in waiters { waiter.resume() }
        return leftover
    }

    private func newWaiterID() -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        nextWaiter += 1
        return nextWaiter
    }

    /// Returns once the Raft thread has finished, or when the calling task is cancelled.
    func waitUntilStopped() async {
        let id = newWaiterID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                condition.lock()
                if finished || Task.isCancelled {
                    condition.unlock()
                    continuation.resume()
                } else {
                    finishWaiters[id] = continuation
                    condition.unlock()
                }
            }
        } onCancel: {
            condition.lock()
            let waiter = finishWaiters.removeValue(forKey: id)
            condition.unlock()
            waiter?.resume()
        }
    }
}
