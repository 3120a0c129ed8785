import CairnCore
import Foundation
import MetaState
import RaftRuntime
import Synchronization

/// The metadata state machine as a Raft replica runs it: `MetaStateMachine` (which knows
/// nothing of Raft) behind the runtime's `ReplicatedStateMachine` protocol, plus the
/// read path that answers linearizable reads without going through the log.
///
/// Called on the node's Raft thread only.
public final class MetaMachine: ReplicatedStateMachine {
    public let state: MetaStateMachine

    public init(limits: MetaLimits = MetaLimits()) {
        state = MetaStateMachine(limits: limits)
    }

    public func apply(_ command: [UInt8], at index: UInt64) -> [UInt8] { state.apply(command, at: index) }
    public func snapshot() -> [UInt8] { state.snapshot() }
    public func restore(_ snapshot: [UInt8]) throws(CairnError) { try state.restore(snapshot) }

    /// Answers a read-only operation from the applied state (the caller has waited for its
    /// read index). A mutation here is a caller bug answered with EINVAL, not a crash.
    public func read(_ command: MetaCommand) -> MetaReply {
        guard !command.operation.isMutation else { return .failure(.EINVAL) }
        var view = state.namespace  // copy-on-write: a read never writes, so nothing is copied
        return view.apply(command)
    }
}

/// The leader's clock as the state machine sees it: wall-clock time, never earlier than a
/// time it already gave out (a step back of the system clock does not move file times back
/// within one leader's term).
final class CommandClock: Sendable {
    private let last = Mutex(Timestamp.zero)

    func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        let wall = Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: UInt32(spec.tv_nsec))
        return last.withLock { last in
            last = max(last, wall)
            return last
        }
    }
}
