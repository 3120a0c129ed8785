/// Why storage could not answer. The core handles `compacted` and `unavailable` itself (by sending a snapshot
/// or by treating the index as out of range); anything else is a broken invariant for the core.
public struct StorageError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The requested index is at or below the last snapshot: its entry is gone.
        case compacted
        /// The requested index is beyond the last stored entry.
        case unavailable
        /// A snapshot older than (or equal to) the one already held was offered.
        case snapshotOutOfDate
        /// The application is still producing a snapshot; try again later.
        case snapshotTemporarilyUnavailable
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "StorageError(\(code)): \(message)" }
}

/// The durable log as the core sees it: everything the application has persisted (the core keeps what is not yet
/// persisted in its own unstable log). The runtime implements this over its write-ahead log; `MemoryStorage`
/// implements it in memory. Called only from the thread that owns the `RawNode`.
public protocol LogStorage: AnyObject {
    /// The persisted hard state and the membership of the latest snapshot. Throws nothing: a storage that
    /// could not load its state must fail before it is handed to a node.
    func initialState() -> (HardState, ConfState)
    /// The hard state last persisted (what `initialState()` returns first).
    var hardState: HardState { get }
    /// Entries with indexes in `range`, as many as fit in `bytesMax` but at least one.
    /// Throws `.compacted` if `range.lowerBound <= snapshot index`, `.unavailable` if `range.upperBound > lastIndex + 1`.
    func entries(_ range: Range<UInt64>, bytesMax: Int) throws(StorageError) -> [Entry]
    /// The term of the entry at `index`; the snapshot's index answers with the snapshot's term.
    /// Throws `.compacted` below the snapshot index, `.unavailable` beyond `lastIndex`.
    func term(at index: UInt64) throws(StorageError) -> UInt64
    /// Index of the first entry still held (snapshot index + 1).
    var firstIndex: UInt64 { get }
    /// Index of the last entry held (the snapshot index if there are none after it).
    var lastIndex: UInt64 { get }
    /// The latest snapshot. Throws `.snapshotTemporarilyUnavailable` while one is being produced.
    func snapshot() throws(StorageError) -> Snapshot
}
