import CairnCore
import NIOCore
import NIOPosix

/// The one event-loop thread a replica's gRPC server, its Raft peer connections and its Raft
/// loop share, with a task executor that runs the server's request handlers on that thread.
/// A client uses one the same way: its connections, and the tasks writing and reading their
/// streams, on one thread.
///
/// Why: a request's path crossed threads five times on the leader (the gRPC event loop, the
/// handler's task on the global pool, the Raft thread, the task again, the event loop), and
/// on two cores every crossing is a wake-up of a sleeping thread. On one thread the handler's
/// task, the proposal, the Raft turn and the answer run one after another without one.
/// Measured against the build without it, alternating (release, 3 replicas on loopback):
/// `cairn-bench raft` 1-proposer put p50 0.85-0.88 → 0.73-0.77 ms, get 0.47-0.48 → 0.37-0.39 ms,
/// 64 proposers 18-19k → 21-22k puts/s; `cairn-bench meta --clients 16` creates 7.4-8.5k →
/// 8.5-9.8k/s, stats 18-21k → 21-27k/s.
///
/// Anything run on it must not block: it is also the thread that keeps Raft's heartbeats.
/// The owner shuts it down after everything using it has stopped.
public final class SharedEventLoop: Sendable {
    public let group: MultiThreadedEventLoopGroup
    public let executor: EventLoopTaskExecutor

    public init() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        executor = EventLoopTaskExecutor(group.next())
    }

    public var eventLoop: any EventLoop { executor.eventLoop }

    public func shutdown() async {
        try? await group.shutdownGracefully()
    }

    /// Runs `body` with a new shared event loop, shut down once `body` returns or throws (a
    /// client's connections and the tasks that write and read its streams).
    public static func with<T: Sendable>(_ body: (SharedEventLoop) async throws -> T) async throws -> T {
        let eventLoop = SharedEventLoop()
        return try await withAsyncCleanup { try await body(eventLoop) } cleanup: { await eventLoop.shutdown() }
    }
}
