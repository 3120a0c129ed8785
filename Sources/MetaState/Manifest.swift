import CairnCore

/// The extent list of one regular file: sorted by `fileOffset`, never overlapping, each
/// extent non-empty. Overwrites and truncates cut and trim extents; what no extent covers is a hole.
///
/// Every change reports how many references each chunk gained or lost, so the namespace can
/// keep one global reference count per chunk and tell gc which chunks are no longer used.
enum Manifest {
    /// Removes every byte in `[start, end)` from `extents`, trimming or splitting the extents
    /// that straddle the edges. `refs` receives +1/-1 per chunk reference added or dropped.
    static func punch(_ extents: inout [Extent], from start: UInt64, to end: UInt64, refs: inout [ChunkID: Int64]) {
        guard start < end, !extents.isEmpty else { return }
        // First extent that ends after `start` (extents are sorted and disjoint, so ends are sorted too).
        var low = 0, high = extents.count
        while low < high {
            let mid = (low + high) / 2
            if extents[mid].fileEnd <= start { low = mid + 1 } else { high = mid }
        }
        var replacement: [Extent] = []
        var index = low
        while index < extents.count, extents[index].fileOffset < end {
            let e = extents[index]
            var pieces = 0
            if e.fileOffset < start {
                replacement.append(Extent(fileOffset: e.fileOffset, length: start - e.fileOffset,
                                          chunkID: e.chunkID, chunkOffset: e.chunkOffset))
                pieces += 1
            }
            if e.fileEnd > end {
                let cut = end - e.fileOffset
                replacement.append(Extent(fileOffset: end, length: e.fileEnd - end,
                                          chunkID: e.chunkID, chunkOffset: e.chunkOffset + cut))
                pieces += 1
            }
            refs[e.chunkID, default: 0] += Int64(pieces - 1)
            index += 1
        }
        extents.replaceSubrange(low..<index, with: replacement)
    }

    /// Writes `extent` over whatever it covers.
    static func overwrite(_ extents: inout [Extent], with extent: Extent, refs: inout [ChunkID: Int64]) {
        punch(&extents, from: extent.fileOffset, to: extent.fileEnd, refs: &refs)
        var low = 0, high = extents.count
        while low < high {
            let mid = (low + high) / 2
            if extents[mid].fileOffset < extent.fileOffset { low = mid + 1 } else { high = mid }
        }
        extents.insert(extent, at: low)
        refs[extent.chunkID, default: 0] += 1
    }

    /// True if `extents` is sorted, disjoint, non-empty per extent and inside `size` (checked on restore).
    static func isWellFormed(_ extents: [Extent], size: UInt64) -> Bool {
        var previousEnd: UInt64 = 0
        for e in extents {
            if e.length == 0 || e.fileOffset < previousEnd { return false }
            let (end, overflow) = e.fileOffset.addingReportingOverflow(e.length)
            if overflow || end > size { return false }
            previousEnd = end
        }
        return true
    }
}
