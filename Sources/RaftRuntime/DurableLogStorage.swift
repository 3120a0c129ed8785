import CairnCore
import Logging
import RaftCore
import SystemPackage

/// The Raft log made durable: a `MemoryStorage` that the core reads, kept in step with a
/// `WriteAheadLog` and `SnapshotFiles` that every change goes through first.
///
/// Layout under its directory: `wal/` (segments) and `snap/` (snapshot files).
/// Not thread-safe: owned by the Raft driver, like the `RawNode` it serves.
public final class DurableLogStorage: LogStorage {
    public let directory: FilePath
    private let memory: MemoryStorage
    private let wal: WriteAheadLog
    private let snapshots: SnapshotFiles
    private let logger: Logger
    /// Entries kept behind a new snapshot, so a follower slightly behind catches up from the
    /// log rather than by a whole snapshot.
    public var entriesKeptBehindSnapshot: UInt64

    /// Opens the log in `directory`, recovering it.
    ///
    /// - Throws: `.corrupt` when the WAL is damaged other than by a torn tail, or the snapshot it
    ///   depends on is missing or damaged; `.io`.
    public init(directory: FilePath, limits: WALLimits = WALLimits(), entriesKeptBehindSnapshot: UInt64 = 1000,
                logger: Logger) throws(CairnError) {
        self.directory = directory
        self.logger = logger
        self.entriesKeptBehindSnapshot = entriesKeptBehindSnapshot
        do {
            try FileSystemCalls.mkdir(directory)
        } catch {
            throw CairnError(.io, "cannot create \(directory)", cause: error)
        }
        snapshots = try SnapshotFiles(directory: directory.appending("snap"), logger: logger)
        let recovered: RecoveredLog
        (wal, recovered) = try WriteAheadLog.open(directory: directory.appending("wal"), limits: limits, logger: logger)
        memory = MemoryStorage()
        if recovered.snapshot.index > 0 {
            let snapshot = try snapshots.load(index: recovered.snapshot.index, term: recovered.snapshot.term)
            guard snapshot.metadata == recovered.snapshot else {
                throw CairnError(.corrupt, "snapshot \(snapshot.metadata.index) disagrees with the WAL's record of it")
            }
            do {
                try memory.applySnapshot(snapshot)
            } catch {
                throw CairnError(.corrupt, "cannot restore snapshot \(snapshot.metadata.index)", cause: error)
            }
        }
        memory.append(recovered.entries)
        memory.setHardState(recovered.hardState)
        if recovered.tornTailBytes > 0 {
            logger.warning("recovered Raft log after a torn tail", metadata: ["dropped-bytes": "\(recovered.tornTailBytes)"])
        }
    }

    /// True when nothing was ever written: a fresh node (bootstrap decisions look at this).
    public var isEmpty: Bool {
        memory.hardState.isEmpty && memory.lastIndex == 0 && (try? memory.snapshot().isEmpty) ?? true
    }

    /// The hard state as persisted.
    public var hardState: HardState { memory.hardState }

    // MARK: LogStorage

    public func initialState() -> (HardState, ConfState) { memory.initialState() }
    public func entries(_ range: Range<UInt64>, bytesMax: Int) throws(StorageError) -> [Entry] {
        try memory.entries(range, bytesMax: bytesMax)
    }
    public func term(at index: UInt64) throws(StorageError) -> UInt64 { try memory.term(at: index) }
    public var firstIndex: UInt64 { memory.firstIndex }
    public var lastIndex: UInt64 { memory.lastIndex }
    public func snapshot() throws(StorageError) -> Snapshot { try memory.snapshot() }

    // MARK: Persisting a Ready

    /// Persists what a `Ready` asks for, in the order Raft requires: snapshot, entries, hard
    /// state, durable (one fsync for the whole batch: group commit) before it returns.
    public func persist(snapshot: Snapshot?, entries: [Entry], hardState: HardState?) throws(CairnError) {
        var records: [WALRecord] = []
        if let snapshot, !snapshot.isEmpty {
            // The snapshot file first: the WAL record that points at it must never exist without it.
            try snapshots.save(snapshot)
            records.append(.installedSnapshot(snapshot.metadata))
        }
        if !entries.isEmpty { records.append(.entries(entries)) }
        if let hardState { records.append(.hardState(hardState)) }
        try wal.append(records)
        if let snapshot, !snapshot.isEmpty {
            do {
                try memory.applySnapshot(snapshot)
            } catch {
                logger.warning("ignoring an out-of-date snapshot", metadata: ["index": "\(snapshot.metadata.index)"])
            }
        }
        memory.append(entries)
        if let hardState { memory.setHardState(hardState) }
    }

    /// Saves a snapshot of the applied state at `index` and compacts the log behind it,
    /// keeping `entriesKeptBehindSnapshot` entries.
    public func createSnapshot(at index: UInt64, confState: ConfState, data: [UInt8]) throws(CairnError) {
        let snapshot: Snapshot
        do {
            snapshot = try memory.createSnapshot(at: index, confState: confState, data: data)
        } catch {
            throw CairnError(.invalidArgument, "cannot snapshot at \(index)", cause: error)
        }
        try snapshots.save(snapshot)
        let compactTo = index > entriesKeptBehindSnapshot ? index - entriesKeptBehindSnapshot : 0
        if compactTo >= firstIndex {
            do {
                try memory.compact(to: compactTo)
            } catch {
                throw CairnError(.internal, "cannot compact to \(compactTo)", cause: error)
            }
        }
        // The WAL is rewritten to hold just what memory holds: snapshot marker, hard state, the
        // entries after the compaction point.
        // (Entries kept behind the snapshot in memory are not rewritten: after a restart the
        // log starts at the snapshot, which is all correctness needs.)
        let kept = (try? memory.entries((index + 1)..<(memory.lastIndex + 1), bytesMax: Int.max)) ?? []
        try wal.rewrite([.compacted(snapshot.metadata), .entries(kept), .hardState(memory.hardState)])
    }

    public var walSegmentFiles: [FilePath] { wal.segmentFiles }
}
