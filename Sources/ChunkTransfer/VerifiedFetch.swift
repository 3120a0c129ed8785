import CairnCore
import ChunkProtocol
import NIOCore

extension ChunkserverPool {
    /// Reads a whole chunk from the first candidate that returns bytes hashing to `id`.
    ///
    /// Every byte returned has been checked against `id` with SHA-256 on this side
    /// (`ChunkClient.get` hashes what arrives before returning it). A candidate that fails —
    /// the chunk is missing (`.notFound`), corrupt (`.corrupt`: the server's block checksums
    /// caught it and it quarantined the copy; or the bytes arrived hashing to something else),
    /// or the server is unreachable or errs (`.unavailable`, `.io`, …) — is reported through
    /// `onBadReplica` and the next candidate is tried. The caller decides by the error's
    /// code which reports go to the metadata service (`.notFound` and `.corrupt` mean that
    /// replica needs repair; `.unavailable` only that the server is down).
    ///
    /// `fetchRange` reads part of a chunk instead, checked block by block against the
    /// CRC-32Cs that travel with it (`ChunkClient.readChecked`).
    ///
    /// - Parameter candidates: servers to try in order: owners in ring order, then the previous
    ///   epoch's owners, then any live server.
    /// - Throws: `.notFound` if every candidate answered that it lacks the chunk;
    ///   `.unavailable` otherwise when no candidate returned it, naming every failure.
    public func fetch(_ id: ChunkID, candidates: [HostPort],
                      onBadReplica: (HostPort, CairnError) -> Void = { _, _ in }) async throws(CairnError) -> ByteBuffer {
        try await fetch(id, candidates: candidates, onBadReplica: onBadReplica) { client throws(CairnError) in try await client.get(id) }
    }

    /// `length` bytes of a chunk at `offset`, from the first candidate whose blocks pass their
    /// checksums here; candidates fail over and are reported as for `fetch`.
    public func fetchRange(_ id: ChunkID, offset: Int, length: Int, candidates: [HostPort],
                           onBadReplica: (HostPort, CairnError) -> Void = { _, _ in }) async throws(CairnError) -> ByteBuffer {
        try await fetch(id, candidates: candidates, onBadReplica: onBadReplica) { client throws(CairnError) in
            try await client.readChecked(id, offset: offset, length: length)
        }
    }

    private func fetch(_ id: ChunkID, candidates: [HostPort], onBadReplica: (HostPort, CairnError) -> Void,
                       _ read: @escaping @Sendable (ChunkClient) async throws(CairnError) -> ByteBuffer) async throws(CairnError) -> ByteBuffer {
        var failures: [(server: HostPort, error: CairnError)] = []
        for server in candidates {
            do throws(CairnError) {
                let bytes = try await withClient(server) { client throws(CairnError) in try await read(client) }
                count { $0.getsTotal += 1 }
                return bytes
            } catch {
                logger.debug("chunk get failed; trying the next candidate",
                             metadata: ["chunk": "\(id)", "server": "\(server)", "error": "\(error)"])
                failures.append((server, error))
                onBadReplica(server, error)
            }
        }
        let reasons = failures.map { "\($0.server): \($0.error)" }.joined(separator: "; ")
        if !failures.isEmpty && failures.allSatisfy({ $0.error.code == .notFound }) {
            throw CairnError(.notFound, "no candidate has chunk \(id): \(reasons)")
        }
        throw CairnError(.unavailable, "cannot fetch chunk \(id) from \(candidates.count) candidates: "
            + (reasons.isEmpty ? "no candidates" : reasons))
    }
}
