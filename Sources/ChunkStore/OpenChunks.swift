import CairnCore
import SystemPackage

/// A chunk kept open for range reads: its descriptor, size and block checksums. The descriptor
/// closes when the last holder lets go, so evicting an entry never closes it under a reader.
final class OpenChunk: Sendable {
    let fd: FileDescriptor
    let size: Int
    let sums: BlockChecksums

    init(fd: FileDescriptor, size: Int, sums: BlockChecksums) {
        self.fd = fd
        self.size = size
        self.sums = sums
    }

    deinit { try? fd.close() }
}

/// The chunks most recently read by range, kept open, at most `limit` of them (least recently
/// used out first): another range read of one needs no open, stat or checksum-file read, and
/// when its blocks are in the page cache it need not leave the event loop
/// (`ChunkStore.readIfCached`). A chunk deleted or quarantined is dropped at once.
struct OpenChunks {
    let limit: Int
    private var entries: [ChunkID: (chunk: OpenChunk, lastUse: UInt64)] = [:]
    /// A logical clock for the eviction order.
    private var tick: UInt64 = 0

    init(limit: Int) {
        precondition(limit >= 0)
        self.limit = limit
    }

    mutating func get(_ id: ChunkID) -> OpenChunk? {
        guard let entry = entries[id] else { return nil }
        tick += 1
        entries[id] = (entry.chunk, tick)
        return entry.chunk
    }

    mutating func insert(_ id: ChunkID, _ chunk: OpenChunk) {
        guard limit > 0 else { return }
        if entries[id] == nil, entries.count >= limit,
           let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
            entries.removeValue(forKey: oldest)
        }
        tick += 1
        entries[id] = (chunk, tick)
    }

    mutating func remove(_ id: ChunkID) {
        entries.removeValue(forKey: id)
    }
}
