import CairnCore
import MetaState

/// The dirty state of one open file: written bytes not yet stored as chunks. Pure (no I/O).
///
/// Files are chunked at fixed size: file offset `k·chunkBytes` starts chunk `k`. Writes are
/// recorded as dirty ranges per chunk index. The caller seals a chunk — `seal(_:base:)` builds
/// its new content by laying the dirty ranges over the chunk's old content (read-modify-write
/// for a partial overwrite) — hashes and uploads it, and commits the returned extent:
///
/// - when a chunk is fully written (`sealableChunkIndexes`),
/// - when the buffer `isFull` (`dirtyBytesMax`), to make room (back-pressure: `write` refuses
///   with `.busy` rather than grow past the bound),
/// - on `fsync`, `flush` and `close`, for every dirty chunk (`dirtyChunkIndexes`).
///
/// Truncation: `truncate(to:)` drops dirty bytes past the new size; trimming the committed
/// extents is the metadata service's job (setattr). The caller commits a truncation before it
/// seals a chunk after it, so the `base` it passes — read through the committed manifest —
/// never shows bytes the truncation removed.
///
/// A chunk of all zeros is stored like any other (no special case: it is one chunk, deduplicated
/// by its hash across the cluster). A chunk of zero bytes is never produced.
public struct FileWriteBuffer: Sendable {
    /// Bytes per chunk (the last chunk of a file may be shorter).
    public let chunkBytes: Int
    /// The most dirty bytes held before `write` refuses with `.busy`.
    public let dirtyBytesMax: Int
    /// The file's size including dirty writes: writes past the end extend it.
    public private(set) var fileSize: UInt64
    /// Distinct file bytes written and not yet sealed.
    public private(set) var dirtyBytes = 0
    private var chunks: [Int: DirtyChunk] = [:]

    /// - Parameter fileSize: the file's committed size when it was opened.
    public init(fileSize: UInt64, chunkBytes: Int = ChunkLimits().chunkBytesMax, dirtyBytesMax: Int = 64 << 20) {
        precondition(chunkBytes > 0, "chunkBytes must be positive")
        precondition(dirtyBytesMax >= chunkBytes, "dirtyBytesMax must hold at least one chunk")
        self.chunkBytes = chunkBytes
        self.dirtyBytesMax = dirtyBytesMax
        self.fileSize = fileSize
    }

    /// The caller should seal and upload chunks before writing more.
    public var isFull: Bool { dirtyBytes >= dirtyBytesMax }

    public var isClean: Bool { chunks.isEmpty }

    /// Chunks with dirty bytes, in file order.
    public var dirtyChunkIndexes: [Int] { chunks.keys.sorted() }

    /// Chunks whose every byte is dirty: sealing them needs no old content and no later write
    /// can still extend them. In file order.
    public var sealableChunkIndexes: [Int] {
        chunks.filter { $0.value.covers(0, chunkBytes) }.keys.sorted()
    }

    /// The file offset where chunk `index` starts.
    public func chunkStart(_ index: Int) -> UInt64 { UInt64(index) * UInt64(chunkBytes) }

    /// Whether sealing chunk `index` needs its old content: false when the dirty bytes cover it
    /// from its start to the end of the chunk or of the file, whichever comes first.
    public func needsBase(_ index: Int) -> Bool {
        guard let chunk = chunks[index] else { return true }
        return !chunk.covers(0, contentLimit(index))
    }

    /// The dirty ranges of chunk `index` as offsets within the chunk, in order (tests, reads of
    /// not-yet-sealed data).
    public func dirtyRanges(_ index: Int) -> [Range<Int>] {
        chunks[index]?.segments.map { $0.start..<$0.end } ?? []
    }

    /// Records a write. Nothing changes if it throws.
    /// - Throws: `.busy` if it would take the dirty bytes past `dirtyBytesMax` (seal and upload
    ///   chunks, then write again; a single write larger than `dirtyBytesMax` must be split);
    ///   `.invalidArgument` if it would end past the largest file offset.
    public mutating func write(offset: UInt64, bytes: some Collection<UInt8>) throws(CairnError) {
        let count = bytes.count
        if count == 0 { return }
        guard offset <= UInt64(Int.max) - UInt64(count) else {
            throw CairnError(.invalidArgument, "write of \(count) bytes at \(offset) ends past the largest file offset")
        }
        let end = offset + UInt64(count)
        let pieces = split(offset, end)
        var added = 0
        for piece in pieces {
            added += piece.range.count - (chunks[piece.index]?.dirtyCount(in: piece.range) ?? 0)
        }
        guard dirtyBytes + added <= dirtyBytesMax else {
            throw CairnError(.busy, "write buffer full: \(dirtyBytes) dirty bytes + \(added) > dirtyBytesMax \(dirtyBytesMax)")
        }
        let data = Array(bytes)
        var consumed = 0
        for piece in pieces {
            let n = piece.range.count
            chunks[piece.index, default: DirtyChunk()].write(at: piece.range.lowerBound, data[consumed..<consumed + n], room: chunkBytes)
            consumed += n
        }
        precondition(consumed == count)
        dirtyBytes += added
        fileSize = max(fileSize, end)
        checkInvariants()
    }

    /// Sets the file size: dirty bytes at or past `size` are dropped; a larger size extends the
    /// file with a hole.
    public mutating func truncate(to size: UInt64) {
        if size < fileSize {
            for index in chunks.keys.sorted() {
                let start = chunkStart(index)
                if start >= size {
                    dirtyBytes -= chunks.removeValue(forKey: index)!.dirtyCount
                } else if size - start < UInt64(chunkBytes) {
                    let before = chunks[index]!.dirtyCount
                    chunks[index]!.cut(at: Int(size - start))
                    dirtyBytes -= before - chunks[index]!.dirtyCount
                    if chunks[index]!.segments.isEmpty { chunks[index] = nil }
                }
            }
        }
        fileSize = size
        checkInvariants()
    }

    /// Builds the new content of dirty chunk `index` and forgets its dirty bytes.
    ///
    /// - Parameter base: the chunk's current content as the committed manifest has it (holes
    ///   as zeros; at most `chunkBytes`), or nil if no extent covers it (a hole, or a new chunk).
    ///   Needed unless `needsBase(index)` is false.
    /// - Returns: the dirty ranges laid over `base`: as long as the longer of the two, zeros in
    ///   any gap between them, never past the end of the file.
    public mutating func seal(_ index: Int, base: [UInt8]?) -> SealedChunk {
        guard let chunk = chunks.removeValue(forKey: index) else {
            preconditionFailure("chunk \(index) has no dirty bytes to seal")
        }
        precondition((base?.count ?? 0) <= chunkBytes, "a chunk's old content is at most chunkBytes")
        let limit = contentLimit(index)
        let length = min(max(base?.count ?? 0, chunk.segments.last!.end), limit)
        precondition(length > 0 && chunk.segments.last!.end <= limit, "dirty bytes lie within the file")
        // A chunk written whole from its start (sequential writes) is its one segment: no copy.
        if chunk.segments.count == 1, chunk.segments[0].start == 0, chunk.segments[0].bytes.count == length {
            dirtyBytes -= length
            checkInvariants()
            return SealedChunk(index: index, fileOffset: chunkStart(index), bytes: chunk.segments[0].bytes)
        }
        var content = [UInt8](repeating: 0, count: length)
        if let base {
            let kept = min(base.count, length)
            content.replaceSubrange(0..<kept, with: base[0..<kept])
        }
        for segment in chunk.segments {
            content.replaceSubrange(segment.start..<segment.end, with: segment.bytes)
        }
        dirtyBytes -= chunk.dirtyCount
        checkInvariants()
        return SealedChunk(index: index, fileOffset: chunkStart(index), bytes: content)
    }

    // MARK: Internals

    /// How many bytes of chunk `index` lie within the file.
    private func contentLimit(_ index: Int) -> Int {
        let start = chunkStart(index)
        return start >= fileSize ? 0 : Int(min(UInt64(chunkBytes), fileSize - start))
    }

    /// Cuts `[offset, end)` at chunk boundaries into (chunk index, range within the chunk).
    private func split(_ offset: UInt64, _ end: UInt64) -> [(index: Int, range: Range<Int>)] {
        var pieces: [(index: Int, range: Range<Int>)] = []
        var position = offset
        let size = UInt64(chunkBytes)
        while position < end {
            let index = Int(position / size)
            let within = Int(position % size)
            let n = Int(min(UInt64(chunkBytes - within), end - position))
            pieces.append((index, within..<within + n))
            position += UInt64(n)
        }
        return pieces
    }

    private func checkInvariants() {
        #if DEBUG
        var total = 0
        for (index, chunk) in chunks {
            precondition(!chunk.segments.isEmpty, "an empty dirty chunk is removed")
            precondition(chunk.segments.last!.end <= contentLimit(index), "dirty bytes past the end of the file")
            for (a, b) in zip(chunk.segments, chunk.segments.dropFirst()) {
                precondition(a.end < b.start, "dirty segments are sorted, disjoint and not adjacent")
            }
            total += chunk.dirtyCount
        }
        precondition(total == dirtyBytes, "dirtyBytes matches the segments")
        #endif
    }
}

/// A chunk's new content, ready to hash, upload and commit as one extent.
public struct SealedChunk: Sendable, Equatable {
    public var index: Int
    /// Where the chunk starts in the file: `index·chunkBytes`.
    public var fileOffset: UInt64
    /// The content: 1...chunkBytes bytes.
    public var bytes: [UInt8]

    /// The chunk's name.
    public var id: ChunkID { SHA256.hash(bytes) }

    /// The extent to commit once the chunk is stored: it maps the whole chunk at `fileOffset`.
    public func extent(chunkID: ChunkID) -> Extent {
        Extent(fileOffset: fileOffset, length: UInt64(bytes.count), chunkID: chunkID, chunkOffset: 0)
    }
}

/// The dirty bytes of one chunk: sorted, disjoint, non-adjacent segments (adjacent writes merge,
/// so sequential writes grow one segment in place).
struct DirtyChunk: Sendable {
    struct Segment: Sendable {
        var start: Int
        var bytes: [UInt8]
        var end: Int { start + bytes.count }
    }

    private(set) var segments: [Segment] = []

    var dirtyCount: Int { segments.reduce(0) { $0 + $1.bytes.count } }

    /// Dirty bytes within `range`.
    func dirtyCount(in range: Range<Int>) -> Int {
        segments.reduce(0) { total, segment in
            total + max(0, min(segment.end, range.upperBound) - max(segment.start, range.lowerBound))
        }
    }

    /// Whether `[start, end)` is entirely dirty.
    func covers(_ start: Int, _ end: Int) -> Bool {
        if start >= end { return true }
        return segments.contains { $0.start <= start && $0.end >= end }
    }

    /// Records `data` at `start`. A new segment's buffer is reserved for up to four times the
    /// write, and a growing one at least doubles (within `room`, the chunk's size): sequential
    /// 1 MiB writes fill a chunk without copying what they wrote before, small ones copy it
    /// O(log n) times, and small scattered writes do not reserve whole chunks.
    mutating func write(at start: Int, _ data: ArraySlice<UInt8>, room: Int) {
        let end = start + data.count
        // Segments that overlap or touch [start, end) merge with it.
        guard let first = segments.firstIndex(where: { $0.end >= start }), segments[first].start <= end else {
            let at = segments.firstIndex { $0.start > end } ?? segments.endIndex
            var bytes: [UInt8] = []
            bytes.reserveCapacity(min(room - start, 4 * data.count))
            bytes.append(contentsOf: data)
            segments.insert(Segment(start: start, bytes: bytes), at: at)
            return
        }
        var last = first
        while last + 1 < segments.count && segments[last + 1].start <= end { last += 1 }
        // Take the first segment's bytes out without copying them, and grow them in place.
        var merged: [UInt8] = []
        swap(&merged, &segments[first].bytes)
        var mergedStart = segments[first].start
        // Grow geometrically (reserveCapacity gives exactly what is asked): small sequential
        // writes must not copy the segment each time.
        let needed = max(end, segments[last].end) - min(start, mergedStart)
        if merged.capacity < needed {
            merged.reserveCapacity(min(room - min(start, mergedStart), max(needed, 2 * merged.capacity, 4 * data.count)))
        }
        if start < mergedStart {
            merged.insert(contentsOf: repeatElement(0, count: mergedStart - start), at: 0)
            mergedStart = start
        }
        for next in segments[(first + 1)..<(last + 1)] {
            // The gap before `next` lies inside the write, which fills it below.
            merged.append(contentsOf: repeatElement(0, count: next.start - mergedStart - merged.count))
            merged.append(contentsOf: next.bytes)
        }
        let at = start - mergedStart
        let overlap = min(data.count, merged.count - at)
        merged.replaceSubrange(at..<at + overlap, with: data.prefix(overlap))
        merged.append(contentsOf: data.dropFirst(overlap))
        segments.replaceSubrange(first...last, with: [Segment(start: mergedStart, bytes: merged)])
    }

    /// Drops every dirty byte at or past `offset`.
    mutating func cut(at offset: Int) {
        segments.removeAll { $0.start >= offset }
        if let last = segments.indices.last, segments[last].end > offset {
            segments[last].bytes.removeLast(segments[last].end - offset)
        }
    }
}
