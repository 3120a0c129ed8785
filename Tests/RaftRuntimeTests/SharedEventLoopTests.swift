import RaftRuntime
import Testing

/// `SharedEventLoop`: a task that prefers its executor, and the child tasks it starts, run on
/// the loop's one thread (where the replica's Raft loop and connections run); other tasks do not.
@Suite struct SharedEventLoopTests {
    @Test func tasksPreferringItsExecutorRunOnTheLoop() async throws {
        try await SharedEventLoop.with { shared in
            let eventLoop = shared.eventLoop
            #expect(await Task(executorPreference: shared.executor) { eventLoop.inEventLoop }.value)
            let children = await withTaskExecutorPreference(shared.executor) {
                await withTaskGroup(of: Bool.self) { group in
                    for _ in 0..<4 { group.addTask { eventLoop.inEventLoop } }
                    var all: [Bool] = []
                    for await onLoop in group { all.append(onLoop) }
                    return all
                }
            }
            #expect(children == [true, true, true, true])
            // After a suspension the task comes back to the loop, not to the global pool.
            let afterSleep = await Task(executorPreference: shared.executor) { () async -> Bool in
                try? await Task.sleep(for: .milliseconds(5))
                return eventLoop.inEventLoop
            }.value
            #expect(afterSleep)
            #expect(await Task { eventLoop.inEventLoop }.value == false)
        }
    }
}
