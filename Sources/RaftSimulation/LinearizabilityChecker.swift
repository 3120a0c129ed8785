/// One client operation as observed from outside: when it was invoked, when (if ever) it returned, and what it
/// returned. A write that timed out is *indeterminate*: `returned` is nil, and it may or may not have happened.
public struct HistoryOperation: Sendable, Equatable {
    public var client: Int
    public var operation: KVOperation
    public var invoked: UInt64
    /// nil: no answer (timed out); the operation may take effect at any time after `invoked`, or never.
    public var returned: UInt64?
    /// For a read: the value returned.
    public var output: String?

    public init(client: Int, operation: KVOperation, invoked: UInt64, returned: UInt64?, output: String?) {
        self.client = client
        self.operation = operation
        self.invoked = invoked
        self.returned = returned
        self.output = output
    }
}

/// The outcome of a linearizability check.
public enum LinearizabilityResult: Sendable, Equatable {
    case linearizable
    /// No linearization exists for the history of `key`.
    case violation(key: String, operations: Int)
    /// The search for `key` exceeded its bound before deciding (counted, never taken as a pass).
    case unknown(key: String)
}

/// A Wing–Gong search with Lowe's memoization (as Porcupine does), partitioned per key: a history is
/// linearizable iff each key's sub-history is, since operations on different keys commute.
public struct LinearizabilityChecker: Sendable {
    /// The most (linearized set, state) pairs explored per key before giving up with `.unknown`.
    public var statesExploredMax: Int

    public init(statesExploredMax: Int = 1_000_000) { self.statesExploredMax = statesExploredMax }

    public func check(_ history: [HistoryOperation]) -> LinearizabilityResult {
        var byKey: [String: [HistoryOperation]] = [:]
        for op in history {
            // A read that got no answer constrains nothing.
            if op.operation.isRead && op.returned == nil { continue }
            byKey[op.operation.key, default: []].append(op)
        }
        var unknown: String?
        for key in byKey.keys.sorted() {
            switch checkKey(Self.droppingUnobservedIndeterminateWrites(byKey[key]!)) {
            case .linearizable: continue
            case .violation(let n): return .violation(key: key, operations: n)
            case .unknown: unknown = unknown ?? key
            }
        }
        if let unknown { return .unknown(key: unknown) }
        return .linearizable
    }

    private enum KeyResult { case linearizable, violation(Int), unknown }

    /// An indeterminate write whose value no read ever returned can be removed without changing the answer:
    /// if it happened, nothing observed it before the next put erased it (or at all), and if it is placed last
    /// (its return is unbounded) it never happened. Values are unique tokens, so "observed" is a substring test.
    /// This keeps the search small when many writes time out.
    static func droppingUnobservedIndeterminateWrites(_ ops: [HistoryOperation]) -> [HistoryOperation] {
        let outputs = ops.compactMap { $0.operation.isRead ? $0.output : nil }
        return ops.filter { op in
            guard op.returned == nil else { return true }
            switch op.operation {
            case .put(_, let v), .append(_, let v): return outputs.contains { $0.contains(v) }
            case .get: return true
            }
        }
    }

    /// Applies `op` to `state`; nil if the operation's observed output is impossible in that state.
    private func step(_ state: String, _ op: HistoryOperation) -> String? {
        switch op.operation {
        case .put(_, let v): return v
        case .append(_, let v): return state + v
        case .get: return op.output == state ? state : nil
        }
    }

    private struct CacheKey: Hashable {
        var linearized: [UInt64]
        var state: String
    }

    private func checkKey(_ ops: [HistoryOperation]) -> KeyResult {
        let n = ops.count
        if n == 0 { return .linearizable }
        // Events: (time, isReturn, op). Returns sort after calls at the same instant? No: a call at the same
        // instant as a return must not be ordered before it (that would make them concurrent when they were
        // not); returns first is the conservative choice that only adds real-time constraints already implied.
        struct Event { var time: UInt64; var isReturn: Bool; var op: Int }
        var events: [Event] = []
        for (i, op) in ops.enumerated() {
            events.append(Event(time: op.invoked, isReturn: false, op: i))
            events.append(Event(time: op.returned ?? UInt64.max, isReturn: true, op: i))
        }
        events.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.isReturn != b.isReturn { return a.isReturn }
            return a.op < b.op
        }
        // Doubly linked list over events with a sentinel head at index `count`.
        let count = events.count
        var next = [Int](repeating: -1, count: count + 1)
        var prev = [Int](repeating: -1, count: count + 1)
        let head = count
        var last = head
        var callNode = [Int](repeating: -1, count: n)
        var returnNode = [Int](repeating: -1, count: n)
        for (i, e) in events.enumerated() {
            next[last] = i
            prev[i] = last
            last = i
            if e.isReturn { returnNode[e.op] = i } else { callNode[e.op] = i }
        }

        func lift(_ op: Int) {
            for node in [callNode[op], returnNode[op]] {
                next[prev[node]] = next[node]
                if next[node] != -1 { prev[next[node]] = prev[node] }
            }
        }
        func unlift(_ op: Int) {
            for node in [returnNode[op], callNode[op]] {
                next[prev[node]] = node
                if next[node] != -1 { prev[next[node]] = node }
            }
        }

        var linearized = [UInt64](repeating: 0, count: (n + 63) / 64)
        var cache = Set<CacheKey>()
        var stack: [(op: Int, state: String)] = []
        var state = ""
        var entry = next[head]
        var explored = 0
        while next[head] != -1 {
            let e = events[entry]
            if !e.isReturn {
                if let newState = step(state, ops[e.op]) {
                    var candidate = linearized
                    candidate[e.op / 64] |= 1 << UInt64(e.op % 64)
                    if cache.insert(CacheKey(linearized: candidate, state: newState)).inserted {
                        explored += 1
                        if explored > statesExploredMax { return .unknown }
                        stack.append((e.op, state))
                        state = newState
                        linearized = candidate
                        lift(e.op)
                        entry = next[head]
                        continue
                    }
                }
                entry = next[entry]
            } else {
                // Reached the return of an operation not yet linearized: backtrack.
                guard let top = stack.popLast() else { return .violation(n) }
                state = top.state
                linearized[top.op / 64] &= ~(1 << UInt64(top.op % 64))
                unlift(top.op)
                entry = next[callNode[top.op]]
            }
            if entry == -1 {
                // Ran past the end without linearizing everything: backtrack.
                guard let top = stack.popLast() else { return .violation(n) }
                state = top.state
                linearized[top.op / 64] &= ~(1 << UInt64(top.op % 64))
                unlift(top.op)
                entry = next[callNode[top.op]]
                if entry == -1 { return .violation(n) }
            }
        }
        return .linearizable
    }
}
