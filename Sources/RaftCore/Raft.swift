/// The Raft state machine of one node (etcd's `raft` struct). Single-threaded and not `Sendable` by design: the
/// owner (a `RawNode`) serializes every call. It never performs I/O: it only appends to `messages`, `readStates`
/// and the unstable log, which `RawNode` hands out in `Ready`.
final class Raft {
    let id: NodeID
    let config: Config
    var term: UInt64 = 0
    var vote: NodeID = noNode
    var lead: NodeID = noNode
    private(set) var role: RaftRole = .follower
    var log: RaftLog
    var tracker: ProgressTracker
    var isLearner = false
    /// Outgoing messages, released by `RawNode` only together with the state they depend on (see `Ready`).
    var messages: [Message] = []
    var readStates: [ReadState] = []
    var electionElapsed = 0
    var heartbeatElapsed = 0
    var randomizedElectionTimeout = 0
    var leadTransferee: NodeID = noNode
    /// A leader proposes no conf change while one at an index above `applied` may be pending.
    var pendingConfIndex: UInt64 = 0
    /// Payload bytes proposed by this leader and not yet applied (back-pressure).
    var uncommittedBytes = 0
    var readIndexQueue: ReadIndexQueue
    /// Reads that arrived before this leader committed an entry of its term; answered once it has.
    var pendingReadIndexMessages: [Message] = []
    /// The application's clock while a call that passed one (`tick(now:)`, `readIndex(context:now:)`) runs; nil
    /// otherwise, so that no lease is ever judged by a stale time.
    var clock: UInt64?
    /// Ticks since this node started, counted up to `electionTicks` (lease reads: a node ignores votes until
    /// then, since before a restart it may have acknowledged a leader that still holds a lease).
    var ticksSinceStart = 0
    /// Leader, lease reads: the heartbeat rounds sent with a clock (newest last, at most `leaseRoundsMax`), the
    /// newest round each peer acknowledged, and whether the lease is given up for the rest of the term.
    var leaseRounds: [(round: UInt64, sentAt: UInt64)] = []
    var nextLeaseRound: UInt64 = 1
    var leaseAcks: [NodeID: UInt64] = [:]
    var leaseRevoked = false
    static let leaseRoundsMax = 64
    /// A snapshot being reassembled from chunks (followers only; volatile).
    var snapshotAssembly: SnapshotAssembly?
    var random: SplitMix64
    /// Role-specific behaviour, swapped on every role change (as etcd's `r.step` / `r.tick`).
    private var stepRole: (Raft) -> (Message) -> Void = Raft.stepFollower
    private var tickRole: (Raft) -> () -> Void = Raft.tickElection

    var bugs: PlantedBugs { config.plantedBugs }

    struct SnapshotAssembly {
        var metadata: SnapshotMetadata
        var totalBytes: UInt64
        var data: [UInt8]
    }

    init(config: Config, storage: any LogStorage) {
        id = config.id
        self.config = config
        log = RaftLog(storage: storage, committedEntriesBytesMax: config.committedEntriesBytesMax)
        tracker = ProgressTracker(inflightMessagesMax: config.inflightMessagesMax, inflightBytesMax: config.inflightBytesMax)
        readIndexQueue = ReadIndexQueue(requestsMax: config.readIndexRequestsMax)
        // Mix the node id in so that nodes sharing a seed still draw different timeouts.
        random = SplitMix64(seed: config.randomSeed ^ (config.id &* 0x9E37_79B9_7F4A_7C15))

        let (hardState, confState) = storage.initialState()
        tracker.setMembership(confState, nextIndex: log.lastIndex + 1)
        isLearner = tracker.progress[id]?.isLearner ?? false
        if !hardState.isEmpty {
            // The commit index may be persisted lazily (`Ready.mustSync` is false for it), so it can lag the
            // snapshot, which only ever holds committed state; it can never exceed the log.
            precondition(hardState.commit <= log.lastIndex,
                "persisted commit \(hardState.commit) beyond the last index \(log.lastIndex)")
            log.commitTo(hardState.commit)
            term = hardState.term
            vote = hardState.vote
        }
        if config.applied > 0 { log.restoreIndexes(committed: log.committed, applied: config.applied) }
        becomeFollower(term: term, lead: noNode)
    }

    // MARK: - State to persist

    /// The hard state to persist. With the planted `unpersistedVote` bug the vote is left out, so a restart
    /// forgets it.
    var hardState: HardState {
        HardState(term: term, vote: bugs.contains(.unpersistedVote) ? noNode : vote, commit: log.committed)
    }

    var softState: SoftState { SoftState(leader: lead, role: role) }

    // MARK: - Sending

    func send(_ message: Message) {
        var m = message
        if m.from == noNode { m.from = id }
        switch m.kind {
        case .vote, .voteResponse, .preVote, .preVoteResponse:
            // Campaign messages carry an explicit term (pre-vote asks about term + 1).
            precondition(m.term != 0, "\(m.kind) without a term")
        case .readIndex:
            // Forwarded to the leader as a local request: no term, so a term change never drops it.
            m.term = 0
        default:
            if m.term == 0 { m.term = term }
        }
        messages.append(m)
    }

    // MARK: - Role changes

    private func reset(term newTerm: UInt64) {
        if term != newTerm {
            term = newTerm
            vote = noNode
        }
        lead = noNode
        electionElapsed = 0
        heartbeatElapsed = 0
        resetRandomizedElectionTimeout()
        abortLeaderTransfer()
        tracker.resetVotes()
        let last = log.lastIndex
        for member in tracker.memberIDs {
            var pr = Progress(next: last + 1, inflightMessagesMax: config.inflightMessagesMax,
                              inflightBytesMax: config.inflightBytesMax,
                              isLearner: tracker.progress[member]?.isLearner ?? false)
            if member == id { pr.match = last }
            tracker.progress[member] = pr
        }
        pendingConfIndex = 0
        uncommittedBytes = 0
        readIndexQueue = ReadIndexQueue(requestsMax: config.readIndexRequestsMax)
        pendingReadIndexMessages = []
        leaseRounds = []
        leaseAcks = [:]
        leaseRevoked = false
    }

    func becomeFollower(term newTerm: UInt64, lead newLead: NodeID) {
        stepRole = Raft.stepFollower
        tickRole = Raft.tickElection
        reset(term: newTerm)
        lead = newLead
        role = .follower
    }

    func becomePreCandidate() {
        precondition(role != .leader, "leader cannot become pre-candidate")
        // Neither the term nor the vote changes: a pre-vote must not disturb anyone.
        stepRole = Raft.stepCandidate
        tickRole = Raft.tickElection
        tracker.resetVotes()
        lead = noNode
        role = .preCandidate
    }

    func becomeCandidate() {
        precondition(role != .leader, "leader cannot become candidate")
        stepRole = Raft.stepCandidate
        tickRole = Raft.tickElection
        reset(term: term + 1)
        vote = id
        role = .candidate
    }

    func becomeLeader() {
        precondition(role != .follower, "follower cannot become leader without an election")
        stepRole = Raft.stepLeader
        tickRole = Raft.tickHeartbeat
        reset(term: term)
        lead = id
        role = .leader
        tracker.progress[id]?.becomeReplicate()
        tracker.progress[id]?.recentActive = true
        // The no-op: committing it commits everything before it (the current-term commit rule, §5.4.2).
        let appended = appendEntries([Entry(term: term, index: 0)])
        precondition(appended, "a new leader's empty entry cannot be refused")
        // No conf change until everything up to and including the no-op is applied: an entry of this term
        // must be committed first (the fix for single-server changes, Ongaro 2015). Stricter than etcd, which
        // sets this before appending the no-op.
        pendingConfIndex = log.lastIndex
    }

    private func resetRandomizedElectionTimeout() {
        randomizedElectionTimeout = config.electionTicks + random.int(in: 0...(config.electionTicks - 1))
    }

    var pastElectionTimeout: Bool { electionElapsed >= randomizedElectionTimeout }

    /// Whether this node may campaign: a voter that is not waiting to install a snapshot.
    var promotable: Bool {
        guard let pr = tracker.progress[id] else { return false }
        return !pr.isLearner && !log.hasPendingSnapshot
    }

    // MARK: - Ticks

    func tick() {
        if ticksSinceStart < config.electionTicks { ticksSinceStart += 1 }
        tickRole(self)()
    }

    func tickElection() {
        electionElapsed += 1
        if promotable && pastElectionTimeout {
            electionElapsed = 0
            step(Message(kind: .hup, from: id))
        }
    }

    func tickHeartbeat() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= config.electionTicks {
            electionElapsed = 0
            if config.checkQuorum { step(Message(kind: .checkQuorum, from: id)) }
            // A transfer that did not finish within an election timeout is given up.
            if role == .leader && leadTransferee != noNode { abortLeaderTransfer() }
        }
        guard role == .leader else { return }
        if heartbeatElapsed >= config.heartbeatTicks {
            heartbeatElapsed = 0
            step(Message(kind: .beat, from: id))
        }
    }

    // MARK: - Elections

    enum CampaignKind {
        case preElection
        case election
        case transfer
    }

    func hup(_ kind: CampaignKind) {
        guard role != .leader else { return }
        guard promotable else { return }
        // Campaigning with a committed but unapplied conf change could win under the wrong membership.
        guard !hasUnappliedConfChanges() else { return }
        campaign(kind)
    }

    private func hasUnappliedConfChanges() -> Bool {
        guard log.applied < log.committed else { return false }
        var lo = max(log.applied + 1, log.firstIndex)
        let hi = log.committed + 1
        // Bounded pages: each read returns at least one entry, so the loop ends after at most hi - lo rounds.
        while lo < hi {
            let page: [Entry]
            do { page = try log.entries(lo..<hi, bytesMax: config.committedEntriesBytesMax) } catch {
                preconditionFailure("unapplied entries \(lo)..<\(hi) unavailable: \(error)")
            }
            if page.contains(where: { $0.kind == .confChange }) { return true }
            lo += UInt64(page.count)
        }
        return false
    }

    func campaign(_ kind: CampaignKind) {
        let voteKind: MessageKind
        let campaignTerm: UInt64
        if kind == .preElection {
            becomePreCandidate()
            voteKind = .preVote
            campaignTerm = term + 1
        } else {
            becomeCandidate()
            voteKind = .vote
            campaignTerm = term
        }
        if poll(id, granted: true) == .won {
            // A single voter wins at once.
            if kind == .preElection { campaign(.election) } else { becomeLeader() }
            return
        }
        for voter in tracker.voters.voters where voter != id {
            send(Message(kind: voteKind, to: voter, term: campaignTerm, logTerm: log.lastTerm, index: log.lastIndex,
                         context: kind == .transfer ? campaignTransferContext : []))
        }
    }

    func poll(_ from: NodeID, granted: Bool) -> VoteResult {
        tracker.recordVote(from, granted: granted)
        return tracker.tallyVotes().result
    }

    // MARK: - Step

    func step(_ m: Message) {
        if m.term == 0 {
            // Local message.
        } else if m.term > term {
            if m.kind == .vote || m.kind == .preVote {
                let force = m.context == campaignTransferContext
                // Leader lease (check-quorum): a node that heard from a leader within the minimum election
                // timeout ignores votes, so a partitioned node rejoining cannot depose a healthy leader. With
                // lease reads, so does a node that started less than an election timeout ago.
                let inLease = config.checkQuorum
                    && ((lead != noNode && electionElapsed < config.electionTicks)
                        || (config.leaseNanos > 0 && ticksSinceStart < config.electionTicks))
                if !force && inLease { return }
            }
            switch m.kind {
            case .preVote:
                break  // A pre-vote never changes our term.
            case .preVoteResponse where !m.reject:
                break  // Granted pre-votes carry the future term; we adopt it only when we campaign.
            case .append, .heartbeat, .snapshot:
                becomeFollower(term: m.term, lead: m.from)
            default:
                becomeFollower(term: m.term, lead: noNode)
            }
        } else if m.term < term {
            if (config.checkQuorum || config.preVote) && (m.kind == .heartbeat || m.kind == .append) {
                // Tell a stale leader about the newer term; otherwise, with check-quorum or pre-vote, a node
                // partitioned with a higher term could never rejoin.
                send(Message(kind: .appendResponse, to: m.from, term: term))
            } else if m.kind == .preVote {
                send(Message(kind: .preVoteResponse, to: m.from, term: term, reject: true))
            }
            return
        }

        switch m.kind {
        case .hup:
            hup(config.preVote ? .preElection : .election)
        case .vote, .preVote:
            let canVote = vote == m.from || (vote == noNode && lead == noNode) || (m.kind == .preVote && m.term > term)
            let upToDate = bugs.contains(.noUpToDateCheck) || log.isUpToDate(lastIndex: m.index, term: m.logTerm)
            let responseKind: MessageKind = m.kind == .vote ? .voteResponse : .preVoteResponse
            if canVote && upToDate {
                // Answer in the request's term: for a pre-vote that is the future term the candidate asks about.
                send(Message(kind: responseKind, to: m.from, term: m.term))
                if m.kind == .vote {
                    electionElapsed = 0
                    vote = m.from
                }
            } else {
                send(Message(kind: responseKind, to: m.from, term: term, reject: true))
            }
        default:
            stepRole(self)(m)
        }
    }

    // MARK: - Leader transfer

    func abortLeaderTransfer() { leadTransferee = noNode }

    func sendTimeoutNow(_ to: NodeID) {
        // The transferee's campaign overrides the voters' leases, at any time from now on: no lease reads for
        // the rest of this term.
        leaseRevoked = true
        send(Message(kind: .timeoutNow, to: to))
    }

    // MARK: - Membership

    /// Applies a committed conf change (called when the application has applied its entry).
    func applyConfChange(_ change: ConfChange) {
        // A change refused here is refused identically on every node (same log, same membership).
        guard let newConf = tracker.confState.applying(change) else { return }
        applyMembership(newConf)
    }

    func applyMembership(_ conf: ConfState) {
        // A new member starts probing at the last index (not after it), so the first append carries an entry
        // and gets an answer at once.
        tracker.setMembership(conf, nextIndex: max(log.lastIndex, 1))
        let pr = tracker.progress[id]
        isLearner = pr?.isLearner ?? false
        guard role == .leader else { return }
        if pr == nil || isLearner {
            // Removed (or demoted): stop leading; the others elect a leader among the new membership.
            becomeFollower(term: term, lead: noNode)
            return
        }
        if leadTransferee != noNode && !tracker.isVoter(leadTransferee) { abortLeaderTransfer() }
        // The quorum changed: something may now be committed.
        if maybeCommit() {
            bcastAppend()
        } else {
            for member in tracker.memberIDs where member != id { _ = maybeSendAppend(to: member, sendIfEmpty: false) }
        }
    }

    /// Installs a snapshot from the leader into the log. Returns false if it is stale or does not include us.
    func restore(_ snapshot: Snapshot) -> Bool {
        let meta = snapshot.metadata
        guard meta.index > log.committed else { return false }
        guard role == .follower else {
            // Defensive, as etcd: only followers install snapshots.
            becomeFollower(term: term + 1, lead: noNode)
            return false
        }
        // Unlike etcd we accept a snapshot whose membership does not include us yet: a node joining as a
        // learner is sent the leader's latest snapshot, which may predate its addition; it then learns its own
        // addition from the log. Until then it is not in its own progress map, so it never campaigns.
        if log.matchTerm(index: meta.index, term: meta.term) {
            // We already have the entry: just fast-forward the commit index.
            log.commitTo(meta.index)
            return false
        }
        log.restore(snapshot)
        tracker.setMembership(meta.confState, nextIndex: log.lastIndex + 1)
        isLearner = tracker.progress[id]?.isLearner ?? false
        return true
    }
}
