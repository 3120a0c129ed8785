import Synchronization

/// A bounded queue of encoded Raft messages to one peer: the Raft thread pushes without ever
/// blocking, the peer's sender task pops everything queued as one batch.
///
/// When `messagesMax` are queued, pushes are refused (the caller tells the core the peer is
/// unreachable: Raft tolerates lost messages, not a Raft thread stuck on a slow peer).
final class PeerQueue: Sendable {
    private struct State {
        var messages: [[UInt8]] = []
        var bytes = 0
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
    }

    private let state = Mutex(State())
    let messagesMax: Int
    let batchBytesMax: Int

    init(messagesMax: Int, batchBytesMax: Int) {
        self.messagesMax = messagesMax
        self.batchBytesMax = batchBytesMax
    }

    /// Queues a message; false if the queue is full or closed.
    func push(_ message: [UInt8]) -> Bool {
        let (accepted, waiter) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !s.closed, s.messages.count < messagesMax else { return (false, nil) }
            s.messages.append(message)
            s.bytes += message.count
            let w = s.waiter
            s.waiter = nil
            return (true, w)
        }
        waiter?.resume()
        return accepted
    }

    /// Waits for messages and takes as many as fit in `batchBytesMax` (at least one).
    /// Returns nil once the queue is closed.
    func popBatch() async -> [[UInt8]]? {
        while true {
            enum Step { case batch([[UInt8]]), closed, wait }
            let step = state.withLock { s -> Step in
                if s.closed { return .closed }
                guard !s.messages.isEmpty else { return .wait }
                var taken = 0
                var bytes = 0
                while taken < s.messages.count && (taken == 0 || bytes + s.messages[taken].count <= batchBytesMax) {
                    bytes += s.messages[taken].count
                    taken += 1
                }
                let batch = Array(s.messages[..<taken])
                s.messages.removeFirst(taken)
                s.bytes -= bytes
                return .batch(batch)
            }
            switch step {
            case .batch(let batch): return batch
            case .closed: return nil
            case .wait:
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { s -> Bool in
                        if s.closed || !s.messages.isEmpty { return true }
                        precondition(s.waiter == nil, "one consumer per peer queue")
                        s.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
        }
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    /// Wakes the consumer for good.
    func close() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.closed = true
            let w = s.waiter
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }
}
