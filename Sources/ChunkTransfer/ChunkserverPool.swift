import CairnCore
import ChunkProtocol
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The bounds of a client's chunk connections, in one place an operator can read.
public struct ChunkserverPoolConfiguration: Sendable, Equatable {
    /// The frame and chunk limits the connections are opened with.
    public var limits = ChunkLimits()
    /// Chunkservers with an open (or opening) connection at once. Past it, the least recently
    /// used idle connection is closed; if every connection is in use, the request fails `.busy`.
    public var connectionsMax = 64
    /// Requests pipelined on one connection before callers wait (`ChunkClient`).
    public var requestsInflightMax = ChunkClient.requestsInflightMaxDefault
    /// How long dialling a chunkserver may take before it counts as unreachable.
    public var dialTimeout: Duration = .seconds(2)
    /// How long one request (a whole-chunk put or get) may take. A server that does not answer
    /// in time has its connection closed, which fails every request on it.
    public var requestTimeout: Duration = .seconds(30)

    public init() {}

    /// Throws `invalidArgument` if the bounds are inconsistent.
    public func validate() throws(CairnError) {
        func check(_ ok: Bool, _ what: String) throws(CairnError) {
            if !ok { throw CairnError(.invalidArgument, "invalid limit: \(what)") }
        }
        try limits.validate()
        try check(connectionsMax > 0 && connectionsMax <= 65_536, "connectionsMax must be in 1...65536")
        try check(requestsInflightMax > 0 && requestsInflightMax <= 4096, "requestsInflightMax must be in 1...4096")
        try check(dialTimeout > .zero, "dialTimeout must be positive")
        try check(requestTimeout > .zero, "requestTimeout must be positive")
    }
}

/// Counters of what the pool's transfers did (for tests, `cairn status` and benchmarks).
public struct ChunkTransferStats: Sendable, Equatable {
    /// Connections dialled successfully / unsuccessfully.
    public var dialsTotal = 0
    public var dialFailuresTotal = 0
    /// Replica puts that sent the chunk's bytes.
    public var putsTotal = 0
    /// Replica puts skipped because the server already had the chunk (`has` said so; asked
    /// only for chunks of at least `dedupCheckBytesMin`).
    public var putsSkippedTotal = 0
    /// Whole-chunk gets that returned verified bytes.
    public var getsTotal = 0
}

/// One connection per chunkserver address, dialled lazily on first use, shared by every
/// request to that server (a `ChunkClient` pipelines), and re-dialled on the next use after it
/// fails. At most `connectionsMax` servers have a connection at once.
///
/// Its lifetime is scoped: `withPool { }`, or `close()` when done.
public final class ChunkserverPool: Sendable {
    public let configuration: ChunkserverPoolConfiguration
    /// Where the connections live (their event loops).
    public let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    private let state = Mutex(State())
    private let counters = Mutex(ChunkTransferStats())

    private enum Connection {
        case dialing(Task<Result<ChunkClient, CairnError>, Never>)
        case open(ChunkClient)
    }

    private struct Entry {
        var connection: Connection
        /// Identifies this connection, so that a late completion or failure report about an
        /// older one leaves its replacement alone.
        let generation: UInt64
        /// Requests currently using it: an idle connection (0) may be evicted.
        var leases: Int
        var lastUse: UInt64
    }

    private struct State {
        var entries: [HostPort: Entry] = [:]
        var nextGeneration: UInt64 = 1
        /// A logical clock for least-recently-used eviction (no wall clock in the decision).
        var useTick: UInt64 = 0
        var closed = false
    }

    /// - Throws: `invalidArgument` for an inconsistent configuration.
    public init(configuration: ChunkserverPoolConfiguration = ChunkserverPoolConfiguration(),
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) throws(CairnError) {
        try configuration.validate()
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// Runs `body` with a pool that is closed when it returns or throws.
    public static func withPool<T>(configuration: ChunkserverPoolConfiguration = ChunkserverPoolConfiguration(),
                                   eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
                                   _ body: (ChunkserverPool) async throws -> T) async throws -> T {
        let pool = try ChunkserverPool(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
        return try await withAsyncCleanup { try await body(pool) } cleanup: { await pool.close() }
    }

    public var stats: ChunkTransferStats { counters.withLock { $0 } }

    func count(_ update: (inout ChunkTransferStats) -> Void) { counters.withLock { update(&$0) } }

    /// Servers with an open or opening connection.
    public var connectedServers: [HostPort] {
        state.withLock { s in s.entries.keys.sorted { $0.description < $1.description } }
    }

    /// Closes every connection; requests in flight fail with `.unavailable`, and so does every
    /// later use of the pool.
    public func close() async {
        let entries = state.withLock { s -> [Entry] in
            s.closed = true
            let all = Array(s.entries.values)
            s.entries.removeAll()
            return all
        }
        for entry in entries {
            switch entry.connection {
            case .open(let client):
                await client.close()
            case .dialing(let task):
                if case .success(let client) = await task.value { await client.close() }
            }
        }
    }

    /// Runs `body` with the connection to `server`, dialling it if needed.
    ///
    /// If `body` fails and the connection is no longer usable, the connection is dropped, so the
    /// next use dials again. If `body` takes longer than `timeout` (default
    /// `configuration.requestTimeout`), the connection is closed and dropped, and this throws
    /// `.unavailable`.
    /// - Throws: `.unavailable` (cannot dial, connection failed, timed out, pool closed), `.busy`
    ///   (every one of `connectionsMax` connections is in use), or what `body` throws.
    public func withClient<T: Sendable>(_ server: HostPort, timeout: Duration? = nil,
                                        _ body: (ChunkClient) async throws(CairnError) -> T) async throws(CairnError) -> T {
        let (client, generation) = try await lease(server)
        defer { release(server, generation) }
        let timeout = timeout ?? configuration.requestTimeout
        let deadline = client.deadline(after: timeout)
        defer { deadline.cancel() }
        do throws(CairnError) {
            return try await body(client)
        } catch {
            if deadline.hasExpired {
                await drop(server, generation)
                throw CairnError(.unavailable, "chunkserver \(server) did not answer within \(timeout)")
            }
            if !client.isConnected { await drop(server, generation) }
            throw error
        }
    }

    // MARK: Connections

    private enum LeaseAction {
        case use(ChunkClient, UInt64)
        case wait(Task<Result<ChunkClient, CairnError>, Never>, UInt64)
        case fail(CairnError)
    }

    private func lease(_ server: HostPort) async throws(CairnError) -> (ChunkClient, UInt64) {
        var evicted: [ChunkClient] = []
        let action = state.withLock { s -> LeaseAction in
            if s.closed { return .fail(CairnError(.unavailable, "the chunkserver pool is closed")) }
            s.useTick += 1
            if var entry = s.entries[server] {
                switch entry.connection {
                case .open(let client) where client.isConnected:
                    entry.leases += 1
                    entry.lastUse = s.useTick
                    s.entries[server] = entry
                    return .use(client, entry.generation)
                case .dialing(let task):
                    entry.leases += 1
                    entry.lastUse = s.useTick
                    s.entries[server] = entry
                    return .wait(task, entry.generation)
                case .open(let client):
                    // Failed since it was last used: drop it and dial again below.
                    evicted.append(client)
                    s.entries[server] = nil
                }
            }
            if s.entries.count >= configuration.connectionsMax {
                let idle = s.entries.filter { $0.value.leases == 0 }.min { $0.value.lastUse < $1.value.lastUse }
                guard let (victim, entry) = idle else {
                    return .fail(CairnError(.busy, "all \(configuration.connectionsMax) chunkserver connections are in use"))
                }
                s.entries[victim] = nil
                if case .open(let client) = entry.connection { evicted.append(client) }
                // An idle entry is never dialing: a dial holds the lease of the caller that started it.
            }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let configuration = self.configuration
            let group = self.eventLoopGroup
            let task = Task { () -> Result<ChunkClient, CairnError> in
                do throws(CairnError) {
                    return .success(try await ChunkClient.connect(
                        to: server, limits: configuration.limits, requestsInflightMax: configuration.requestsInflightMax,
                        connectTimeout: configuration.dialTimeout, group: group))
                } catch {
                    return .failure(error)
                }
            }
            s.entries[server] = Entry(connection: .dialing(task), generation: generation, leases: 1, lastUse: s.useTick)
            return .wait(task, generation)
        }
        for client in evicted { await client.close() }
        switch action {
        case .use(let client, let generation):
            return (client, generation)
        case .fail(let error):
            throw error
        case .wait(let task, let generation):
            let result = await task.value
            // Every waiter on the dial records its outcome; only the first changes the entry.
            let closed = state.withLock { s -> Bool in
                if var entry = s.entries[server], entry.generation == generation, case .dialing = entry.connection {
                    switch result {
                    case .success(let client):
                        entry.connection = .open(client)
                        s.entries[server] = entry
                        counters.withLock { $0.dialsTotal += 1 }
                    case .failure:
                        s.entries[server] = nil
                        counters.withLock { $0.dialFailuresTotal += 1 }
                    }
                }
                return s.closed
            }
            switch result {
            case .success(let client):
                if closed {
                    await client.close()
                    throw CairnError(.unavailable, "the chunkserver pool is closed")
                }
                return (client, generation)
            case .failure(let error):
                logger.debug("cannot dial chunkserver", metadata: ["server": "\(server)", "error": "\(error)"])
                throw error
            }
        }
    }

    private func release(_ server: HostPort, _ generation: UInt64) {
        state.withLock { s in
            guard var entry = s.entries[server], entry.generation == generation else { return }
            precondition(entry.leases > 0, "connection released more often than leased")
            entry.leases -= 1
            s.entries[server] = entry
        }
    }

    /// Forgets a failed connection (if it is still the current one for `server`) and closes it.
    private func drop(_ server: HostPort, _ generation: UInt64) async {
        let client = state.withLock { s -> ChunkClient? in
            guard let entry = s.entries[server], entry.generation == generation,
                  case .open(let client) = entry.connection else { return nil }
            s.entries[server] = nil
            return client
        }
        if let client {
            logger.debug("dropping failed chunkserver connection", metadata: ["server": "\(server)"])
            await client.close()
        }
    }
}
