import CairnCore
import CairnTestSupport
import ChunkProtocol
import ChunkServer
import ChunkTransfer
import NIOCore
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// In-process chunkservers on free loopback ports, each on its own directory.
struct TestCluster: Sendable {
    let servers: [ChunkServer]
    let addresses: [HostPort]
    let root: FilePath

    /// The file holding chunk `id` on server `index`.
    func chunkFile(_ index: Int, _ id: ChunkID) -> FilePath {
        root.appending("s\(index)").appending("chunks").appending(String(id.hex.prefix(2))).appending(id.hex)
    }

    /// Stops server `index` and waits until its port refuses connections.
    func stop(_ index: Int) async throws {
        servers[index].shutDown()
        let address = addresses[index]
        let refused = await eventually {
            guard let client = try? await ChunkClient.connect(to: address, connectTimeout: .milliseconds(200)) else { return true }
            await client.close()
            return false
        }
        #expect(refused, "server \(index) still accepts connections")
    }

    /// Whether server `index` has chunk `id`, asked over a fresh connection.
    func has(_ index: Int, _ id: ChunkID) async throws -> Bool {
        let client = try await ChunkClient.connect(to: addresses[index])
        let present = try await client.has([id])[0]
        await client.close()
        return present
    }
}

func withCluster(_ count: Int, _ body: (TestCluster) async throws -> Void) async throws {
    let dir = TestDirectory("transfer")
    var servers: [ChunkServer] = []
    for index in 0..<count {
        let directory = dir.path.appending("s\(index)")
        try FileSystemCalls.mkdir(directory)
        let configuration = ChunkServerConfiguration(
            listen: HostPort(host: "127.0.0.1", port: 0),
            store: .init(directory: directory, limits: ChunkLimits(), reserveBytes: 0),
            scrubBytesPerSecond: 0, scrubPassInterval: .seconds(3600), ioThreads: 2)
        servers.append(try ChunkServer(configuration: configuration, logger: quietLogger()))
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        for server in servers { group.addTask { try await server.run() } }
        var addresses: [HostPort] = []
        for server in servers {
            guard let address = await server.boundAddress(), let port = address.port else {
                Issue.record("server did not bind")
                for server in servers { server.shutDown() }
                return
            }
            addresses.append(HostPort(host: "127.0.0.1", port: port))
        }
        do {
            try await body(TestCluster(servers: servers, addresses: addresses, root: dir.path))
        } catch {
            for server in servers { server.shutDown() }
            throw error
        }
        for server in servers { server.shutDown() }
        try await group.waitForAll()
    }
}

func withTestPool<T>(connectionsMax: Int = 64, _ body: (ChunkserverPool) async throws -> T) async throws -> T {
    var configuration = ChunkserverPoolConfiguration()
    configuration.connectionsMax = connectionsMax
    configuration.dialTimeout = .seconds(1)
    configuration.requestTimeout = .seconds(10)
    return try await ChunkserverPool.withPool(configuration: configuration, logger: quietLogger(), body)
}

/// Counts fetches.
final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

/// Collects the failed replicas a fetch reports.
final class Reports: Sendable {
    private let list = Mutex<[(HostPort, CairnError.Code)]>([])
    func add(_ server: HostPort, _ error: CairnError) { list.withLock { $0.append((server, error.code)) } }
    var all: [(HostPort, CairnError.Code)] { list.withLock { $0 } }
}

@Suite struct ChunkTransferTests {
    @Test func uploadStoresOnTheFirstReplicasCandidates() async throws {
        try await withCluster(4) { cluster in
            try await withTestPool { pool in
                let (id, bytes) = testChunk(1 << 20, seed: 1)
                let stored = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 3)
                #expect(stored == Array(cluster.addresses.prefix(3)))
                for index in 0..<3 { #expect(try await cluster.has(index, id)) }
                let onFourth = try await cluster.has(3, id)
                #expect(!onFourth)
                #expect(pool.stats.putsTotal == 3 && pool.stats.putsSkippedTotal == 0)
                #expect(try await pool.fetch(id, candidates: cluster.addresses) == bytes)
                // One connection per server, reused.
                #expect(pool.connectedServers.count == 3)
                #expect(pool.stats.dialsTotal == 3)
            }
        }
    }

    @Test func uploadGivesADownOwnersReplicaToTheNextCandidate() async throws {
        try await withCluster(4) { cluster in
            try await withTestPool { pool in
                // Connect to every server first, so the pool holds a connection that then dies.
                let (warm, warmBytes) = testChunk(1000, seed: 2)
                _ = try await pool.upload(warm, bytes: warmBytes, candidates: cluster.addresses, replicas: 4)
                try await cluster.stop(1)
                let (id, bytes) = testChunk(1 << 20, seed: 3)
                let stored = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 3)
                #expect(stored == [cluster.addresses[0], cluster.addresses[2], cluster.addresses[3]])
                for index in [0, 2, 3] { #expect(try await cluster.has(index, id)) }

                // Fewer reachable candidates than replicas: an error that names the failures.
                try await cluster.stop(2)
                let (other, otherBytes) = testChunk(5000, seed: 4)
                do throws(CairnError) {
                    _ = try await pool.upload(other, bytes: otherBytes, candidates: cluster.addresses, replicas: 3)
                    Issue.record("an upload to 2 live servers claimed 3 replicas")
                } catch {
                    #expect(error.code == .unavailable)
                    #expect(error.message.contains("\(cluster.addresses[1])") && error.message.contains("\(cluster.addresses[2])"))
                    #expect(error.message.contains("2 of 3"))
                }
                // The caller asks for what the live servers can hold.
                let stored2 = try await pool.upload(other, bytes: otherBytes, candidates: cluster.addresses, replicas: 2)
                #expect(stored2 == [cluster.addresses[0], cluster.addresses[3]])
            }
        }
    }

    @Test func uploadSkipsServersThatAlreadyHaveTheChunk() async throws {
        try await withCluster(3) { cluster in
            try await withTestPool { pool in
                let (id, bytes) = testChunk(1 << 20, seed: 5)
                _ = try await pool.upload(id, bytes: bytes, candidates: [cluster.addresses[1]], replicas: 1)
                #expect(pool.stats.putsTotal == 1)
                let stored = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 3)
                #expect(stored == cluster.addresses)
                #expect(pool.stats.putsTotal == 3 && pool.stats.putsSkippedTotal == 1)
                _ = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 3)
                #expect(pool.stats.putsTotal == 3 && pool.stats.putsSkippedTotal == 4)
                // A small chunk is sent without asking first (the round trip would cost more
                // than its bytes); a server that has it already keeps its one copy.
                let (small, smallBytes) = testChunk(ChunkserverPool.dedupCheckBytesMin - 1, seed: 6)
                _ = try await pool.upload(small, bytes: smallBytes, candidates: cluster.addresses, replicas: 3)
                _ = try await pool.upload(small, bytes: smallBytes, candidates: cluster.addresses, replicas: 3)
                #expect(pool.stats.putsTotal == 9 && pool.stats.putsSkippedTotal == 4)
                for index in 0..<3 { #expect(try await cluster.has(index, small)) }
            }
        }
    }

    @Test func uploadOfBytesThatDoNotMatchTheIDFailsWithoutTryingEveryServer() async throws {
        try await withCluster(3) { cluster in
            try await withTestPool { pool in
                let (id, _) = testChunk(1000, seed: 6)
                let (_, wrong) = testChunk(1000, seed: 7)
                do throws(CairnError) {
                    _ = try await pool.upload(id, bytes: wrong, candidates: cluster.addresses, replicas: 1)
                    Issue.record("wrong bytes were stored")
                } catch {
                    #expect(error.code == .hashMismatch)
                }
                let onFirst = try await cluster.has(0, id)
                #expect(!onFirst)
                let onSecond = try await cluster.has(1, id)
                #expect(!onSecond)
            }
        }
    }

    @Test func fetchSkipsACorruptReplicaAndReportsIt() async throws {
        try await withCluster(3) { cluster in
            try await withTestPool { pool in
                let (id, bytes) = testChunk(1 << 20, seed: 8)
                _ = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 3)
                try flipByte(in: cluster.chunkFile(0, id), at: 4321)
                let reports = Reports()
                let fetched = try await pool.fetch(id, candidates: cluster.addresses, onBadReplica: reports.add)
                #expect(fetched == bytes)
                #expect(reports.all.map(\.0) == [cluster.addresses[0]])
                #expect(reports.all.map(\.1) == [.corrupt])
                // The server quarantined its copy: the next reader finds it missing there.
                let again = Reports()
                #expect(try await pool.fetch(id, candidates: cluster.addresses, onBadReplica: again.add) == bytes)
                #expect(again.all.map(\.1) == [.notFound])
            }
        }
    }

    /// Range reads: the right bytes for ranges inside, across and at the ends of blocks (the
    /// chunk is a whole number of blocks plus a tail); a replica with a flipped byte in a block a
    /// range touches is skipped and reported, one whose damage lies elsewhere still serves it.
    @Test func fetchRangeReturnsCheckedBytesAndSkipsACorruptReplica() async throws {
        try await withCluster(2) { cluster in
            try await withTestPool { pool in
                let (id, chunk) = testChunk((1 << 20) + 12_345, seed: 11)
                let bytes = Array(chunk.readableBytesView)
                _ = try await pool.upload(id, bytes: chunk, candidates: cluster.addresses, replicas: 2)
                let block = ChunkLimits().checksumBlockBytes
                for (offset, length) in [(0, 1), (0, 4096), (block - 10, 20), (block, block), (3 * block + 7, 2 * block + 100),
                                         (bytes.count - 5, 5), (bytes.count - 12_345, 12_345), (0, bytes.count)] {
                    let got = try await pool.fetchRange(id, offset: offset, length: length, candidates: cluster.addresses)
                    #expect(got == ByteBuffer(bytes: bytes[offset..<(offset + length)]), "range \(offset)+\(length)")
                }
                try flipByte(in: cluster.chunkFile(0, id), at: Int64(5 * block + 3))
                let clean = Reports()
                #expect(try await pool.fetchRange(id, offset: 0, length: 4096, candidates: cluster.addresses, onBadReplica: clean.add)
                        == ByteBuffer(bytes: bytes[0..<4096]))
                #expect(clean.all.isEmpty)
                let reports = Reports()
                #expect(try await pool.fetchRange(id, offset: 5 * block, length: 4096, candidates: cluster.addresses, onBadReplica: reports.add)
                        == ByteBuffer(bytes: bytes[(5 * block)..<(5 * block + 4096)]))
                #expect(reports.all.map(\.0) == [cluster.addresses[0]])
                #expect(reports.all.map(\.1) == [.corrupt])
            }
        }
    }

    /// A jumping reader's read of an uncached chunk fetches only its range and caches nothing;
    /// once the chunk is cached, every read is served from it.
    @Test func rangeReadsOfUncachedChunksFetchOnlyTheirBlocks() async throws {
        try await withCluster(1) { cluster in
            try await withTestPool { pool in
                let (id, chunk) = testChunk(1 << 20, seed: 12)
                let bytes = Array(chunk.readableBytesView)
                _ = try await pool.upload(id, bytes: chunk, candidates: cluster.addresses, replicas: 1)
                let wholes = Counter()
                let ranges = Counter()
                let cache = ChunkCache(bytesMax: 8 << 20, fetch: { id, candidates throws(CairnError) in
                    wholes.increment()
                    return try await pool.fetch(id, candidates: candidates)
                }, fetchRange: { id, offset, length, candidates throws(CairnError) in
                    ranges.increment()
                    return try await pool.fetchRange(id, offset: offset, length: length, candidates: candidates)
                })
                #expect(try await cache.read(id, offset: 300_000, length: 4096, candidates: cluster.addresses, wholeChunk: false)
                        == ByteBuffer(bytes: bytes[300_000..<304_096]))
                #expect(ranges.value == 1 && wholes.value == 0 && !cache.contains(id))
                #expect(try await cache.read(id, offset: 0, length: 10, candidates: cluster.addresses) == ByteBuffer(bytes: bytes[0..<10]))
                #expect(wholes.value == 1 && cache.contains(id))
                #expect(try await cache.read(id, offset: 500_000, length: 4096, candidates: cluster.addresses, wholeChunk: false)
                        == ByteBuffer(bytes: bytes[500_000..<504_096]))
                #expect(ranges.value == 1 && wholes.value == 1)
                #expect(cache.stats.rangeReadsTotal == 1)
            }
        }
    }

    @Test func fetchSkipsMissingAndUnreachableReplicas() async throws {
        try await withCluster(3) { cluster in
            try await withTestPool { pool in
                let (id, bytes) = testChunk(300_000, seed: 9)
                _ = try await pool.upload(id, bytes: bytes, candidates: [cluster.addresses[2]], replicas: 1)
                let reports = Reports()
                #expect(try await pool.fetch(id, candidates: cluster.addresses, onBadReplica: reports.add) == bytes)
                #expect(reports.all.map(\.0) == [cluster.addresses[0], cluster.addresses[1]])
                #expect(reports.all.map(\.1) == [.notFound, .notFound])

                let (absent, _) = testChunk(10, seed: 10)
                do throws(CairnError) {
                    _ = try await pool.fetch(absent, candidates: cluster.addresses)
                    Issue.record("fetched a chunk nobody has")
                } catch {
                    #expect(error.code == .notFound)
                }
                try await cluster.stop(2)
                let down = Reports()
                do throws(CairnError) {
                    _ = try await pool.fetch(id, candidates: cluster.addresses, onBadReplica: down.add)
                    Issue.record("fetched a chunk whose only server is down")
                } catch {
                    #expect(error.code == .unavailable)
                }
                #expect(down.all.map(\.1) == [.notFound, .notFound, .unavailable])
            }
        }
    }

    @Test func thePoolClosesTheLeastRecentlyUsedIdleConnectionAtItsBound() async throws {
        try await withCluster(3) { cluster in
            try await withTestPool(connectionsMax: 2) { pool in
                for (index, address) in cluster.addresses.enumerated() {
                    let (id, bytes) = testChunk(1000, seed: UInt64(20 + index))
                    _ = try await pool.upload(id, bytes: bytes, candidates: [address], replicas: 1)
                }
                #expect(pool.connectedServers == [cluster.addresses[1], cluster.addresses[2]].sorted { $0.description < $1.description })
                #expect(pool.stats.dialsTotal == 3)
            }
            // A closed pool refuses work.
            let pool = try ChunkserverPool(logger: quietLogger())
            await pool.close()
            let (id, _) = testChunk(10, seed: 30)
            await #expect(throws: CairnError.self) { _ = try await pool.fetch(id, candidates: cluster.addresses) }
        }
    }

    /// A server that takes the connection and never answers: the request fails `.unavailable`
    /// at its deadline, the connection is closed and dropped, and the next request dials anew.
    @Test func aRequestToASilentServerFailsAtItsDeadline() async throws {
        // A listening socket nobody accepts on: the kernel completes the handshake and buffers
        // the request, and no answer ever comes.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(listener, raw, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, raw, &length) == 0
            }
        }
        #expect(bound)
        let silent = HostPort(host: "127.0.0.1", port: Int(UInt16(bigEndian: address.sin_port)))
        var configuration = ChunkserverPoolConfiguration()
        configuration.requestTimeout = .milliseconds(300)
        try await ChunkserverPool.withPool(configuration: configuration, logger: quietLogger()) { pool in
            let (id, _) = testChunk(1000, seed: 40)
            for attempt in 1...2 {
                let started = ContinuousClock.now
                do {
                    _ = try await pool.withClient(silent) { client throws(CairnError) in try await client.get(id) }
                    Issue.record("a silent server answered")
                } catch let error as CairnError {
                    #expect(error.code == .unavailable && error.message.contains("did not answer"), "\(error)")
                }
                let waited = ContinuousClock.now - started
                #expect(waited >= .milliseconds(300) && waited < .seconds(5), "waited \(waited)")
                #expect(pool.connectedServers.isEmpty, "the timed-out connection is dropped")
                #expect(pool.stats.dialsTotal == attempt, "each request after a timeout dials again")
            }
        }
    }

    @Test func theCacheEvictsTheLeastRecentlyUsedChunksByBytes() async throws {
        try await withCluster(2) { cluster in
            try await withTestPool { pool in
                let chunks = (0..<4).map { testChunk(100_000, seed: UInt64(40 + $0)) }
                for (id, bytes) in chunks { _ = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 2) }
                let fetches = Counter()
                let cache = ChunkCache(bytesMax: 300_000) { id, candidates throws(CairnError) in
                    fetches.increment()
                    return try await pool.fetch(id, candidates: candidates)
                }
                for (id, bytes) in chunks.prefix(3) { #expect(try await cache.chunk(id, candidates: cluster.addresses) == bytes) }
                #expect(cache.stats.bytes == 300_000 && cache.stats.chunks == 3)
                // Touch chunk 0, so chunk 1 is the least recently used when chunk 3 arrives.
                #expect(try await cache.chunk(chunks[0].0, candidates: cluster.addresses) == chunks[0].1)
                #expect(try await cache.chunk(chunks[3].0, candidates: cluster.addresses) == chunks[3].1)
                #expect(fetches.value == 4)
                #expect(cache.contains(chunks[0].0) && !cache.contains(chunks[1].0))
                #expect(cache.contains(chunks[2].0) && cache.contains(chunks[3].0))
                #expect(cache.stats.bytes == 300_000 && cache.stats.hitsTotal == 1 && cache.stats.missesTotal == 4)
                // A range is cut from the verified whole chunk.
                let slice = try await cache.read(chunks[2].0, offset: 99_990, length: 100, candidates: cluster.addresses)
                #expect(slice == chunks[2].1.getSlice(at: 99_990, length: 10))
                // A chunk larger than the whole cache is returned but not kept.
                let small = ChunkCache(pool: pool, bytesMax: 50_000)
                #expect(try await small.chunk(chunks[0].0, candidates: cluster.addresses) == chunks[0].1)
                #expect(small.stats.chunks == 0 && small.stats.bytes == 0)
            }
        }
    }

    @Test func concurrentMissesForOneChunkShareOneFetch() async throws {
        try await withCluster(2) { cluster in
            try await withTestPool { pool in
                let (id, bytes) = testChunk(1 << 20, seed: 50)
                _ = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 2)
                let fetches = Counter()
                let cache = ChunkCache(bytesMax: 8 << 20) { id, candidates throws(CairnError) in
                    fetches.increment()
                    // Long enough that every reader below misses while this fetch runs.
                    try? await Task.sleep(for: .milliseconds(200))
                    return try await pool.fetch(id, candidates: candidates)
                }
                try await withThrowingTaskGroup(of: ByteBuffer.self) { group in
                    for _ in 0..<16 { group.addTask { try await cache.chunk(id, candidates: cluster.addresses) } }
                    for try await fetched in group { #expect(fetched == bytes) }
                }
                #expect(fetches.value == 1)
                #expect(cache.stats.loadsInflight == 0 && cache.stats.chunks == 1)
                // A failed fetch is shared too, and not cached.
                let (absent, _) = testChunk(10, seed: 51)
                await withTaskGroup(of: CairnError.Code?.self) { group in
                    for _ in 0..<4 { group.addTask { await errorCode { _ = try await cache.chunk(absent, candidates: cluster.addresses) } } }
                    for await code in group { #expect(code == .notFound) }
                }
                #expect(fetches.value == 2)
                #expect(!cache.contains(absent))
            }
        }
    }

    @Test func prefetchesAreBoundedAndFillTheCache() async throws {
        try await withCluster(2) { cluster in
            try await withTestPool { pool in
                let chunks = (0..<3).map { testChunk(200_000, seed: UInt64(60 + $0)) }
                for (id, bytes) in chunks { _ = try await pool.upload(id, bytes: bytes, candidates: cluster.addresses, replicas: 1) }
                let fetches = Counter()
                let cache = ChunkCache(bytesMax: 8 << 20, prefetchesInflightMax: 1) { id, candidates throws(CairnError) in
                    fetches.increment()
                    try? await Task.sleep(for: .milliseconds(200))
                    return try await pool.fetch(id, candidates: candidates)
                }
                #expect(cache.prefetch(chunks[0].0, candidates: cluster.addresses))
                // Already in flight, and the bound of one is reached.
                #expect(!cache.prefetch(chunks[0].0, candidates: cluster.addresses))
                #expect(!cache.prefetch(chunks[1].0, candidates: cluster.addresses))
                // A reader arriving during the prefetch joins it.
                #expect(try await cache.chunk(chunks[0].0, candidates: cluster.addresses) == chunks[0].1)
                #expect(await eventually { cache.stats.prefetchesInflight == 0 })
                #expect(cache.prefetch(chunks[1].0, candidates: cluster.addresses))
                #expect(await eventually { cache.contains(chunks[1].0) })
                #expect(!cache.prefetch(chunks[1].0, candidates: cluster.addresses))
                #expect(try await cache.chunk(chunks[1].0, candidates: cluster.addresses) == chunks[1].1)
                #expect(fetches.value == 2)
            }
        }
    }
}
