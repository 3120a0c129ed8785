import CairnCore

/// The application a `RaftNode` replicates. Every method is called on the node's Raft thread
/// only, in log order, so an implementation needs no locks of its own.
public protocol ReplicatedStateMachine: AnyObject, SendableMetatype {
    /// Applies one committed command and returns the reply for its proposer. Must be
    /// deterministic: every replica applies the same commands to the same state and must end
    /// in the same state. A command it cannot make sense of is answered with an error reply,
    /// never a crash (the log is replicated input).
    func apply(_ command: [UInt8], at index: UInt64) -> [UInt8]
    /// The whole state, serialized (for snapshots).
    func snapshot() -> [UInt8]
    /// Replaces the whole state with a snapshot's.
    /// - Throws: `.corrupt` if the bytes do not decode.
    func restore(_ snapshot: [UInt8]) throws(CairnError)
}
