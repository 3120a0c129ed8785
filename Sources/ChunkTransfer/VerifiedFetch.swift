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
    /// Why there is no ranged fetch from the server: `ChunkClient.read(_:offset:length:)` is
    /// checked by the server against the chunk's per-block CRC-32Cs, but those checksums do not
    /// travel with the bytes, so nothing on this side checks them end to end. Readers therefore
    /// always fetch whole chunks, verify them, and slice (see `ChunkCache.read`); the cache makes
    /// the whole-chunk fetch pay for the following reads of the same chunk.
    ///
    /// - Parameter candidates: servers to try in order: owners in ring order, then the previous
    ///   epoch's owners, then any live server.
    /// - Throws: `.notFound` if every candidate answered that it lacks the chunk;
    ///   `.unavailable` otherwise when no candidate returned it, naming every failure.
    public func fetch(_ id: ChunkID, candidates: [HostPort],
                      onBadReplica: (HostPort, CairnError) -> Void = { _, _ in }) async throws(CairnError) -> ByteBuffer {
        var failures: [(server: HostPort, error: CairnError)] = []
        for server in candidates {
            do throws(CairnError) {
                let bytes = try await withClient(server) { client throws(CairnError) in try await client.get(id) }
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
