import Synchronization

/// Hands out a session's mutation sequence numbers so that none is ever `width` or more past
/// the oldest one still unanswered.
///
/// Why: the state machine remembers the replies of a session's last
/// `MetaLimits.dedupRepliesPerSessionMax` mutations and refuses (ESTALE) a retry of a
/// sequence at or below one it has forgotten. A bound on the mutations in flight is not
/// enough: while one mutation is retried through an election (its client waiting out a
/// backoff), the session's other mutations find the new leader and go on, and hundreds of
/// later sequences could be applied before the retry arrives — which then finds its reply
/// forgotten, or is refused though it was never applied (a writer's `mkdir` failed with ESTALE
/// after a leader kill in CI). With every sequence in flight inside a window of at most half
/// the remembered replies, fewer than that many later sequences can be applied before any
/// retry, so the retry finds its reply or is applied, once.
///
/// The window also bounds the mutations in flight: at most `width` at once.
final class SequenceWindow: Sendable {
    private struct State {
        var next: UInt64 = 1
        /// Issued and not yet ended (at most `width`).
        var unanswered: Set<UInt64> = []
        /// Tasks waiting for the window to move, by ticket (at most one per waiting task).
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextTicket: UInt64 = 0

        /// How far past the oldest unanswered sequence none is issued.
        let width: UInt64

        /// Whether `next` may be issued: it stays less than `width` past the oldest unanswered.
        var isOpen: Bool {
            guard let oldest = unanswered.min() else { return true }
            return next - oldest < width
        }
    }

    private let state: Mutex<State>

    init(width: Int) {
        precondition(width >= 1, "a sequence window holds at least one sequence")
        state = Mutex(State(width: UInt64(width)))
    }

    /// The next sequence number, once it is less than `width` past the oldest unanswered one.
    /// Pair it with `end(_:)` when its mutation is answered or given up.
    /// - Throws: `CancellationError` if the task is cancelled while waiting (no sequence taken).
    func begin() async throws -> UInt64 {
        while true {
            if let sequence = state.withLock({ s -> UInt64? in
                guard s.isOpen else { return nil }
                defer { s.next += 1 }
                s.unanswered.insert(s.next)
                return s.next
            }) {
                return sequence
            }
            try await waitForMovement()
        }
    }

    /// The mutation of `sequence` is answered (or given up): the window may move past it.
    /// Waiters wake only when it does (`sequence` was the oldest unanswered one).
    func end(_ sequence: UInt64) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            let wasOldest = s.unanswered.min() == sequence
            s.unanswered.remove(sequence)
            guard wasOldest else { return [] }
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Sequences issued and not yet ended.
    var unansweredCount: Int { state.withLock { $0.unanswered.count } }

    private func waitForMovement() async throws {
        let ticket = state.withLock { s -> UInt64 in
            defer { s.nextTicket += 1 }
            return s.nextTicket
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.isOpen || Task.isCancelled { return true }
                    s.waiters[ticket] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: ticket) }?.resume()
        }
        try Task.checkCancellation()
    }
}
