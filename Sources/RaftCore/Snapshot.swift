/// Where a snapshot sits in the log, and the membership in force at that point.
public struct SnapshotMetadata: Sendable, Equatable, Hashable {
    public var index: UInt64
    public var term: UInt64
    public var confState: ConfState

    public init(index: UInt64 = 0, term: UInt64 = 0, confState: ConfState = ConfState()) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// A state-machine snapshot: the application's serialized state as of `metadata.index`.
public struct Snapshot: Sendable, Equatable, Hashable {
    public var metadata: SnapshotMetadata
    public var data: [UInt8]

    public init(metadata: SnapshotMetadata = SnapshotMetadata(), data: [UInt8] = []) {
        self.metadata = metadata
        self.data = data
    }

    /// A snapshot at index 0 carries no state (the initial membership at most).
    public var isEmpty: Bool { metadata.index == 0 }
}
