/// The named bounds of the chunk layer, in one place an operator can read.
/// Units come last in every name. `validate()` runs at start-up.
public struct ChunkLimits: Sendable, Equatable {
    /// The largest chunk a store accepts or a frame carries.
    public var chunkBytesMax: Int = 4 << 20
    /// Block size of the per-block CRC-32C checksums kept beside each chunk (range reads).
    public var checksumBlockBytes: Int = 64 << 10
    /// The largest protobuf header in one frame.
    public var frameHeaderBytesMax: Int = 64 << 10
    /// Puts and gets served at once by one chunkserver (each holds up to one chunk in memory).
    public var transfersMax: Int = 32
    /// Frame parts (headers and body parts of at most 1 MiB) one connection may have queued
    /// before the server stops reading from it.
    public var connectionPartsBufferedMax: Int = 8
    /// Open connections one chunkserver accepts.
    public var connectionsMax: Int = 256
    /// IDs in one has/delete batch.
    public var batchIDsMax: Int = 4096
    /// Entries in one list page.
    public var listPageEntriesMax: Int = 1000

    public init() {}

    /// Throws `invalidArgument` if the bounds are inconsistent.
    public func validate() throws(CairnError) {
        func check(_ ok: Bool, _ what: String) throws(CairnError) {
            if !ok { throw CairnError(.invalidArgument, "invalid limit: \(what)") }
        }
        try check(chunkBytesMax > 0 && chunkBytesMax <= 64 << 20, "chunkBytesMax must be in 1...64 MiB")
        try check(checksumBlockBytes >= 4096 && checksumBlockBytes <= chunkBytesMax,
                  "checksumBlockBytes must be in 4 KiB...chunkBytesMax")
        try check(frameHeaderBytesMax >= 1024 && frameHeaderBytesMax <= 16 << 20, "frameHeaderBytesMax must be in 1 KiB...16 MiB")
        try check(transfersMax > 0 && transfersMax <= 4096, "transfersMax must be in 1...4096")
        try check(connectionPartsBufferedMax > 0 && connectionPartsBufferedMax <= 1024,
                  "connectionPartsBufferedMax must be in 1...1024")
        try check(connectionsMax > 0, "connectionsMax must be positive")
        try check(batchIDsMax > 0 && batchIDsMax * ChunkID.byteCount * 2 <= frameHeaderBytesMax * 4,
                  "batchIDsMax must fit in a frame header")
        try check(listPageEntriesMax > 0 && listPageEntriesMax <= 100_000, "listPageEntriesMax must be in 1...100000")
    }
}
