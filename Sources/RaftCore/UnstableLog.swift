/// Entries (and possibly a snapshot) the core has accepted but the application has not yet persisted. They are
/// handed out in `Ready` and become stable in `advance`.
struct UnstableLog {
    /// A snapshot received from the leader, waiting to be persisted.
    var snapshot: Snapshot?
    /// Entries starting at `offset`.
    var entries: [Entry] = []
    /// Index of `entries[0]` (or where the next one would go).
    var offset: UInt64

    init(offset: UInt64) { self.offset = offset }

    /// The first index if it is known only from the unstable snapshot.
    var firstIndexFromSnapshot: UInt64? { snapshot.map { $0.metadata.index + 1 } }

    var lastIndex: UInt64? {
        if !entries.isEmpty { return offset + UInt64(entries.count) - 1 }
        return snapshot?.metadata.index
    }

    func term(at index: UInt64) -> UInt64? {
        if index < offset {
            if let snapshot, snapshot.metadata.index == index { return snapshot.metadata.term }
            return nil
        }
        guard let last = lastIndex, index <= last else { return nil }
        return entries[Int(index - offset)].term
    }

    /// The application persisted entries up to `index` (with `term`): drop them from here.
    mutating func stableTo(index: UInt64, term: UInt64) {
        // Only if the entry is still the one that was handed out: a newer leader may have replaced it since.
        guard let t = self.term(at: index), t == term, index >= offset else { return }
        entries.removeFirst(Int(index + 1 - offset))
        offset = index + 1
    }

    mutating func stableSnapshotTo(index: UInt64) {
        if let snapshot, snapshot.metadata.index == index { self.snapshot = nil }
    }

    mutating func restore(_ snapshot: Snapshot) {
        offset = snapshot.metadata.index + 1
        entries = []
        self.snapshot = snapshot
    }

    /// Appends `newEntries`, truncating whatever they replace.
    mutating func truncateAndAppend(_ newEntries: [Entry]) {
        guard let first = newEntries.first?.index else { return }
        if first == offset + UInt64(entries.count) {
            entries.append(contentsOf: newEntries)
        } else if first <= offset {
            // Replaces everything unstable (and, in storage, the suffix from `first`).
            offset = first
            entries = newEntries
        } else {
            entries.removeSubrange(Int(first - offset)...)
            entries.append(contentsOf: newEntries)
        }
    }

    func slice(_ range: Range<UInt64>) -> [Entry] {
        precondition(range.lowerBound >= offset && range.upperBound <= offset + UInt64(entries.count),
            "unstable slice \(range) out of \(offset)..<\(offset + UInt64(entries.count))")
        return Array(entries[Int(range.lowerBound - offset)..<Int(range.upperBound - offset)])
    }
}
