import CairnCore
import ChunkProtocol
import NIOCore

extension ChunkserverPool {
    /// Stores a chunk on `replicas` servers, taken from `candidates` in order.
    ///
    /// The first `replicas` candidates (the chunk's owners, as the caller computed them from the
    /// ring) are written in parallel. When one fails — refused connection, error, timeout — the
    /// next unused candidate takes that replica, so a write goes on while at least `replicas`
    /// candidates are reachable. A server that already `has` the chunk is not sent its bytes
    /// (dedup): one small round trip before each replica's put of a chunk of at least
    /// `dedupCheckBytesMin` bytes; a smaller one is sent at once (the round trip would cost
    /// more than its bytes, and a server stores a chunk it already has only once). Measured on loopback (debug
    /// build, one server, 4 MiB chunks, 20 rounds): has 2.0 ms, a fresh put 21.7 ms, a put of
    /// a chunk already stored 6.8 ms (the server still receives all 4 MiB). So `has` adds
    /// about a tenth to a new chunk and saves two thirds on loopback for a duplicate — far more
    /// on a real network, where the duplicate's 4 MiB is the cost. A server
    /// acknowledges a put only after its chunk file and directory are fsynced, so every server
    /// returned holds the chunk durably.
    ///
    /// - Parameters:
    ///   - candidates: distinct servers, owners first, then the fallbacks in ring order.
    ///   - replicas: how many copies must be stored (at least 1); the caller passes
    ///     `min(R, live servers)`.
    /// - Returns: the servers that now hold the chunk, in candidate order (exactly `replicas`).
    /// - Throws: `.hashMismatch` if the bytes do not hash to `id` (no other server is tried);
    ///   `.unavailable` if fewer than `replicas` candidates stored it, naming every failure.
    /// Chunks this large or larger are only sent to a server that does not `has` them already.
    public static let dedupCheckBytesMin = 256 << 10

    public func upload(_ id: ChunkID, bytes: ByteBuffer, candidates: [HostPort], replicas: Int) async throws(CairnError) -> [HostPort] {
        precondition(replicas >= 1, "an upload needs at least one replica")
        precondition(Set(candidates).count == candidates.count, "upload candidates must be distinct")
        precondition(bytes.readableBytes > 0 && bytes.readableBytes <= configuration.limits.chunkBytesMax,
                     "a chunk is 1...chunkBytesMax bytes")
        var stored: [Int] = []
        var failures: [(server: HostPort, error: CairnError)] = []
        var fatal: CairnError?
        await withTaskGroup(of: (index: Int, error: CairnError?).self) { group in
            var next = 0
            func store(_ index: Int) -> @Sendable () async -> (index: Int, error: CairnError?) {
                let server = candidates[index]
                return {
                    do throws(CairnError) {
                        let skipped = try await self.withClient(server) { client throws(CairnError) -> Bool in
                            if bytes.readableBytes >= Self.dedupCheckBytesMin, try await client.has([id]) == [true] { return true }
                            try await client.put(id, bytes: bytes)
                            return false
                        }
                        self.count { skipped ? ($0.putsSkippedTotal += 1) : ($0.putsTotal += 1) }
                        return (index, nil)
                    } catch {
                        return (index, error)
                    }
                }
            }
            while next < min(replicas, candidates.count) {
                group.addTask(operation: store(next))
                next += 1
            }
            while let (index, error) = await group.next() {
                guard let error else {
                    stored.append(index)
                    continue
                }
                failures.append((candidates[index], error))
                if error.code == .hashMismatch {
                    // The bytes are wrong, not the server: every other server would refuse them too.
                    fatal = error
                    group.cancelAll()
                    continue
                }
                if fatal == nil && next < candidates.count {
                    logger.debug("replica put failed; trying the next candidate",
                                 metadata: ["chunk": "\(id)", "server": "\(candidates[index])", "error": "\(error)"])
                    group.addTask(operation: store(next))
                    next += 1
                }
            }
        }
        if let fatal { throw fatal }
        guard stored.count >= replicas else {
            let reasons = failures.map { "\($0.server): \($0.error)" }.joined(separator: "; ")
            throw CairnError(.unavailable, "chunk \(id) stored on \(stored.count) of \(replicas) replicas "
                + "(\(candidates.count) candidates): \(reasons.isEmpty ? "too few candidates" : reasons)")
        }
        return stored.sorted().map { candidates[$0] }
    }
}
