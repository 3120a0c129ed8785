import Synchronization

/// A counting semaphore for Swift concurrency: bounds how many operations run at once
/// (transfers on a chunkserver, requests in flight on a client). Waiters resume in FIFO order.
/// A waiting task that is cancelled stops waiting and gets `CancellationError`.
public final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var nextWaiter: UInt64 = 0
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        /// Waiters cancelled before they got to enqueue their continuation.
        var cancelledEarly: Set<UInt64> = []
    }

    private let state: Mutex<State>
    public let limit: Int

    public init(limit: Int) {
        precondition(limit > 0, "a semaphore needs a positive limit")
        self.limit = limit
        state = Mutex(State(available: limit))
    }

    /// Waits for a permit.
    /// - Throws: `CancellationError` if the task is cancelled while waiting.
    public func acquire() async throws {
        let id = state.withLock { s -> UInt64? in
            if s.available > 0 {
                s.available -= 1
                return nil
            }
            s.nextWaiter += 1
            return s.nextWaiter
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Action { case resume, fail, wait }
                let action = state.withLock { s -> Action in
                    if s.cancelledEarly.remove(id) != nil { return .fail }
                    if s.available > 0 {
                        s.available -= 1
                        return .resume
                    }
                    s.waiters.append((id, continuation))
                    return .wait
                }
                switch action {
                case .resume: continuation.resume()
                case .fail: continuation.resume(throwing: CancellationError())
                case .wait: break
                }
            }
        } onCancel: {
            let cancelled = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                guard let index = s.waiters.firstIndex(where: { $0.id == id }) else {
                    s.cancelledEarly.insert(id)
                    return nil
                }
                return s.waiters.remove(at: index).continuation
            }
            cancelled?.resume(throwing: CancellationError())
        }
    }

    /// Returns a permit, waking the longest waiter if any.
    public func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if s.waiters.isEmpty {
                s.available += 1
                precondition(s.available <= limit, "semaphore released more than acquired")
                return nil
            }
            return s.waiters.removeFirst().continuation
        }
        next?.resume()
    }

    /// Runs `body` holding a permit.
    public func withPermit<T>(_ body: () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await body()
    }
}
