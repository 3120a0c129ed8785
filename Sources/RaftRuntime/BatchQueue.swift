import Synchronization

/// A bounded queue between producers that must never block (the Raft thread, reply callbacks)
/// and one consumer task that takes everything queued as one batch: the consumer writes a
/// batch with one flush (a peer's Raft messages, a pipelined stream's requests or answers).
///
/// When `elementsMax` are queued, pushes are refused: for Raft messages the caller tells the
/// core the peer is unreachable (Raft tolerates lost messages, not a Raft thread stuck on a
/// slow peer); other callers bound what they push by other means and treat a refusal as fatal.
public final class BatchQueue<Element: Sendable>: Sendable {
    private enum PopStep {
        case batch([Element])
        case closed
        case wait
    }

    private struct State {
        var elements: [Element] = []
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
    }

    private let state = Mutex(State())
    public let elementsMax: Int
    /// A batch stops before the element that would take its weight past this (it always
    /// holds at least one element).
    public let batchWeightMax: Int
    /// Whether the consumer still gets what was queued before `close()` (else it is dropped).
    public let drainsOnClose: Bool
    private let weigh: @Sendable (Element) -> Int

    public init(elementsMax: Int, batchWeightMax: Int, drainsOnClose: Bool, weigh: @escaping @Sendable (Element) -> Int) {
        precondition(elementsMax > 0 && batchWeightMax > 0)
        self.elementsMax = elementsMax
        self.batchWeightMax = batchWeightMax
        self.drainsOnClose = drainsOnClose
        self.weigh = weigh
    }

    /// Queues an element; false if the queue is full or closed.
    public func push(_ element: Element) -> Bool {
        let (accepted, waiter) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !s.closed, s.elements.count < elementsMax else { return (false, nil) }
            s.elements.append(element)
            let w = s.waiter
            s.waiter = nil
            return (true, w)
        }
        waiter?.resume()
        return accepted
    }

    /// Waits for elements and takes as many as fit in `batchWeightMax` (at least one).
    /// Returns nil once the queue is closed (and, if it `drainsOnClose`, empty), or when the
    /// waiting task is cancelled (the stream it feeds has failed).
    public func popBatch() async -> [Element]? {
        while true {
            let step = state.withLock { s -> PopStep in
                if s.closed && (s.elements.isEmpty || !drainsOnClose) { return .closed }
                guard !s.elements.isEmpty else { return .wait }
                let taken = batchLength(s.elements, weightMax: batchWeightMax, weigh: weigh)
                let batch = Array(s.elements[..<taken])
                s.elements.removeFirst(taken)
                return .batch(batch)
            }
            switch step {
            case .batch(let batch): return batch
            case .closed: return nil
            case .wait:
                if Task.isCancelled { return nil }
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let resumeNow = state.withLock { s -> Bool in
                            if s.closed || !s.elements.isEmpty || Task.isCancelled { return true }
                            precondition(s.waiter == nil, "one consumer per batch queue")
                            s.waiter = continuation
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                        let w = s.waiter
                        s.waiter = nil
                        return w
                    }
                    waiter?.resume()
                }
            }
        }
    }

    /// Refuses further pushes and wakes the consumer for good.
    public func close() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.closed = true
            let w = s.waiter
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }
}

extension BatchQueue {
    /// Hands every batch to `body` until the queue is closed.
    public func forEachBatch(_ body: ([Element]) async throws -> Void) async rethrows {
        while let batch = await popBatch() { try await body(batch) }
    }
}

/// How many leading `elements` make one batch: as many as fit in `weightMax`, and at least one
/// (a single heavier element travels alone).
func batchLength<C: Collection>(_ elements: C, weightMax: Int, weigh: (C.Element) -> Int) -> Int {
    var taken = 0
    var weight = 0
    for element in elements {
        let next = weigh(element)
        if taken > 0 && weight + next > weightMax { break }
        weight += next
        taken += 1
    }
    return taken
}
