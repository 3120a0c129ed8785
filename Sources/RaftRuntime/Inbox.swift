import Synchronization

/// The Raft loop's queue of events: posted from any thread, drained in batches on the Raft
/// event loop (each drain becomes one `Ready`, one fsync: group commit). Bounded by `eventsMax`.
///
/// A post into an empty inbox asks for one turn of the loop (`wake`); posts that arrive before
/// that turn runs ride along with it, so a burst of peer messages read in one go, or of
/// proposals, costs one turn.
final class Inbox<Machine: ReplicatedStateMachine>: @unchecked Sendable {
    private struct State {
        var events: [Event<Machine>] = []
        /// A turn is asked for and has not taken the events yet. True until `start`: events
        /// posted before the loop runs wait for its first turn.
        var turnPending = true
        var wake: (@Sendable () -> Void)?
        var stopping = false
        var finished = false
        var finishWaiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0

        /// The wake to call (outside the lock) if no turn is pending yet.
        mutating func askTurn() -> (@Sendable () -> Void)? {
            guard !turnPending, let wake else { return nil }
            turnPending = true
            return wake
        }
    }
    private let state = Mutex(State())
    let eventsMax: Int

    init(eventsMax: Int) { self.eventsMax = eventsMax }

    /// Installs how to ask for a turn (runs one on the Raft event loop); the caller runs the
    /// first turn itself right after.
    func start(wake: @escaping @Sendable () -> Void) {
        state.withLock { $0.wake = wake }
    }

    /// Queues an event; false if the inbox is full or stopping. `droppable` events (peer
    /// messages) are the ones a caller may lose silently.
    func post(_ event: Event<Machine>, droppable: Bool) -> Bool {
        let (accepted, wake) = state.withLock { s -> (Bool, (@Sendable () -> Void)?) in
            guard !s.stopping, s.events.count < eventsMax else { return (false, nil) }
            s.events.append(event)
            return (true, s.askTurn())
        }
        wake?()
        return accepted
    }

    /// Takes every queued event (the turn asked for has begun), and whether the node is stopping.
    func takeAll() -> (events: [Event<Machine>], stopping: Bool) {
        state.withLock { s in
            s.turnPending = false
            defer { s.events.removeAll(keepingCapacity: true) }
            return (s.events, s.stopping)
        }
    }

    func stop() {
        let wake = state.withLock { s -> (@Sendable () -> Void)? in
            s.stopping = true
            return s.finished ? nil : s.askTurn()
        }
        wake?()
    }

    /// Called by the Raft loop as it finishes: no turn is asked for after this.
    func markFinished() -> [Event<Machine>] {
        let (waiters, leftover) = state.withLock { s in
            s.finished = true
            s.stopping = true
            s.wake = nil
            defer {
                s.finishWaiters = [:]
                s.events = []
            }
            return (Array(s.finishWaiters.values), s.events)
        }
        for waiter in waiters { waiter.resume() }
        return leftover
    }

    /// Returns once the Raft loop has finished, or when the calling task is cancelled.
    func waitUntilStopped() async {
        let id = state.withLock { s in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.finished || Task.isCancelled { return true }
                    s.finishWaiters[id] = continuation
                    return false
                }
                if done { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.finishWaiters.removeValue(forKey: id) }?.resume()
        }
    }
}
