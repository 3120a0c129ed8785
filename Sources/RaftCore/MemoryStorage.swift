/// An in-memory `LogStorage`. The application appends to it what it has persisted elsewhere (or, in tests and the
/// simulator, what it pretends to have persisted), then the core reads from it.
public final class MemoryStorage: LogStorage {
    public private(set) var hardState = HardState()
    private var snapshotValue = Snapshot()
    /// `entries[0]` is a placeholder at the snapshot's index and term (as in etcd), so that `term(at:)` of the
    /// snapshot index needs no special case.
    private var entriesValue: [Entry] = [Entry(term: 0, index: 0)]

    public init() {}

    /// A storage for a founding member of a group: the initial membership is a snapshot at index 1, term 1
    /// (with empty data). A node that joins later starts from `init()` (empty) and learns that membership the
    /// way it learns anything compacted away: by InstallSnapshot.
    public init(bootstrap confState: ConfState) {
        snapshotValue = Snapshot(metadata: SnapshotMetadata(index: 1, term: 1, confState: confState))
        entriesValue = [Entry(term: 1, index: 1)]
        // Term 1 belongs to the bootstrap: the first election is for term 2.
        hardState = HardState(term: 1, vote: noNode, commit: 1)
    }

    private var offset: UInt64 { entriesValue[0].index }

    public func initialState() -> (HardState, ConfState) { (hardState, snapshotValue.metadata.confState) }

    public var firstIndex: UInt64 { offset + 1 }
    public var lastIndex: UInt64 { offset + UInt64(entriesValue.count) - 1 }

    public func term(at index: UInt64) throws(StorageError) -> UInt64 {
        guard index >= offset else { throw StorageError(.compacted, "index \(index) < snapshot index \(offset)") }
        guard index <= lastIndex else { throw StorageError(.unavailable, "index \(index) > last index \(lastIndex)") }
        return entriesValue[Int(index - offset)].term
    }

    public func entries(_ range: Range<UInt64>, bytesMax: Int) throws(StorageError) -> [Entry] {
        guard range.lowerBound > offset else {
            throw StorageError(.compacted, "entries from \(range.lowerBound) <= snapshot index \(offset)")
        }
        guard range.upperBound <= lastIndex + 1 else {
            throw StorageError(.unavailable, "entries up to \(range.upperBound - 1) > last index \(lastIndex)")
        }
        if range.isEmpty { return [] }
        let lo = Int(range.lowerBound - offset)
        let hi = Int(range.upperBound - offset)
        return limitSize(Array(entriesValue[lo..<hi]), bytesMax: bytesMax)
    }

    public func snapshot() throws(StorageError) -> Snapshot { snapshotValue }

    /// Every entry held, in order (for inspection by tests and the simulator).
    public var allEntries: [Entry] { Array(entriesValue.dropFirst()) }

    public func setHardState(_ state: HardState) { hardState = state }

    /// Replaces the whole log with `snapshot` (a follower installing one from its leader).
    /// Throws `.snapshotOutOfDate` if it is not newer than the snapshot held.
    public func applySnapshot(_ snapshot: Snapshot) throws(StorageError) {
        guard snapshot.metadata.index > snapshotValue.metadata.index else {
            throw StorageError(.snapshotOutOfDate, "snapshot \(snapshot.metadata.index) <= held \(snapshotValue.metadata.index)")
        }
        snapshotValue = snapshot
        entriesValue = [Entry(term: snapshot.metadata.term, index: snapshot.metadata.index)]
    }

    /// Records a snapshot the application made of its state at `index` (which it has applied), without
    /// discarding entries; call `compact(to:)` to discard them.
    @discardableResult
    public func createSnapshot(at index: UInt64, confState: ConfState, data: [UInt8]) throws(StorageError) -> Snapshot {
        guard index > snapshotValue.metadata.index else {
            throw StorageError(.snapshotOutOfDate, "snapshot \(index) <= held \(snapshotValue.metadata.index)")
        }
        precondition(index <= lastIndex, "snapshot index \(index) is beyond the last index \(lastIndex)")
        let term = entriesValue[Int(index - offset)].term
        snapshotValue = Snapshot(metadata: SnapshotMetadata(index: index, term: term, confState: confState), data: data)
        return snapshotValue
    }

    /// Discards every entry up to and including `index`, which must be covered by a snapshot already
    /// (`createSnapshot`) so that a lagging follower can still be caught up.
    public func compact(to index: UInt64) throws(StorageError) {
        guard index > offset else { throw StorageError(.compacted, "index \(index) already compacted (\(offset))") }
        precondition(index <= lastIndex, "compact \(index) is beyond the last index \(lastIndex)")
        precondition(index <= snapshotValue.metadata.index, "compact \(index) beyond the snapshot \(snapshotValue.metadata.index)")
        let i = Int(index - offset)
        var kept = [Entry(term: entriesValue[i].term, index: entriesValue[i].index)]
        kept.append(contentsOf: entriesValue[(i + 1)...])
        entriesValue = kept
    }

    /// Appends entries the application has persisted, truncating any conflicting suffix. Entries at or below the
    /// snapshot are ignored; a gap is a broken invariant.
    public func append(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        var toAppend = entries
        if first.index <= offset {
            toAppend = Array(entries.drop(while: { $0.index <= offset }))
            if toAppend.isEmpty { return }
        }
        let start = toAppend[0].index
        precondition(start <= lastIndex + 1, "gap in log: appending \(start) after last index \(lastIndex)")
        entriesValue.removeSubrange(Int(start - offset)...)
        entriesValue.append(contentsOf: toAppend)
    }
}
