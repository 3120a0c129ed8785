/// A Raft node's identity. `0` is reserved to mean "no node" (no leader known, no vote cast), as in etcd-io/raft.
public typealias NodeID = UInt64

/// The reserved identity meaning "none": no leader, no vote.
public let noNode: NodeID = 0

/// The role a node plays in its current term. Each role swaps in its own step and tick functions.
public enum RaftRole: UInt8, Sendable, Equatable, CustomStringConvertible {
    case follower = 0
    /// Pre-vote phase: asks whether it *could* win before disturbing anyone's term (Raft thesis §9.6).
    case preCandidate = 1
    case candidate = 2
    case leader = 3

    public var description: String {
        switch self {
        case .follower: "StateFollower"
        case .preCandidate: "StatePreCandidate"
        case .candidate: "StateCandidate"
        case .leader: "StateLeader"
        }
    }
}

/// Volatile state that the application may want to observe (who leads, what we are). Not persisted.
public struct SoftState: Sendable, Equatable {
    public var leader: NodeID
    public var role: RaftRole

    public init(leader: NodeID, role: RaftRole) {
        self.leader = leader
        self.role = role
    }
}

/// A linearizable read that became safe: once the state machine has applied `index`, a read tagged `context`
/// may be served from local state.
public struct ReadState: Sendable, Equatable {
    public var index: UInt64
    public var context: [UInt8]

    public init(index: UInt64, context: [UInt8]) {
        self.index = index
        self.context = context
    }
}
