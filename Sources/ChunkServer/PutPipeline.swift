import CairnCore
import ChunkStore
import NIOCore
import NIOPosix
import Synchronization

/// Feeds one put's body parts to its `PutSession` on the I/O thread pool, in two lanes that
/// run at once: the hashing lane (SHA-256, one core's worth of work that cannot be split) and
/// the writing lane (block checksums and the temp-file write). Each lane takes its parts in
/// order, one at a time, and goes from one part to the next without a round trip through the
/// connection's task, so the hash never waits for the disk or for a thread hop.
///
/// Bounded: at most `partsInflightMax` parts (each at most `FrameDecoder.bodyPartBytesMax`)
/// are held between the connection and the lanes; `add` waits for room.
final class PutPipeline: Sendable {
    /// Body parts handed to the lanes and not yet done by both.
    static let partsInflightMax = 4

    private let session: PutSession
    private let hashing: SerialLane
    private let writing: SerialLane
    /// Syncs what the writing lane has written so far while later parts are still being
    /// hashed and written, so the disk works during the put, not only at its commit.
    private let syncing: SerialLane
    /// Whether a sync is queued on `syncing` and has not started: one is enough.
    private let syncQueued = Atomic<Bool>(false)
    /// Bytes handed to the lanes so far (only `add` touches it, from one task).
    private let queuedBytes = Atomic<Int>(0)
    private let window = AsyncSemaphore(limit: PutPipeline.partsInflightMax)
    /// The first error either lane hit; later parts are dropped, not processed.
    private let failure = Mutex<(any Error)?>(nil)

    init(session: PutSession, threadPool: NIOThreadPool) {
        self.session = session
        self.hashing = SerialLane(threadPool: threadPool)
        self.writing = SerialLane(threadPool: threadPool)
        self.syncing = SerialLane(threadPool: threadPool)
    }

    /// Queues the next body part on both lanes, waiting while `partsInflightMax` are queued.
    /// - Throws: `CancellationError` if the task is cancelled while waiting (the part is not queued).
    func add(_ part: ByteBuffer) async throws {
        try await window.acquire()
        let bothDone = Countdown(2) { [window] in window.release() }
        hashing.add {
            defer { bothDone.countDown() }
            self.run(part) { (session, raw) throws(CairnError) in try session.hash(raw) }
        }
        let isLast = queuedBytes.add(part.readableBytes, ordering: .relaxed).newValue >= session.length
        writing.add {
            defer { bothDone.countDown() }
            self.run(part) { (session, raw) throws(CairnError) in try session.write(raw) }
            // The last part is synced by the commit.
            if !isLast, self.syncQueued.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
                self.syncing.add {
                    self.syncQueued.store(false, ordering: .releasing)
                    guard self.failure.withLock({ $0 == nil }) else { return }
                    do {
                        try self.session.syncWritten()
                    } catch {
                        self.failure.withLock { $0 = $0 ?? error }
                    }
                }
            }
        }
    }

    /// Runs one lane's work on a part unless a lane has failed; records the first failure.
    private func run(_ part: ByteBuffer, _ work: (PutSession, UnsafeRawBufferPointer) throws(CairnError) -> Void) {
        guard failure.withLock({ $0 == nil }) else { return }
        do {
            try typedCairnErrors { try part.withUnsafeReadableBytes { raw in try work(session, raw) } }
        } catch {
            failure.withLock { $0 = $0 ?? error }
        }
    }

    /// Waits until the lanes have finished every part queued so far (and any sync they
    /// started); returns the first error one hit. After it returns the session is idle and may
    /// be committed or aborted.
    func finish() async -> (any Error)? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // The writing lane queues syncs, so it is waited for before the syncing lane.
            let allDone = Countdown(2) { continuation.resume() }
            hashing.add { allDone.countDown() }
            writing.add { self.syncing.add { allDone.countDown() } }
        }
        return failure.withLock { $0 }
    }
}

/// Calls `action` once, when `countDown` has been called `count` times (from any threads).
final class Countdown: Sendable {
    private let remaining: Atomic<Int>
    private let action: @Sendable () -> Void

    init(_ count: Int, _ action: @escaping @Sendable () -> Void) {
        remaining = Atomic(count)
        self.action = action
    }

    func countDown() {
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { action() }
    }
}

/// Runs blocking jobs on a thread pool one after another, in the order they were added. While
/// jobs are queued one pool thread keeps running them; a lane holds a thread only while it has
/// work.
final class SerialLane: Sendable {
    private let threadPool: NIOThreadPool
    private let state = Mutex(State())

    private struct State {
        var jobs = CircularBuffer<@Sendable () -> Void>(initialCapacity: 8)
        var running = false
    }

    init(threadPool: NIOThreadPool) {
        self.threadPool = threadPool
    }

    func add(_ job: @escaping @Sendable () -> Void) {
        let start = state.withLock { s -> Bool in
            s.jobs.append(job)
            if s.running { return false }
            s.running = true
            return true
        }
        // A pool that is shutting down calls back with `.cancelled` on this thread: the jobs
        // still run (they finish or drop a put, and wake whoever waits for them).
        if start { threadPool.submit { _ in self.drain() } }
    }

    private func drain() {
        while true {
            let job = state.withLock { s -> (@Sendable () -> Void)? in
                if s.jobs.isEmpty {
                    s.running = false
                    return nil
                }
                return s.jobs.removeFirst()
            }
            guard let job else { return }
            job()
        }
    }
}
