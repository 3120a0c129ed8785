import RaftCore

/// A node's durable storage as a write-ahead log would hold it: a durable image plus records written but not yet
/// fsynced. A crash keeps the image and a random prefix of the unsynced records (a torn tail), never a record
/// out of order.
struct SimulatedDisk {
    enum Record {
        case snapshot(Snapshot)
        case entries([Entry])
        case hardState(HardState)
    }

    /// What survives any crash.
    private(set) var durable: DiskImage
    private(set) var unsynced: [Record] = []

    /// A founding member's disk holds the bootstrap snapshot (see `MemoryStorage.init(bootstrap:)`); a node that
    /// joins later starts empty.
    init(founder confState: ConfState?) {
        if let confState {
            durable = DiskImage(snapshot: Snapshot(metadata: SnapshotMetadata(index: 1, term: 1, confState: confState)))
            durable.hardState = HardState(term: 1, vote: noNode, commit: 1)
        } else {
            durable = DiskImage(snapshot: Snapshot())
        }
    }

    mutating func write(_ record: Record) { unsynced.append(record) }

    /// fsync: everything written becomes durable.
    mutating func sync() {
        for r in unsynced { durable.fold(r) }
        unsynced = []
    }

    /// A crash: keeps `survivors` of the unsynced records (a prefix), loses the rest.
    mutating func crash(keeping survivors: Int) {
        precondition(survivors <= unsynced.count)
        for r in unsynced.prefix(survivors) { durable.fold(r) }
        unsynced = []
    }

    /// A snapshot the node made of its own state, written atomically (temp file, fsync, rename) and then used to
    /// drop durable entries up to `compactIndex`.
    mutating func installLocalSnapshot(_ snapshot: Snapshot, compactIndex: UInt64) {
        durable.installLocalSnapshot(snapshot, compactIndex: compactIndex)
    }
}

/// The durable content of a node's disk.
struct DiskImage {
    var snapshot: Snapshot
    /// Entries after the snapshot index (or after `compactedIndex` when a local snapshot kept a tail), contiguous.
    var entries: [Entry] = []
    var hardState = HardState()

    init(snapshot: Snapshot) { self.snapshot = snapshot }

    var lastIndex: UInt64 { entries.last?.index ?? snapshot.metadata.index }

    mutating func fold(_ record: SimulatedDisk.Record) {
        switch record {
        case .snapshot(let s):
            if s.metadata.index > snapshot.metadata.index {
                snapshot = s
                entries = []
            }
        case .entries(let es):
            guard let first = es.first?.index else { return }
            let kept = es.filter { $0.index > (entries.first.map { $0.index - 1 } ?? snapshot.metadata.index) }
            guard let start = kept.first?.index else { return }
            precondition(start <= lastIndex + 1, "disk gap: writing \(first)... after \(lastIndex)")
            entries.removeAll { $0.index >= start }
            entries.append(contentsOf: kept)
        case .hardState(let hs):
            hardState = hs
        }
    }

    mutating func installLocalSnapshot(_ s: Snapshot, compactIndex: UInt64) {
        guard s.metadata.index > snapshot.metadata.index else { return }
        snapshot = s
        entries.removeAll { $0.index <= compactIndex }
    }

    /// Rebuilds the in-memory storage a restarting node reads.
    func makeStorage() -> MemoryStorage {
        let storage: MemoryStorage
        if snapshot.metadata.index == 0 {
            storage = MemoryStorage()
        } else {
            storage = MemoryStorage()
            do { try storage.applySnapshot(snapshot) } catch { preconditionFailure("restore snapshot: \(error)") }
        }
        // Entries kept below the snapshot (a local snapshot keeps a tail) are not needed by the log.
        storage.append(entries.filter { $0.index > snapshot.metadata.index })
        storage.setHardState(hardState)
        return storage
    }
}
