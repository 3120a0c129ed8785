/// Everything the application must do after the node changed, in this order:
///
/// 1. persist `snapshot` (if any), then `entries`, then `hardState` (if any) — and sync them if `mustSync`;
/// 2. only then send `messages`: votes, acknowledgements and appends promise what was just persisted;
/// 3. apply `committedEntries` (and restore the state machine from `snapshot` first, if any);
/// 4. serve the reads in `readStates` once the state machine has applied their index;
/// 5. call `RawNode.advance(_:)` with this value.
public struct Ready: Sendable, Equatable {
    /// Set when the leader or role changed.
    public var softState: SoftState?
    /// Set when term, vote or commit changed.
    public var hardState: HardState?
    /// Reads that became safe.
    public var readStates: [ReadState] = []
    /// Entries to append to stable storage (they may replace a suffix of it).
    public var entries: [Entry] = []
    /// A snapshot received from the leader, to persist and to restore the state machine from.
    public var snapshot: Snapshot?
    /// Committed entries to apply, in order.
    public var committedEntries: [Entry] = []
    /// Messages to send after persisting.
    public var messages: [Message] = []
    /// Whether step 1 must be made durable (fsync) before step 2: true when entries, the term or the vote
    /// changed. A commit-index change alone may be written lazily.
    public var mustSync: Bool = false

    public init() {}
}
