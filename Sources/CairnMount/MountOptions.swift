import CairnCore

/// What `cairn mount -o …` sets for Cairn itself (FUSE's own options are `FuseMount.Options`).
public struct CairnMountOptions: Sendable, Equatable {
    /// Replicas of each chunk (R); fewer only while fewer servers are live.
    public var replicas = 3
    /// Bytes of verified chunks kept in memory for reads.
    public var chunkCacheBytes = 256 << 20
    /// Dirty bytes buffered per open file before writes wait for uploads (back-pressure).
    public var dirtyBytesPerFileMax = 64 << 20
    /// Chunk uploads in flight at once over the whole mount.
    public var uploadsInflightMax = 8
    /// Chunks read ahead of a sequential reader (`-o readahead=N`). Measured with fio (1 GiB,
    /// 1 MiB sequential reads, cold caches, `cairn up` with R=2): 2 ahead 544-555 MB/s, 4 ahead
    /// 601-655, 8 ahead 617-651.
    public var readaheadChunks = 4
    /// Uploaded extents held before they are committed even without a flush.
    public var pendingExtentsMax = 16
    /// How long the session survives without heartbeats (open-but-unlinked files live as long).
    public var sessionTTL: Duration = .seconds(60)
    /// Chunk size of new files' fixed-size chunking.
    public var chunkBytes = ChunkLimits().chunkBytesMax

    public init() {}

    public func validate() throws(CairnError) {
        guard (1...16).contains(replicas) else { throw CairnError(.invalidArgument, "replicas must be 1...16") }
        guard chunkCacheBytes >= chunkBytes else { throw CairnError(.invalidArgument, "the chunk cache must hold at least one chunk") }
        guard dirtyBytesPerFileMax >= 2 * chunkBytes else { throw CairnError(.invalidArgument, "the write buffer must hold at least two chunks") }
        guard (1...256).contains(uploadsInflightMax) else { throw CairnError(.invalidArgument, "uploads in flight must be 1...256") }
        guard (0...64).contains(readaheadChunks) else { throw CairnError(.invalidArgument, "readahead must be 0...64 chunks") }
        guard (1...4096).contains(pendingExtentsMax) else { throw CairnError(.invalidArgument, "pending extents must be 1...4096") }
    }
}
