/// Why a proposal or request was refused.
public struct ProposalError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Only the leader accepts proposals; `leaderHint` names the leader if known.
        case notLeader
        /// A leadership transfer is in progress: proposals are refused until it ends.
        case transferInProgress
        /// Uncommitted entries exceed `uncommittedEntriesBytesMax`: retry later (back-pressure).
        case uncommittedBytesExceeded
        /// A conf change is still pending (not applied), or the leader has not committed an entry of its term.
        case confChangePending
        /// The conf change is not allowed from the current membership.
        case invalidConfChange
        /// `readIndexRequestsMax` reads are already waiting.
        case readIndexQueueFull
        /// No leader is known to forward the request to.
        case noLeader
    }

    public var code: Code
    public var leaderHint: NodeID
    public var message: String

    public init(_ code: Code, leaderHint: NodeID = noNode, _ message: String) {
        self.code = code
        self.leaderHint = leaderHint
        self.message = message
    }

    public var description: String { "ProposalError(\(code)): \(message)" }
}

/// Why `RawNode.step` refused a message from the network.
public struct StepError: Error, Sendable, Equatable {
    public enum Code: Sendable, Equatable {
        /// A local-only message kind arrived from outside.
        case localMessage
        /// A response from a node that is not a member.
        case unknownPeer
        /// The message is addressed to another node.
        case wrongRecipient
    }

    public var code: Code
    public var message: String
}

/// The replication state of one follower as the leader sees it (for tests, status pages and the simulator).
public struct ProgressStatus: Sendable, Equatable {
    public var match: UInt64
    public var next: UInt64
    public var state: String
    public var isLearner: Bool
    public var inflightMessages: Int
    public var inflightBytes: Int
    public var recentActive: Bool
}

/// A snapshot of a node's state for inspection.
public struct RaftStatus: Sendable, Equatable {
    public var id: NodeID
    public var term: UInt64
    public var vote: NodeID
    public var leader: NodeID
    public var role: RaftRole
    public var commit: UInt64
    public var applied: UInt64
    public var firstIndex: UInt64
    public var lastIndex: UInt64
    public var confState: ConfState
    public var leadTransferee: NodeID
    public var uncommittedBytes: Int
}

/// A Raft node without I/O (etcd's RawNode): the application ticks it, feeds it messages and proposals, and
/// drains `ready()`. Thread-unsafe by design: one owner calls it from one thread (or actor) at a time.
public final class RawNode {
    let raft: Raft
    private var previousSoftState: SoftState
    private var previousHardState: HardState
    /// The Ready handed out and not yet advanced.
    private var outstanding: Ready?

    /// Creates a node over `storage` (which holds what this node persisted before, if it restarts).
    /// Throws if `config` is invalid.
    public init(config: Config, storage: any LogStorage) throws(ConfigError) {
        try config.validate()
        raft = Raft(config: config, storage: storage)
        previousSoftState = raft.softState
        previousHardState = raft.hardState
    }

    public var id: NodeID { raft.id }

    // MARK: - Inputs

    /// Advances the logical clock by one tick (heartbeats, election timeouts).
    public func tick() { raft.tick() }

    /// `tick()`, telling the node the time (`Config.leaseNanos`): a leader's heartbeats sent now count towards
    /// its lease. `now` is nanoseconds of a monotonic clock, never smaller than in an earlier call.
    public func tick(now: UInt64) {
        raft.clock = now
        defer { raft.clock = nil }
        raft.tick()
    }

    /// Starts an election now (as if the election timeout had elapsed).
    public func campaign() { raft.step(Message(kind: .hup, from: raft.id)) }

    /// Feeds a message received from a peer.
    public func step(_ message: Message) throws(StepError) {
        guard !message.kind.isLocal else {
            throw StepError(code: .localMessage, message: "\(message.kind) cannot come from the network")
        }
        guard message.to == raft.id else {
            throw StepError(code: .wrongRecipient, message: "message for \(message.to) delivered to \(raft.id)")
        }
        if message.kind.isResponse && raft.tracker.progress[message.from] == nil && message.kind != .readIndexResponse
            && message.kind != .voteResponse && message.kind != .preVoteResponse
        {
            throw StepError(code: .unknownPeer, message: "\(message.kind) from non-member \(message.from)")
        }
        raft.step(message)
    }

    /// Proposes application data. Throws unless this node is a leader able to accept it now.
    public func propose(_ data: [UInt8]) throws(ProposalError) {
        try checkCanPropose()
        guard raft.appendEntries([Entry(term: 0, index: 0, kind: .normal, data: data)]) else {
            throw ProposalError(.uncommittedBytesExceeded, "\(raft.uncommittedBytes) uncommitted bytes")
        }
        raft.bcastAppend()
    }

    /// Proposes several commands at once: one append to the log and one round of append messages to each
    /// follower, instead of one per command (how a driver batches the proposals that queued up while it was
    /// busy with an fsync). All or nothing: refused as a whole by the same checks as `propose(_:)`.
    public func propose(batch: [[UInt8]]) throws(ProposalError) {
        guard !batch.isEmpty else { return }
        try checkCanPropose()
        guard raft.appendEntries(batch.map { Entry(term: 0, index: 0, kind: .normal, data: $0) }) else {
            throw ProposalError(.uncommittedBytesExceeded, "\(raft.uncommittedBytes) uncommitted bytes")
        }
        raft.bcastAppend()
    }

    /// Proposes a membership change. One at a time: refused while an earlier one is not applied, and before the
    /// leader has applied its own first entry of the term.
    public func proposeConfChange(_ change: ConfChange) throws(ProposalError) {
        try checkCanPropose()
        guard raft.pendingConfIndex <= raft.log.applied else {
            throw ProposalError(.confChangePending,
                "conf change at \(raft.pendingConfIndex) not applied yet (applied \(raft.log.applied))")
        }
        guard raft.tracker.confState.applying(change) != nil else {
            throw ProposalError(.invalidConfChange, "\(change) not allowed from \(raft.tracker.confState)")
        }
        guard raft.appendEntries([Entry(term: 0, index: 0, kind: .confChange, data: change.encode())]) else {
            throw ProposalError(.uncommittedBytesExceeded, "\(raft.uncommittedBytes) uncommitted bytes")
        }
        raft.pendingConfIndex = raft.log.lastIndex
        raft.bcastAppend()
    }

    private func checkCanPropose() throws(ProposalError) {
        guard raft.role == .leader else {
            throw ProposalError(.notLeader, leaderHint: raft.lead, "node \(raft.id) is \(raft.role)")
        }
        guard raft.leadTransferee == noNode else {
            throw ProposalError(.transferInProgress, "transferring leadership to \(raft.leadTransferee)")
        }
    }

    /// Requests a linearizable read. When it is safe, a `ReadState` with `context` appears in a `Ready`; the
    /// read may be served once the state machine has applied its index. `context` must be unique among pending
    /// reads. Followers forward the request to the leader.
    public func readIndex(context: [UInt8]) throws(ProposalError) {
        try readIndex(context: context, clock: nil)
    }

    /// `readIndex(context:)`, telling the node the time (as `tick(now:)`): a leader that holds its lease
    /// (`Config.leaseNanos`) makes the read safe at once, with no heartbeat round.
    public func readIndex(context: [UInt8], now: UInt64) throws(ProposalError) {
        try readIndex(context: context, clock: now)
    }

    /// Whether this node is a leader holding its lease at `now` (`Config.leaseNanos`): a read now would be
    /// safe at once.
    public func holdsLease(now: UInt64) -> Bool { raft.holdsLease(at: now) }

    private func readIndex(context: [UInt8], clock: UInt64?) throws(ProposalError) {
        raft.clock = clock
        defer { raft.clock = nil }
        if raft.role == .leader {
            guard !raft.readIndexQueue.isFull, raft.pendingReadIndexMessages.count < raft.config.readIndexRequestsMax
            else { throw ProposalError(.readIndexQueueFull, "\(raft.config.readIndexRequestsMax) reads pending") }
        } else if raft.lead == noNode {
            throw ProposalError(.noLeader, "no leader to forward the read to")
        }
        raft.step(Message(kind: .readIndex, from: raft.id, context: context))
    }

    /// Asks the leader to hand leadership to `transferee` (forwarded if this node is a follower).
    public func transferLeadership(to transferee: NodeID) {
        raft.step(Message(kind: .transferLeader, from: transferee, to: raft.id))
    }

    /// Tells the leader that a message to `peer` could not be delivered: stop pipelining to it.
    public func reportUnreachable(_ peer: NodeID) {
        raft.step(Message(kind: .unreachable, from: peer, to: raft.id))
    }

    // MARK: - Outputs

    /// Whether `ready()` has anything to hand out.
    public var hasReady: Bool {
        guard outstanding == nil else { return false }
        if raft.softState != previousSoftState { return true }
        if raft.hardState != previousHardState { return true }
        if raft.log.unstable.snapshot != nil { return true }
        if !raft.log.unstable.entries.isEmpty { return true }
        if !raft.messages.isEmpty || !raft.readStates.isEmpty { return true }
        return raft.log.hasNextCommittedEntries
    }

    /// Hands out what changed since the last `Ready`, or nil if nothing did (or a Ready is still outstanding).
    /// The caller must process it as `Ready` describes and then call `advance(_:)`.
    public func ready() -> Ready? {
        guard hasReady else { return nil }
        var rd = Ready()
        let soft = raft.softState
        if soft != previousSoftState {
            rd.softState = soft
            previousSoftState = soft
        }
        let hard = raft.hardState
        if hard != previousHardState {
            rd.hardState = hard
            rd.mustSync = hard.term != previousHardState.term || hard.vote != previousHardState.vote
            previousHardState = hard
        }
        rd.snapshot = raft.log.unstable.snapshot
        rd.entries = raft.log.unstable.entries
        if !rd.entries.isEmpty || rd.snapshot != nil { rd.mustSync = true }
        rd.committedEntries = raft.log.nextCommittedEntries()
        rd.messages = raft.messages
        rd.readStates = raft.readStates
        raft.messages = []
        raft.readStates = []
        outstanding = rd
        return rd
    }

    /// Acknowledges that `ready` was persisted, sent and applied. Conf changes among its committed entries take
    /// effect here.
    public func advance(_ ready: Ready) {
        precondition(outstanding == ready, "advance with a Ready that was not the outstanding one")
        outstanding = nil
        if let last = ready.entries.last { raft.log.stableTo(index: last.index, term: last.term) }
        if let snapshot = ready.snapshot { raft.log.stableSnapshotTo(index: snapshot.metadata.index) }
        for entry in ready.committedEntries {
            raft.log.appliedTo(entry.index)
            if entry.kind == .confChange {
                // Entries come from our own log, which only a leader's proposeConfChange fills with valid
                // encodings; a decoding failure means the log is corrupt.
                guard let change = try? ConfChange(decoding: entry.data) else {
                    preconditionFailure("undecodable conf change at index \(entry.index)")
                }
                raft.applyConfChange(change)
            }
        }
        if raft.role == .leader { raft.reduceUncommittedBytes(ready.committedEntries) }
    }

    // MARK: - Inspection

    /// This node's role, without building a whole `status`.
    public var role: RaftRole { raft.role }

    public var status: RaftStatus {
        RaftStatus(id: raft.id, term: raft.term, vote: raft.vote, leader: raft.lead, role: raft.role,
                   commit: raft.log.committed, applied: raft.log.applied, firstIndex: raft.log.firstIndex,
                   lastIndex: raft.log.lastIndex, confState: raft.tracker.confState,
                   leadTransferee: raft.leadTransferee, uncommittedBytes: raft.uncommittedBytes)
    }

    /// The membership in force (as of the applied index): what a snapshot taken now must record.
    public var confState: ConfState { raft.tracker.confState }

    /// The leader's view of each member, sorted by id (empty unless leader).
    public var progress: [(id: NodeID, status: ProgressStatus)] {
        guard raft.role == .leader else { return [] }
        return raft.tracker.memberIDs.compactMap { member in
            guard let pr = raft.tracker.progress[member] else { return nil }
            return (member, ProgressStatus(match: pr.match, next: pr.next, state: pr.state.description,
                                           isLearner: pr.isLearner, inflightMessages: pr.inflights.count,
                                           inflightBytes: pr.inflights.bytes, recentActive: pr.recentActive))
        }
    }

    /// The term of the entry at `index` in this node's log (persisted or not), nil if compacted or absent.
    public func term(at index: UInt64) -> UInt64? { raft.log.term(at: index) }

    /// Entries in `range` of this node's log (persisted or not), limited to `bytesMax` (at least one).
    public func entries(_ range: Range<UInt64>, bytesMax: Int = Int.max) throws(StorageError) -> [Entry] {
        try raft.log.entries(range, bytesMax: bytesMax)
    }
}
