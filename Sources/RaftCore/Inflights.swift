/// The append messages sent to one follower in replicate state and not yet acknowledged: bounded both in count
/// (`inflightMessagesMax`) and in bytes (`inflightBytesMax`) so that a slow follower cannot make the leader
/// buffer without limit.
struct Inflights: Equatable {
    let messagesMax: Int
    let bytesMax: Int
    /// (last index of the message, bytes of its entries), oldest first; a ring would avoid the shifting, but the
    /// array never exceeds `messagesMax` and shifting it is cheap at these sizes.
    private(set) var queue: [(index: UInt64, bytes: Int)] = []
    private(set) var bytes: Int = 0

    init(messagesMax: Int, bytesMax: Int) {
        self.messagesMax = messagesMax
        self.bytesMax = bytesMax
    }

    static func == (a: Inflights, b: Inflights) -> Bool {
        a.messagesMax == b.messagesMax && a.bytesMax == b.bytesMax && a.bytes == b.bytes
            && a.queue.map(\.index) == b.queue.map(\.index) && a.queue.map(\.bytes) == b.queue.map(\.bytes)
    }

    var count: Int { queue.count }
    var isFull: Bool { queue.count >= messagesMax || bytes >= bytesMax }

    mutating func add(index: UInt64, bytes: Int) {
        precondition(!isFull, "inflights full: \(queue.count) messages, \(self.bytes) bytes")
        if let last = queue.last { precondition(index > last.index, "inflight index \(index) not increasing") }
        queue.append((index, bytes))
        self.bytes += bytes
    }

    /// Frees every message whose last index is ≤ `index` (acknowledged).
    mutating func freeLE(_ index: UInt64) {
        var n = 0
        while n < queue.count && queue[n].index <= index {
            bytes -= queue[n].bytes
            n += 1
        }
        if n > 0 { queue.removeFirst(n) }
    }

    mutating func reset() {
        queue.removeAll(keepingCapacity: true)
        bytes = 0
    }
}
