import CairnCore
import ChunkStore
import Logging
import NIOPosix
import ServiceLifecycle
import Synchronization

/// What the scrubber has done since start-up (reported by `stat`).
public struct ScrubStats: Sendable, Equatable {
    public var passesTotal: Int64 = 0
    public var chunksTotal: Int64 = 0
    public var bytesTotal: Int64 = 0
    /// Chunks the scrubber found corrupt (and the store quarantined).
    public var corruptTotal: Int64 = 0
    public init() {}
}

/// Re-verifies every stored chunk in the background, at a bounded rate, pass after pass.
/// A chunk that fails is quarantined by the store and counted and logged here.
public final class Scrubber: Service, Sendable {
    private let store: ChunkStore
    private let threadPool: NIOThreadPool
    private let bytesPerSecond: Int64
    private let passInterval: Duration
    private let logger: Logger
    private let counters = Mutex(ScrubStats())

    public init(store: ChunkStore, threadPool: NIOThreadPool, bytesPerSecond: Int64, passInterval: Duration, logger: Logger) {
        precondition(bytesPerSecond > 0)
        self.store = store
        self.threadPool = threadPool
        self.bytesPerSecond = bytesPerSecond
        self.passInterval = passInterval
        self.logger = logger
    }

    public var stats: ScrubStats { counters.withLock { $0 } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await self.scrubOnePass()
                    try await Task.sleep(for: self.passInterval)
                } catch {
                    return
                }
            }
        }
    }

    /// Verifies every chunk once, pacing itself to `bytesPerSecond`.
    /// - Throws: `CancellationError` when stopped.
    public func scrubOnePass() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        var scrubbedBytes: Int64 = 0
        var cursor: ChunkID? = nil
        var corrupt = 0
        while true {
            try Task.checkCancellation()
            let after = cursor
            let page = try await threadPool.runIfActive { [store] in try store.list(after: after, limit: 256) }
            for entry in page.entries {
                try Task.checkCancellation()
                let outcome: Result<Int, CairnError> = try await threadPool.runIfActive { [store] in
                    do { return .success(try store.verify(entry.id)) } catch let error as CairnError { return .failure(error) }
                }
                switch outcome {
                case .success(let size):
                    scrubbedBytes += Int64(size)
                    counters.withLock {
                        $0.chunksTotal += 1
                        $0.bytesTotal += Int64(size)
                    }
                case .failure(let error) where error.code == .corrupt:
                    corrupt += 1
                    counters.withLock {
                        $0.chunksTotal += 1
                        $0.corruptTotal += 1
                    }
                    logger.error("scrubber found a corrupt chunk", metadata: ["id": "\(entry.id)", "error": "\(error)"])
                case .failure(let error) where error.code == .notFound:
                    continue  // deleted since it was listed
                case .failure(let error):
                    logger.warning("scrubber could not verify a chunk", metadata: ["id": "\(entry.id)", "error": "\(error)"])
                }
                // Pace: by now at most `bytesPerSecond × elapsed` bytes may have been read.
                let due = Duration.nanoseconds(scrubbedBytes * 1_000_000_000 / bytesPerSecond)
                let elapsed = clock.now - start
                if due > elapsed { try await Task.sleep(for: due - elapsed) }
            }
            guard page.more, let last = page.entries.last else { break }
            cursor = last.id
        }
        counters.withLock { $0.passesTotal += 1 }
        logger.info("scrub pass done", metadata: ["bytes": "\(scrubbedBytes)", "corrupt": "\(corrupt)",
                                                  "seconds": "\((clock.now - start).components.seconds)"])
    }
}
