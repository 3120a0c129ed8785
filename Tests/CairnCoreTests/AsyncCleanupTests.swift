import CairnCore
import Synchronization
import Testing

/// `withAsyncCleanup`: the cleanup runs exactly once, after the body, whether it returns or throws.
@Suite struct AsyncCleanupTests {
    struct Planned: Error {}

    @Test func cleanupRunsAfterABodyThatReturns() async throws {
        let steps = Mutex<[String]>([])
        let value = try await withAsyncCleanup {
            steps.withLock { $0.append("body") }
            return 7
        } cleanup: {
            steps.withLock { $0.append("cleanup") }
        }
        #expect(value == 7)
        #expect(steps.withLock { $0 } == ["body", "cleanup"])
    }

    @Test func cleanupRunsAfterABodyThatThrowsAndTheErrorGoesOn() async throws {
        let steps = Mutex<[String]>([])
        await #expect(throws: Planned.self) {
            _ = try await withAsyncCleanup { () async throws -> Int in
                steps.withLock { $0.append("body") }
                throw Planned()
            } cleanup: {
                steps.withLock { $0.append("cleanup") }
            }
        }
        #expect(steps.withLock { $0 } == ["body", "cleanup"])
    }
}
