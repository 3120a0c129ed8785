import CairnTestSupport
@testable import MetaService
import MetaState
import Synchronization
import Testing

/// A session's sequence numbers stay within a window of its oldest unanswered mutation, so a
/// mutation retried through an election always finds its remembered reply (or applies).
struct SequenceWindowTests {
    @Test func aStalledSequenceHoldsTheWindowUntilItEnds() async throws {
        let window = SequenceWindow(width: 4)
        let stalled = try await window.begin()
        var later: [UInt64] = []
        for _ in 0..<3 {
            let sequence = try await window.begin()
            later.append(sequence)
            window.end(sequence)
        }
        #expect([stalled] + later == [1, 2, 3, 4])
        // 5 would be 4 past the stalled 1: it waits until 1 ends.
        let next = Task { try await window.begin() }
        try await Task.sleep(for: .milliseconds(50))
        #expect(window.unansweredCount == 1)
        window.end(stalled)
        #expect(try await next.value == 5)
    }

    @Test func aWaiterThatIsCancelledTakesNoSequence() async throws {
        let window = SequenceWindow(width: 1)
        let held = try await window.begin()
        let waiting = Task { try await window.begin() }
        try await Task.sleep(for: .milliseconds(20))
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        window.end(held)
        #expect(try await window.begin() == 2)
    }

    /// Many tasks, each ending its sequences after random delays, some much later than others:
    /// no sequence is ever issued `width` or more past one still unanswered, and every
    /// sequence is issued once.
    @Test func noSequenceIsIssuedAWindowPastAnUnansweredOne() async throws {
        let width = 8
        let window = SequenceWindow(width: width)
        let record = Record()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<6 {
                group.addTask {
                    var random = SplitMix(seed: UInt64(task + 1))
                    for _ in 0..<60 {
                        let sequence = try await window.begin()
                        record.open.withLock { open in
                            // Only older sequences count: a younger one may have been issued since this one.
                            if let oldest = open.filter({ $0 < sequence }).min(), sequence - oldest >= UInt64(width) {
                                record.violations.withLock { $0.append("\(sequence) issued while \(oldest) was unanswered") }
                            }
                            open.insert(sequence)
                        }
                        record.issued.withLock { $0.append(sequence) }
                        // Now and then one mutation takes far longer than the others (a retry through an election).
                        let pause = random.next() % 10 == 0 ? 3_000 : random.next() % 200
                        try await Task.sleep(for: .microseconds(Int(pause)))
                        record.open.withLock { _ = $0.remove(sequence) }
                        window.end(sequence)
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(record.violations.withLock { $0 } == [])
        #expect(record.issued.withLock { $0.sorted() } == Array(1...360))
    }

    @Test func sessionsKeepHalfTheRememberedRepliesInFlight() {
        #expect(MetaSession.mutationsInflightMax * 2 <= MetaLimits().dedupRepliesPerSessionMax)
    }
}

/// What the concurrent test's tasks saw: sequences issued and not yet ended, all issued, violations.
private final class Record: Sendable {
    let open = Mutex<Set<UInt64>>([])
    let issued = Mutex<[UInt64]>([])
    let violations = Mutex<[String]>([])
}
