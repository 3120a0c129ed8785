/// The log as one node sees it: the persisted part in `storage`, the part not yet persisted in `unstable`, and
/// how far it is committed and applied.
struct RaftLog {
    let storage: any LogStorage
    var unstable: UnstableLog
    /// Highest index known to be stored on a quorum.
    private(set) var committed: UInt64
    /// Highest index handed to the application to apply (acknowledged by `advance`).
    private(set) var applied: UInt64
    let committedEntriesBytesMax: Int

    init(storage: any LogStorage, committedEntriesBytesMax: Int) {
        self.storage = storage
        let first = storage.firstIndex
        unstable = UnstableLog(offset: storage.lastIndex + 1)
        committed = first - 1
        applied = first - 1
        self.committedEntriesBytesMax = committedEntriesBytesMax
    }

    var firstIndex: UInt64 { unstable.firstIndexFromSnapshot ?? storage.firstIndex }
    var lastIndex: UInt64 { unstable.lastIndex ?? storage.lastIndex }
    var lastTerm: UInt64 {
        guard let t = term(at: lastIndex) else { preconditionFailure("term of last index \(lastIndex) unknown") }
        return t
    }

    /// The term at `index`, or nil if it is compacted away or beyond the log.
    func term(at index: UInt64) -> UInt64? {
        // The entry before the first one is the snapshot's: still known.
        let dummy = firstIndex - 1
        guard index >= dummy, index <= lastIndex else { return nil }
        if let t = unstable.term(at: index) { return t }
        do {
            return try storage.term(at: index)
        } catch {
            switch error.code {
            case .compacted, .unavailable: return nil
            default: preconditionFailure("storage.term(at: \(index)) failed: \(error)")
            }
        }
    }

    func matchTerm(index: UInt64, term: UInt64) -> Bool { self.term(at: index) == term }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    func isUpToDate(lastIndex candidateIndex: UInt64, term candidateTerm: UInt64) -> Bool {
        candidateTerm > lastTerm || (candidateTerm == lastTerm && candidateIndex >= lastIndex)
    }

    /// Entries in `range`, limited to `bytesMax` (at least one). Throws `.compacted` if the range starts below
    /// the first index.
    func entries(_ range: Range<UInt64>, bytesMax: Int) throws(StorageError) -> [Entry] {
        if range.isEmpty { return [] }
        guard range.lowerBound >= firstIndex else {
            throw StorageError(.compacted, "entries from \(range.lowerBound) < first index \(firstIndex)")
        }
        precondition(range.upperBound <= lastIndex + 1, "entries \(range) beyond last index \(lastIndex)")
        var result: [Entry] = []
        let split = unstable.offset
        if range.lowerBound < split {
            result = try storage.entries(range.lowerBound..<min(range.upperBound, split), bytesMax: bytesMax)
            // Storage returned fewer (size limit): do not go on into the unstable part.
            if UInt64(result.count) < min(range.upperBound, split) - range.lowerBound { return result }
        }
        if range.upperBound > split {
            let part = unstable.slice(max(range.lowerBound, split)..<range.upperBound)
            result.append(contentsOf: part)
            result = limitSize(result, bytesMax: bytesMax)
        }
        return result
    }

    /// Index of the first entry of `newEntries` that conflicts with (or extends) the log; 0 if all match.
    func findConflict(_ newEntries: [Entry]) -> UInt64 {
        for e in newEntries where !matchTerm(index: e.index, term: e.term) { return e.index }
        return 0
    }

    /// The largest index ≤ `index` whose term is ≤ `term` (or the first-index boundary): where a leader whose
    /// entry at `index` has `term` can resume probing after a rejection (the fast backtracking of etcd).
    func findConflictByTerm(index: UInt64, term: UInt64) -> (index: UInt64, term: UInt64) {
        var i = index
        while true {
            guard let t = self.term(at: i) else { return (i, 0) }
            if t <= term { return (i, t) }
            if i == 0 { return (0, 0) }
            i -= 1
        }
    }

    /// Appends entries received from a leader after checking the previous one; returns the new last index, or nil
    /// if the log does not contain (`index`, `logTerm`).
    mutating func maybeAppend(index: UInt64, logTerm: UInt64, commit: UInt64, entries newEntries: [Entry]) -> UInt64? {
        guard matchTerm(index: index, term: logTerm) else { return nil }
        let lastNew = index + UInt64(newEntries.count)
        let conflict = findConflict(newEntries)
        if conflict != 0 {
            precondition(conflict > committed, "entry \(conflict) conflicts with committed entry (committed \(committed))")
            _ = append(Array(newEntries[Int(conflict - (index + 1))...]))
        }
        commitTo(min(commit, lastNew))
        return lastNew
    }

    /// Appends entries (truncating a conflicting uncommitted suffix); returns the new last index.
    mutating func append(_ newEntries: [Entry]) -> UInt64 {
        guard let first = newEntries.first?.index else { return lastIndex }
        precondition(first - 1 >= committed, "appending at \(first) would overwrite committed \(committed)")
        unstable.truncateAndAppend(newEntries)
        return lastIndex
    }

    mutating func commitTo(_ index: UInt64) {
        guard index > committed else { return }
        precondition(index <= lastIndex, "commit \(index) is beyond the last index \(lastIndex): log lost or corrupt?")
        committed = index
    }

    /// Advances the commit index to `index` if the entry there has `term` (the current-term commit rule), or
    /// unconditionally when `ignoringTerm` (the planted figure-8 bug).
    mutating func maybeCommit(index: UInt64, term: UInt64, ignoringTerm: Bool = false) -> Bool {
        guard index > committed else { return false }
        if ignoringTerm || self.term(at: index) == term {
            commitTo(index)
            return true
        }
        return false
    }

    mutating func appliedTo(_ index: UInt64) {
        guard index != 0 else { return }
        precondition(index <= committed && index >= applied, "applied \(index) outside [\(applied), \(committed)]")
        applied = index
    }

    /// Restores the commit and applied indexes after a restart.
    mutating func restoreIndexes(committed: UInt64, applied: UInt64) {
        precondition(committed <= lastIndex, "persisted commit \(committed) beyond last index \(lastIndex)")
        precondition(applied <= committed, "applied \(applied) beyond commit \(committed)")
        self.committed = max(self.committed, committed)
        self.applied = max(self.applied, applied)
    }

    var hasPendingSnapshot: Bool { unstable.snapshot != nil }

    /// Committed entries not yet handed to the application, bounded by `committedEntriesBytesMax`.
    func nextCommittedEntries() -> [Entry] {
        if hasPendingSnapshot { return [] }
        let lo = max(applied + 1, firstIndex)
        guard committed + 1 > lo else { return [] }
        do {
            return try entries(lo..<(committed + 1), bytesMax: committedEntriesBytesMax)
        } catch {
            preconditionFailure("committed entries \(lo)...\(committed) unavailable: \(error)")
        }
    }

    var hasNextCommittedEntries: Bool {
        !hasPendingSnapshot && committed + 1 > max(applied + 1, firstIndex)
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    mutating func restore(_ snapshot: Snapshot) {
        committed = snapshot.metadata.index
        unstable.restore(snapshot)
    }

    mutating func stableTo(index: UInt64, term: UInt64) { unstable.stableTo(index: index, term: term) }

    mutating func stableSnapshotTo(index: UInt64) {
        unstable.stableSnapshotTo(index: index)
        if index > applied { applied = index }
    }
}
