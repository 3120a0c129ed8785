/// The leader's behaviour: replication with flow control, commitment, reads, transfers, snapshots.
extension Raft {
    // MARK: - Proposals

    /// Appends entries to the leader's own log (terms and indexes assigned here). Returns false if the
    /// uncommitted-bytes bound refuses them.
    func appendEntries(_ entries: [Entry]) -> Bool {
        let last = log.lastIndex
        var numbered = entries
        for i in numbered.indices {
            numbered[i].term = term
            numbered[i].index = last + 1 + UInt64(i)
        }
        let bytes = numbered.payloadBytes
        // Always accept something when nothing is uncommitted, so one large entry cannot wedge the group.
        if uncommittedBytes > 0 && bytes > 0 && uncommittedBytes + bytes > config.uncommittedEntriesBytesMax {
            return false
        }
        uncommittedBytes += bytes
        let newLast = log.append(numbered)
        // The leader's own acknowledgement. Safe before persistence because the application persists a Ready's
        // entries before sending its messages, so no follower can acknowledge them before we have them.
        _ = tracker.progress[id]?.maybeUpdate(newLast)
        _ = maybeCommit()
        return true
    }

    func reduceUncommittedBytes(_ entries: [Entry]) {
        uncommittedBytes = max(0, uncommittedBytes - entries.payloadBytes)
    }

    /// Advances the commit index to what a quorum has stored, if that entry is of the current term.
    func maybeCommit() -> Bool {
        let quorumIndex = tracker.committedIndex()
        guard quorumIndex != UInt64.max else { return false }
        return log.maybeCommit(index: quorumIndex, term: term, ignoringTerm: bugs.contains(.figure8Commit))
    }

    var committedEntryInCurrentTerm: Bool { log.term(at: log.committed) == term }

    // MARK: - Replication

    func bcastAppend() {
        for member in tracker.memberIDs where member != id { _ = maybeSendAppend(to: member, sendIfEmpty: true) }
    }

    func bcastHeartbeat(context: [UInt8]) {
        let round = startLeaseRound()
        for member in tracker.memberIDs where member != id { sendHeartbeat(to: member, context: context, leaseRound: round) }
    }

    func sendHeartbeat(to: NodeID, context: [UInt8], leaseRound: UInt64 = 0) {
        // Never tell a follower to commit beyond what it is known to hold.
        let commit = min(tracker.progress[to]?.match ?? 0, log.committed)
        send(Message(kind: .heartbeat, to: to, index: leaseRound, commit: commit, context: context))
    }

    // MARK: - Lease reads

    /// Numbers a heartbeat round and records when it is sent, when lease reads are on and the caller passed a
    /// clock; 0 (no round) otherwise.
    func startLeaseRound() -> UInt64 {
        guard config.leaseNanos > 0, let now = clock, !leaseRevoked else { return 0 }
        let round = nextLeaseRound
        nextLeaseRound += 1
        if leaseRounds.count == Self.leaseRoundsMax { leaseRounds.removeFirst() }
        leaseRounds.append((round, now))
        return round
    }

    /// Whether this leader holds its lease at `now`: a quorum (itself included) acknowledged a round sent less
    /// than `leaseNanos` ago, it has committed an entry of its term, and it is not handing leadership over.
    func holdsLease(at now: UInt64) -> Bool {
        guard config.leaseNanos > 0, role == .leader, !leaseRevoked, leadTransferee == noNode,
              committedEntryInCurrentTerm else { return false }
        let round = tracker.voters.committedIndex { $0 == id ? UInt64.max : leaseAcks[$0] }
        guard round > 0, round != UInt64.max, let sent = leaseRounds.last(where: { $0.round == round }) else { return false }
        if bugs.contains(.unboundedLease) { return true }
        return now >= sent.sentAt && now - sent.sentAt < config.leaseNanos
    }

    /// Sends an append (or starts a snapshot) to `to` unless flow control holds it back. Returns whether a
    /// message was sent.
    @discardableResult
    func maybeSendAppend(to: NodeID, sendIfEmpty: Bool) -> Bool {
        guard var pr = tracker.progress[to] else { return false }
        if pr.isPaused { return false }
        let prevIndex = pr.next - 1
        guard let prevTerm = log.term(at: prevIndex) else { return sendSnapshot(to: to) }
        var entries: [Entry] = []
        let last = log.lastIndex
        if pr.next <= last {
            do {
                entries = try log.entries(pr.next..<(last + 1), bytesMax: config.messageBytesMax)
            } catch {
                guard error.code == .compacted else { preconditionFailure("entries for \(to): \(error)") }
                return sendSnapshot(to: to)
            }
        }
        if entries.isEmpty && !sendIfEmpty { return false }
        send(Message(kind: .append, to: to, logTerm: prevTerm, index: prevIndex, entries: entries,
                     commit: log.committed))
        pr.sentEntries(count: entries.count, bytes: entries.sizeBytes, lastIndex: prevIndex + UInt64(entries.count))
        tracker.progress[to] = pr
        return true
    }

    /// An empty append at the end of the in-flight window, not counted in it (see the heartbeat response).
    func sendWindowProbe(to: NodeID) {
        guard var pr = tracker.progress[to] else { return }
        guard let prevTerm = log.term(at: pr.next - 1) else {
            pr.becomeProbe()
            tracker.progress[to] = pr
            maybeSendAppend(to: to, sendIfEmpty: true)
            return
        }
        send(Message(kind: .append, to: to, logTerm: prevTerm, index: pr.next - 1, commit: log.committed))
    }

    // MARK: - Snapshots

    /// Starts an InstallSnapshot transfer to a follower whose next entry is compacted away.
    func sendSnapshot(to: NodeID) -> Bool {
        guard var pr = tracker.progress[to], pr.recentActive else { return false }
        let snapshot: Snapshot
        do { snapshot = try log.storage.snapshot() } catch {
            guard error.code == .snapshotTemporarilyUnavailable else { preconditionFailure("snapshot: \(error)") }
            return false
        }
        precondition(!snapshot.isEmpty, "need a non-empty snapshot to replace compacted entries")
        pr.becomeSnapshot(index: snapshot.metadata.index)
        tracker.progress[to] = pr
        sendSnapshotChunk(to: to, snapshot: snapshot, offset: 0)
        return true
    }

    /// Sends the chunk of `snapshot` starting at `offset`, at most `snapshotChunkBytesMax` bytes.
    func sendSnapshotChunk(to: NodeID, snapshot: Snapshot, offset: UInt64) {
        let total = UInt64(snapshot.data.count)
        precondition(offset <= total, "chunk offset \(offset) beyond snapshot size \(total)")
        let end = min(total, offset + UInt64(config.snapshotChunkBytesMax))
        send(Message(kind: .snapshot, to: to, snapshot: snapshot.metadata, snapshotOffset: offset,
                     snapshotBytes: total, snapshotChunk: Array(snapshot.data[Int(offset)..<Int(end)])))
    }

    /// (Re)sends the chunk the follower expects next. If storage now holds a newer snapshot the transfer
    /// restarts with it (the old one may be gone).
    func resendSnapshotChunk(to: NodeID) {
        guard var pr = tracker.progress[to], pr.state == .snapshot else { return }
        let snapshot: Snapshot
        do { snapshot = try log.storage.snapshot() } catch { return }
        if snapshot.metadata.index != pr.pendingSnapshot {
            pr.becomeSnapshot(index: snapshot.metadata.index)
            tracker.progress[to] = pr
        }
        guard pr.snapshotOffsetAcked <= UInt64(snapshot.data.count) else { return }
        sendSnapshotChunk(to: to, snapshot: snapshot, offset: pr.snapshotOffsetAcked)
    }

    // MARK: - Reads

    /// Answers a read request at `index`: locally (a `ReadState`) or to the follower that forwarded it.
    func respondToReadIndex(_ request: Message, index: UInt64) {
        if request.from == noNode || request.from == id {
            readStates.append(ReadState(index: index, context: request.context))
        } else {
            send(Message(kind: .readIndexResponse, to: request.from, index: index, context: request.context))
            // The follower can answer once it has applied `index`: without commit broadcasts it may not know
            // that `index` is committed until the next heartbeat.
            if !config.broadcastsCommit { maybeSendAppend(to: request.from, sendIfEmpty: true) }
        }
    }

    /// Queues a read behind a heartbeat round that will confirm we are still the leader.
    func startReadIndex(_ m: Message) {
        guard readIndexQueue.add(index: log.committed, message: m) else { return }
        _ = readIndexQueue.recordAck(from: id, context: m.context)
        bcastHeartbeat(context: m.context)
    }

    func releasePendingReadIndexMessages() {
        guard committedEntryInCurrentTerm, !pendingReadIndexMessages.isEmpty else { return }
        let pending = pendingReadIndexMessages
        pendingReadIndexMessages = []
        for m in pending { handleReadIndexAsLeader(m) }
    }

    func handleReadIndexAsLeader(_ m: Message) {
        if bugs.contains(.staleLocalRead) {
            // Planted bug: the leader trusts its local commit index, without confirming its leadership and
            // without having committed an entry of its term.
            respondToReadIndex(m, index: log.committed)
            return
        }
        // Until it commits an entry of its term, a new leader does not know the commit index (§6.4).
        guard committedEntryInCurrentTerm else {
            if pendingReadIndexMessages.count < config.readIndexRequestsMax { pendingReadIndexMessages.append(m) }
            return
        }
        if tracker.isSingleton {
            respondToReadIndex(m, index: log.committed)
            return
        }
        if let now = clock, holdsLease(at: now) {
            // No other leader can exist yet: the commit index is the newest.
            respondToReadIndex(m, index: log.committed)
            return
        }
        startReadIndex(m)
    }

    // MARK: - Step

    func stepLeader(_ m: Message) {
        switch m.kind {
        case .beat:
            bcastHeartbeat(context: readIndexQueue.lastContext ?? [])
            return
        case .checkQuorum:
            if !tracker.quorumActive(selfID: id) {
                becomeFollower(term: term, lead: noNode)
                return
            }
            for member in tracker.memberIDs where member != id { tracker.progress[member]?.recentActive = false }
            return
        case .readIndex:
            handleReadIndexAsLeader(m)
            return
        default:
            break
        }

        guard var pr = tracker.progress[m.from] else { return }
        switch m.kind {
        case .appendResponse:
            pr.recentActive = true
            if m.reject {
                var nextProbe = m.rejectHint
                if m.logTerm > 0 { nextProbe = log.findConflictByTerm(index: m.rejectHint, term: m.logTerm).index }
                if pr.maybeDecrease(rejected: m.index, matchHint: nextProbe) {
                    if pr.state == .replicate { pr.becomeProbe() }
                    tracker.progress[m.from] = pr
                    maybeSendAppend(to: m.from, sendIfEmpty: true)
                } else {
                    tracker.progress[m.from] = pr
                }
                return
            }
            let wasPaused = pr.isPaused
            guard pr.maybeUpdate(m.index) else {
                tracker.progress[m.from] = pr
                return
            }
            switch pr.state {
            case .probe:
                pr.becomeReplicate()
            case .snapshot where pr.match + 1 >= log.firstIndex:
                // The follower caught up through the snapshot: replicate from after it.
                pr.becomeProbe()
                pr.becomeReplicate()
            case .replicate:
                pr.inflights.freeLE(m.index)
            case .snapshot:
                break
            }
            tracker.progress[m.from] = pr
            if maybeCommit() {
                releasePendingReadIndexMessages()
                if config.broadcastsCommit { bcastAppend() }
            } else if wasPaused {
                maybeSendAppend(to: m.from, sendIfEmpty: true)
            }
            // Pipelining: fill the window. Bounded: each round either sends entries (advancing `next` towards
            // the last index, which does not move here) or returns false.
            while maybeSendAppend(to: m.from, sendIfEmpty: false) {}
            if m.from == leadTransferee && tracker.progress[m.from]?.match == log.lastIndex {
                sendTimeoutNow(m.from)
            }
        case .heartbeatResponse:
            pr.recentActive = true
            pr.probeSent = false
            if m.index > 0, m.index < nextLeaseRound, m.index > leaseAcks[m.from] ?? 0 { leaseAcks[m.from] = m.index }
            tracker.progress[m.from] = pr
            if pr.state == .snapshot {
                // Snapshot chunks are retransmitted at the heartbeat rate until acknowledged.
                resendSnapshotChunk(to: m.from)
            } else if pr.state == .replicate && pr.inflights.isFull {
                // The window is full and may stay full forever if the appends that filled it were lost: an
                // empty append outside the window makes the follower answer with where it really is.
                sendWindowProbe(to: m.from)
            } else if pr.match < log.lastIndex || pr.state == .probe {
                maybeSendAppend(to: m.from, sendIfEmpty: true)
            }
            guard !m.context.isEmpty, !bugs.contains(.staleLocalRead) else { return }
            guard let acks = readIndexQueue.recordAck(from: m.from, context: m.context) else { return }
            var ackVotes: [NodeID: Bool] = [:]
            for a in acks { ackVotes[a] = true }
            guard tracker.voters.voteResult(ackVotes) == .won else { return }
            for request in readIndexQueue.advance(through: m.context) {
                respondToReadIndex(request.message, index: request.index)
            }
        case .snapshotResponse:
            pr.recentActive = true
            guard pr.state == .snapshot, m.index == pr.pendingSnapshot else {
                tracker.progress[m.from] = pr
                return
            }
            if m.reject {
                // The follower cannot take it: probe again after the next heartbeat.
                pr.becomeProbe()
                pr.probeSent = true
                tracker.progress[m.from] = pr
                return
            }
            if m.snapshotOffset > pr.snapshotOffsetAcked {
                pr.snapshotOffsetAcked = m.snapshotOffset
                tracker.progress[m.from] = pr
                // The last chunk is answered with an append response instead (after the restore).
                if m.snapshotOffset < m.snapshotBytes { resendSnapshotChunk(to: m.from) }
            } else {
                tracker.progress[m.from] = pr
            }
        case .unreachable:
            if pr.state == .replicate { pr.becomeProbe() }
            tracker.progress[m.from] = pr
        case .transferLeader:
            guard !pr.isLearner else { return }
            let transferee = m.from
            if leadTransferee != noNode {
                if leadTransferee == transferee { return }
                abortLeaderTransfer()
            }
            guard transferee != id else { return }
            // The transfer must finish within an election timeout or it is aborted (tickHeartbeat).
            electionElapsed = 0
            leadTransferee = transferee
            if pr.match == log.lastIndex {
                sendTimeoutNow(transferee)
            } else {
                maybeSendAppend(to: transferee, sendIfEmpty: true)
            }
        default:
            break
        }
    }
}
