/// Follower and candidate behaviour: accepting the leader's log, snapshots, elections.
extension Raft {
    func stepFollower(_ m: Message) {
        switch m.kind {
        case .append:
            electionElapsed = 0
            lead = m.from
            handleAppend(m)
        case .heartbeat:
            electionElapsed = 0
            lead = m.from
            handleHeartbeat(m)
        case .snapshot:
            electionElapsed = 0
            lead = m.from
            handleSnapshotChunk(m)
        case .transferLeader, .readIndex:
            // Forward to the leader (keeping `from`: the transferee, or the node that asked to read).
            guard lead != noNode else { return }
            var forwarded = m
            forwarded.to = lead
            send(forwarded)
        case .timeoutNow:
            // The leader asked us to take over: skip pre-vote and disregard leases.
            hup(.transfer)
        case .readIndexResponse:
            readStates.append(ReadState(index: m.index, context: m.context))
        default:
            break
        }
    }

    func stepCandidate(_ m: Message) {
        let responseKind: MessageKind = role == .preCandidate ? .preVoteResponse : .voteResponse
        switch m.kind {
        case .append:
            becomeFollower(term: m.term, lead: m.from)
            handleAppend(m)
        case .heartbeat:
            becomeFollower(term: m.term, lead: m.from)
            handleHeartbeat(m)
        case .snapshot:
            becomeFollower(term: m.term, lead: m.from)
            handleSnapshotChunk(m)
        case responseKind:
            switch poll(m.from, granted: !m.reject) {
            case .won:
                if role == .preCandidate {
                    campaign(.election)
                } else {
                    becomeLeader()
                    bcastAppend()
                }
            case .lost:
                becomeFollower(term: term, lead: noNode)
            case .pending:
                break
            }
        default:
            break
        }
    }

    func handleAppend(_ m: Message) {
        if m.index < log.committed {
            send(Message(kind: .appendResponse, to: m.from, index: log.committed))
            return
        }
        if let lastNew = log.maybeAppend(index: m.index, logTerm: m.logTerm, commit: m.commit, entries: m.entries) {
            send(Message(kind: .appendResponse, to: m.from, index: lastNew))
            return
        }
        // Reject, with a hint where our log could match (etcd's fast backtracking by term).
        let hintIndex = min(m.index, log.lastIndex)
        let hint = log.findConflictByTerm(index: hintIndex, term: m.logTerm)
        send(Message(kind: .appendResponse, to: m.from, logTerm: hint.term, index: m.index, reject: true,
                     rejectHint: hint.index))
    }

    func handleHeartbeat(_ m: Message) {
        log.commitTo(m.commit)
        // `index` is the leader's lease round (0: none), echoed.
        send(Message(kind: .heartbeatResponse, to: m.from, index: m.index, context: m.context))
    }

    /// Reassembles an InstallSnapshot transfer chunk by chunk; each chunk is acknowledged with the next offset
    /// expected, so the leader resends from exactly there after a loss.
    func handleSnapshotChunk(_ m: Message) {
        guard let meta = m.snapshot else { return }
        if meta.index <= log.committed {
            snapshotAssembly = nil
            send(Message(kind: .appendResponse, to: m.from, index: log.committed))
            return
        }
        guard m.snapshotBytes <= UInt64(config.snapshotBytesMax) else {
            send(Message(kind: .snapshotResponse, to: m.from, index: meta.index, reject: true))
            return
        }
        if snapshotAssembly?.metadata != meta || snapshotAssembly?.totalBytes != m.snapshotBytes {
            guard m.snapshotOffset == 0 else {
                // A chunk of a transfer we are not assembling: ask for it from the start.
                send(Message(kind: .snapshotResponse, to: m.from, index: meta.index, snapshotOffset: 0,
                             snapshotBytes: m.snapshotBytes))
                return
            }
            snapshotAssembly = SnapshotAssembly(metadata: meta, totalBytes: m.snapshotBytes, data: [])
        }
        guard var assembly = snapshotAssembly else { return }
        if m.snapshotOffset == UInt64(assembly.data.count) {
            guard UInt64(assembly.data.count + m.snapshotChunk.count) <= assembly.totalBytes else {
                snapshotAssembly = nil
                send(Message(kind: .snapshotResponse, to: m.from, index: meta.index, reject: true))
                return
            }
            assembly.data.append(contentsOf: m.snapshotChunk)
        }
        if UInt64(assembly.data.count) == assembly.totalBytes {
            snapshotAssembly = nil
            if restore(Snapshot(metadata: meta, data: assembly.data)) {
                send(Message(kind: .appendResponse, to: m.from, index: log.lastIndex))
            } else {
                send(Message(kind: .appendResponse, to: m.from, index: log.committed))
            }
        } else {
            snapshotAssembly = assembly
            send(Message(kind: .snapshotResponse, to: m.from, index: meta.index,
                         snapshotOffset: UInt64(assembly.data.count), snapshotBytes: assembly.totalBytes))
        }
    }
}
