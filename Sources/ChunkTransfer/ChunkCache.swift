import CairnCore
import NIOCore
import Synchronization

/// A client's cache of verified chunks, bounded by bytes, least recently used out first.
///
/// Chunks are immutable and named by their hash, so an entry never goes stale and nothing is
/// ever invalidated. Concurrent misses for one chunk share one fetch (single-flight), and
/// `prefetch` starts fetches ahead of readers, at most `prefetchesInflightMax` at once.
///
/// A fetch runs in its own task, so a reader that is cancelled while waiting does not cancel it
/// for the others waiting on the same chunk; its result is cached for them.
public final class ChunkCache: Sendable {
    /// Fetches a whole, verified chunk (`ChunkserverPool.fetch`, or a test's counting wrapper).
    public typealias Fetch = @Sendable (ChunkID, [HostPort]) async throws(CairnError) -> ByteBuffer
    /// Fetches part of a chunk, checked block by block (`ChunkserverPool.fetchRange`).
    public typealias FetchRange = @Sendable (ChunkID, _ offset: Int, _ length: Int, [HostPort]) async throws(CairnError) -> ByteBuffer

    /// The most chunk bytes kept. A chunk larger than this is returned but not kept.
    public let bytesMax: Int
    /// Prefetches in flight at once; `prefetch` past it does nothing.
    public let prefetchesInflightMax: Int
    private let fetcher: Fetch
    private let rangeFetcher: FetchRange?
    private let state: Mutex<State>

    private typealias Load = Task<Result<ByteBuffer, CairnError>, Never>

    private struct State {
        var cached: LeastRecentlyUsed
        var loading: [ChunkID: Load] = [:]
        var prefetchesInflight = 0
        var hitsTotal = 0
        var missesTotal = 0
        var rangeReadsTotal = 0
    }

    public init(bytesMax: Int, prefetchesInflightMax: Int = 4, fetch: @escaping Fetch, fetchRange: FetchRange? = nil) {
        precondition(bytesMax >= 0, "bytesMax must not be negative")
        precondition(prefetchesInflightMax >= 0, "prefetchesInflightMax must not be negative")
        self.bytesMax = bytesMax
        self.prefetchesInflightMax = prefetchesInflightMax
        self.fetcher = fetch
        self.rangeFetcher = fetchRange
        self.state = Mutex(State(cached: LeastRecentlyUsed(bytesMax: bytesMax)))
    }

    /// A cache that fetches whole chunks through `pool` and ranges through `rangePool` (or
    /// `pool`), reporting every failed replica to `onBadReplica`.
    public convenience init(pool: ChunkserverPool, rangePool: ChunkserverPool? = nil, bytesMax: Int, prefetchesInflightMax: Int = 4,
                            onBadReplica: @escaping @Sendable (ChunkID, HostPort, CairnError) -> Void = { _, _, _ in }) {
        let rangePool = rangePool ?? pool
        self.init(bytesMax: bytesMax, prefetchesInflightMax: prefetchesInflightMax, fetch: { id, candidates throws(CairnError) in
            try await pool.fetch(id, candidates: candidates) { onBadReplica(id, $0, $1) }
        }, fetchRange: { id, offset, length, candidates throws(CairnError) in
            try await rangePool.fetchRange(id, offset: offset, length: length, candidates: candidates) { onBadReplica(id, $0, $1) }
        })
    }

    /// The whole chunk, from the cache or fetched (and then cached).
    /// - Throws: what the fetch throws (`.notFound`, `.unavailable`); failures are not cached.
    public func chunk(_ id: ChunkID, candidates: [HostPort]) async throws(CairnError) -> ByteBuffer {
        enum Action { case hit(ByteBuffer), wait(Load) }
        let action = state.withLock { s -> Action in
            if let bytes = s.cached.get(id) {
                s.hitsTotal += 1
                return .hit(bytes)
            }
            s.missesTotal += 1
            return .wait(startLoad(id, candidates, in: &s, prefetch: false))
        }
        switch action {
        case .hit(let bytes):
            return bytes
        case .wait(let load):
            return try await load.value.get()
        }
    }

    /// `length` bytes of a chunk at `offset`, cut from the whole verified chunk; fewer if the
    /// chunk ends first.
    ///
    /// With `wholeChunk` false (a reader that jumps around) and the chunk neither cached nor
    /// being fetched, only the blocks holding the range are fetched and checked
    /// (`FetchRange`), and nothing is cached: a 4 KiB random read costs a 64 KiB block, not a
    /// 4 MiB chunk. Then the range must lie inside the chunk.
    /// - Throws: `.invalidArgument` for a negative range; otherwise as `chunk`.
    public func read(_ id: ChunkID, offset: Int, length: Int, candidates: [HostPort], wholeChunk: Bool = true) async throws(CairnError) -> ByteBuffer {
        guard offset >= 0, length >= 0 else { throw CairnError(.invalidArgument, "bad range \(offset)+\(length)") }
        if !wholeChunk, length > 0, let rangeFetcher {
            let ranged = state.withLock { s -> Bool in
                guard !s.cached.contains(id), s.loading[id] == nil else { return false }
                s.rangeReadsTotal += 1
                return true
            }
            if ranged { return try await rangeFetcher(id, offset, length, candidates) }
        }
        let bytes = try await chunk(id, candidates: candidates)
        let start = min(offset, bytes.readableBytes)
        return bytes.getSlice(at: bytes.readerIndex + start, length: min(length, bytes.readableBytes - start))!
    }

    /// Starts fetching a chunk into the cache unless it is cached, already being fetched, or
    /// `prefetchesInflightMax` prefetches are running. Returns whether it started one.
    /// A failed prefetch is forgotten; the reader that needs the chunk fetches it again.
    @discardableResult
    public func prefetch(_ id: ChunkID, candidates: [HostPort]) -> Bool {
        state.withLock { s -> Bool in
            guard !s.cached.contains(id), s.loading[id] == nil, s.prefetchesInflight < prefetchesInflightMax else { return false }
            s.prefetchesInflight += 1
            _ = startLoad(id, candidates, in: &s, prefetch: true)
            return true
        }
    }

    /// Caches bytes this client already has verified (a chunk it just sealed and uploaded).
    public func insert(_ id: ChunkID, bytes: ByteBuffer) {
        state.withLock { s in s.cached.insert(id, bytes) }
    }

    public func contains(_ id: ChunkID) -> Bool { state.withLock { $0.cached.contains(id) } }

    public struct Stats: Sendable, Equatable {
        public var chunks: Int
        public var bytes: Int
        public var hitsTotal: Int
        public var missesTotal: Int
        /// Reads served by fetching only their blocks (`read(wholeChunk: false)`).
        public var rangeReadsTotal: Int
        public var loadsInflight: Int
        public var prefetchesInflight: Int
    }

    public var stats: Stats {
        state.withLock { s in
            Stats(chunks: s.cached.count, bytes: s.cached.bytes, hitsTotal: s.hitsTotal, missesTotal: s.missesTotal,
                  rangeReadsTotal: s.rangeReadsTotal, loadsInflight: s.loading.count, prefetchesInflight: s.prefetchesInflight)
        }
    }

    /// The fetch in flight for `id`, started if there is none. Called with the lock held.
    private func startLoad(_ id: ChunkID, _ candidates: [HostPort], in s: inout State, prefetch: Bool) -> Load {
        if let load = s.loading[id] {
            precondition(!prefetch, "a prefetch only starts a load that is not running")
            return load
        }
        // The task waits for the lock we hold before it can finish, so the entry below is in
        // place before the task removes it.
        let load = Load {
            let result: Result<ByteBuffer, CairnError>
            do throws(CairnError) {
                result = .success(try await self.fetcher(id, candidates))
            } catch {
                result = .failure(error)
            }
            self.state.withLock { s in
                s.loading[id] = nil
                if prefetch { s.prefetchesInflight -= 1 }
                if case .success(let bytes) = result { s.cached.insert(id, bytes) }
            }
            return result
        }
        s.loading[id] = load
        return load
    }
}

/// Chunks by recency in a doubly linked list threaded through a dictionary: O(1) lookup,
/// touch, insert and eviction, evicting the least recently used until the bytes fit.
struct LeastRecentlyUsed {
    private struct Node {
        var bytes: ByteBuffer
        var older: ChunkID?
        var newer: ChunkID?
    }

    let bytesMax: Int
    private var nodes: [ChunkID: Node] = [:]
    private var newest: ChunkID?
    private var oldest: ChunkID?
    private(set) var bytes = 0

    init(bytesMax: Int) { self.bytesMax = bytesMax }

    var count: Int { nodes.count }

    func contains(_ id: ChunkID) -> Bool { nodes[id] != nil }

    /// The bytes of `id`, which becomes the most recently used.
    mutating func get(_ id: ChunkID) -> ByteBuffer? {
        guard let node = nodes[id] else { return nil }
        unlink(id)
        pushNewest(id, node.bytes)
        return node.bytes
    }

    /// Adds a chunk as the most recently used and evicts from the oldest end until the total is
    /// within `bytesMax`. A chunk larger than `bytesMax` is not kept.
    mutating func insert(_ id: ChunkID, _ chunk: ByteBuffer) {
        if let node = nodes[id] {
            unlink(id)
            pushNewest(id, node.bytes)
            return
        }
        guard chunk.readableBytes <= bytesMax else { return }
        pushNewest(id, chunk)
        while bytes > bytesMax, let victim = oldest { unlink(victim) }
        assert(bytes <= bytesMax)
    }

    /// IDs from most to least recently used (tests).
    var idsByRecency: [ChunkID] {
        var out: [ChunkID] = []
        var cursor = newest
        while let id = cursor {
            out.append(id)
            cursor = nodes[id]!.older
        }
        return out
    }

    private mutating func pushNewest(_ id: ChunkID, _ chunk: ByteBuffer) {
        nodes[id] = Node(bytes: chunk, older: newest, newer: nil)
        if let newest { nodes[newest]!.newer = id }
        newest = id
        if oldest == nil { oldest = id }
        bytes += chunk.readableBytes
    }

    private mutating func unlink(_ id: ChunkID) {
        let node = nodes.removeValue(forKey: id)!
        if let older = node.older { nodes[older]!.newer = node.newer } else { oldest = node.newer }
        if let newer = node.newer { nodes[newer]!.older = node.older } else { newest = node.older }
        bytes -= node.bytes.readableBytes
    }
}
