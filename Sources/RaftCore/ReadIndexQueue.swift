/// Linearizable reads waiting for a heartbeat quorum (Raft thesis §6.4, etcd's readOnly with ReadOnlySafe).
/// A read is safe at `index` (the commit index when it arrived) once a quorum has acknowledged a heartbeat that
/// carried its context: then no other leader can have committed anything newer at that moment.
struct ReadIndexQueue {
    struct Request {
        /// The original request (its `from` says who to answer; `context` identifies it).
        var message: Message
        var index: UInt64
        var acks: Set<NodeID>
    }

    private var pending: [[UInt8]: Request] = [:]
    /// Contexts in arrival order; the order (not the dictionary) decides which reads complete together.
    private(set) var order: [[UInt8]] = []
    let requestsMax: Int

    init(requestsMax: Int) { self.requestsMax = requestsMax }

    var count: Int { order.count }
    var isFull: Bool { order.count >= requestsMax }
    var lastContext: [UInt8]? { order.last }

    /// Returns false if a request with that context is already pending or the queue is full.
    mutating func add(index: UInt64, message: Message) -> Bool {
        guard pending[message.context] == nil, !isFull else { return false }
        pending[message.context] = Request(message: message, index: index, acks: [])
        order.append(message.context)
        return true
    }

    /// Records that `id` acknowledged a heartbeat carrying `context`; returns the acks so far (nil if unknown).
    mutating func recordAck(from id: NodeID, context: [UInt8]) -> Set<NodeID>? {
        guard var request = pending[context] else { return nil }
        request.acks.insert(id)
        pending[context] = request
        return request.acks
    }

    /// Completes the request with `context` and every request queued before it (a quorum for a later heartbeat
    /// confirms the leadership for the earlier ones too).
    mutating func advance(through context: [UInt8]) -> [Request] {
        guard let position = order.firstIndex(of: context) else { return [] }
        let done = order[...position].compactMap { pending.removeValue(forKey: $0) }
        order.removeFirst(position + 1)
        return done
    }
}
