/// A min-heap of events ordered by virtual time, ties broken by insertion order, so the simulation is a pure
/// function of its seed.
struct EventQueue<Payload> {
    private struct Item {
        var time: UInt64
        var sequence: UInt64
        var payload: Payload
        func precedes(_ other: Item) -> Bool {
            time != other.time ? time < other.time : sequence < other.sequence
        }
    }

    private var heap: [Item] = []
    private var nextSequence: UInt64 = 0

    var count: Int { heap.count }
    var isEmpty: Bool { heap.isEmpty }

    mutating func push(at time: UInt64, _ payload: Payload) {
        heap.append(Item(time: time, sequence: nextSequence, payload: payload))
        nextSequence += 1
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if heap[i].precedes(heap[parent]) {
                heap.swapAt(i, parent)
                i = parent
            } else { break }
        }
    }

    mutating func pop() -> (time: UInt64, payload: Payload)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < heap.count && heap[l].precedes(heap[m]) { m = l }
            if r < heap.count && heap[r].precedes(heap[m]) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return (top.time, top.payload)
    }
}
