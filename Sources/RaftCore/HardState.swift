/// The state every node must persist before it sends any message that depends on it:
/// the current term, the vote cast in that term, and the commit index.
public struct HardState: Sendable, Equatable, Hashable {
    public var term: UInt64
    public var vote: NodeID
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: NodeID = noNode, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    public var isEmpty: Bool { self == HardState() }
}
