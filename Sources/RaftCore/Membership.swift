/// The membership of a Raft group: who votes and who only receives the log.
/// Both lists are kept sorted so that iteration order never depends on hashing.
public struct ConfState: Sendable, Equatable, Hashable {
    public private(set) var voters: [NodeID]
    public private(set) var learners: [NodeID]

    public init(voters: [NodeID] = [], learners: [NodeID] = []) {
        self.voters = Array(Set(voters)).sorted()
        self.learners = Array(Set(learners).subtracting(voters)).sorted()
    }

    public func contains(_ id: NodeID) -> Bool { voters.contains(id) || learners.contains(id) }
}

/// A single-server membership change (Raft thesis §4.1, with the known fixes):
/// a leader proposes one only after it has applied everything up to its own first entry of the term
/// (so an entry of its term is committed first), at most one is pending at a time, and no node campaigns while a
/// committed change is not yet applied. It takes effect on each node when that node applies the entry.
public struct ConfChange: Sendable, Equatable, Hashable {
    public enum Kind: UInt8, Sendable, Equatable, Hashable {
        /// Add a voter, or promote an existing learner to a voter.
        case addVoter = 0
        /// Add a non-voting learner that receives the log and can be promoted later.
        case addLearner = 1
        /// Remove a voter or learner.
        case removeNode = 2
    }

    public var kind: Kind
    public var nodeID: NodeID
    /// Opaque application data (e.g. the new node's address).
    public var context: [UInt8]

    public init(kind: Kind, nodeID: NodeID, context: [UInt8] = []) {
        self.kind = kind
        self.nodeID = nodeID
        self.context = context
    }
}

extension ConfState {
    /// The membership after applying `change`, or `nil` if the change is not allowed from this membership
    /// (removing the last voter, demoting a voter to a learner, node id 0). Every node evaluates this
    /// identically, so an entry that is refused is refused everywhere.
    public func applying(_ change: ConfChange) -> ConfState? {
        guard change.nodeID != noNode else { return nil }
        switch change.kind {
        case .addVoter:
            return ConfState(voters: voters + [change.nodeID], learners: learners.filter { $0 != change.nodeID })
        case .addLearner:
            if voters.contains(change.nodeID) { return nil }
            return ConfState(voters: voters, learners: learners + [change.nodeID])
        case .removeNode:
            let newVoters = voters.filter { $0 != change.nodeID }
            if newVoters.isEmpty { return nil }
            return ConfState(voters: newVoters, learners: learners.filter { $0 != change.nodeID })
        }
    }
}
