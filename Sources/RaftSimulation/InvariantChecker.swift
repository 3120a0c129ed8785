import RaftCore

/// Raft's safety properties (Raft paper figure 3, plus the persistence rules), checked incrementally after every
/// event so a violation is caught at the step that causes it. Keeps only facts keyed by index and term, in
/// arrays or looked up by key, so no hash order leaks into what it reports.
struct InvariantChecker {
    typealias Fail = (String, String) -> Void

    private struct IndexTerm: Hashable {
        var index: UInt64
        var term: UInt64
    }

    private struct EntryFact: Equatable {
        var kind: Entry.Kind
        var data: [UInt8]
        var previousTerm: UInt64?
    }

    /// Election safety: the leader of each term.
    private var leaderOfTerm: [UInt64: NodeID] = [:]
    /// Leaders already checked for completeness, by (term, id).
    private var leadersChecked = Set<IndexTerm>()
    /// Leader append-only: each leader's last index and its term, as last seen in its term.
    private var leaderLast: [NodeID: (term: UInt64, lastIndex: UInt64, lastTerm: UInt64)] = [:]
    /// Log matching: what every (index, term) ever written anywhere holds, and the term before it.
    private var entryFacts: [IndexTerm: EntryFact] = [:]
    /// By index: the committed entry's term (0: not recorded), as first observed on any node,
    /// and the term it was committed in — the lowest term a node was in when it first saw the
    /// index committed (the committing leader's; followers learn it in that term or later).
    /// Leader completeness is owed only to leaders of later terms.
    private var committed: [(term: UInt64, inTerm: UInt64)] = [(0, 0)]
    /// State machine safety: the entry applied at each index, and the state digest after it.
    private var appliedEntries: [UInt64: Entry] = [:]
    private var stateDigests: [UInt64: UInt64] = [:]
    /// Per node, for this incarnation: the last commit index seen (monotonic), and how far committed terms were
    /// recorded.
    private var commitSeen: [NodeID: UInt64] = [:]
    private var commitRecorded: [NodeID: UInt64] = [:]

    mutating func nodeRestarted(_ id: NodeID) {
        commitSeen[id] = nil
        commitRecorded[id] = nil
        leaderLast[id] = nil
    }

    /// Entries a node is about to persist: each (index, term) must always carry the same entry after the same
    /// previous term (the inductive form of the log matching property).
    mutating func recordEntries(_ entries: [Entry], node: NodeID, previousTerm: UInt64?, now: UInt64, fail: Fail) {
        var prev = previousTerm
        for e in entries {
            let key = IndexTerm(index: e.index, term: e.term)
            let fact = EntryFact(kind: e.kind, data: e.data, previousTerm: prev)
            if let known = entryFacts[key] {
                if known.kind != fact.kind || known.data != fact.data {
                    fail("log matching", "node \(node): entry \(e.index)/\(e.term) differs from one written elsewhere")
                    return
                }
                if let a = known.previousTerm, let b = prev, a != b {
                    fail("log matching", "node \(node): entry \(e.index)/\(e.term) follows term \(b), elsewhere \(a)")
                    return
                }
            } else {
                entryFacts[key] = fact
            }
            prev = e.term
        }
    }

    /// State machine safety: every node applies the same entry at each index.
    mutating func recordApply(_ entry: Entry, node: NodeID, now: UInt64, fail: Fail) {
        if let known = appliedEntries[entry.index] {
            if known != entry {
                fail("state machine safety", "node \(node) applied \(entry.index)/\(entry.term), another node "
                    + "applied \(known.index)/\(known.term) there")
            }
        } else {
            appliedEntries[entry.index] = entry
        }
    }

    /// State machine safety at the level of states (covers snapshot installs).
    mutating func recordState(index: UInt64, digest: UInt64, node: NodeID, now: UInt64, fail: Fail) {
        if let known = stateDigests[index] {
            if known != digest { fail("state machine safety", "node \(node) state after \(index) differs from another node's") }
        } else {
            stateDigests[index] = digest
        }
    }

    /// Durable term and vote never regress, and a vote once durable never changes within its term.
    func checkDurable(node: NodeID, before: HardState, after: HardState, now: UInt64, fail: Fail) {
        if after.term < before.term {
            fail("durable term", "node \(node) durable term went from \(before.term) to \(after.term)")
        } else if after.term == before.term && before.vote != noNode && after.vote != before.vote {
            fail("durable vote", "node \(node) durable vote in term \(after.term) went from \(before.vote) to \(after.vote)")
        }
    }

    /// Messages are only sent after what they promise is durable: a granted vote, and the sender's term.
    func checkSend(_ m: Message, durable: HardState, now: UInt64, fail: Fail) {
        if m.kind == .voteResponse && !m.reject {
            if !(durable.term > m.term || (durable.term == m.term && durable.vote == m.to)) {
                fail("durable vote", "node \(m.from) granted its vote in term \(m.term) to \(m.to) but its durable "
                    + "state is term \(durable.term) vote \(durable.vote)")
            }
        }
        if m.term != 0 && m.kind != .preVote && m.kind != .preVoteResponse && m.term > durable.term {
            fail("durable term", "node \(m.from) sent \(m.kind) in term \(m.term) with durable term \(durable.term)")
        }
    }

    mutating func check(node n: SimulatedNode, now: UInt64, fail: Fail) {
        let s = n.raw.status
        let id = n.id
        // Commit index: ≤ last index, and monotonic within a life.
        if s.commit > s.lastIndex {
            return fail("commit bound", "node \(id) commit \(s.commit) > last index \(s.lastIndex)")
        }
        if let seen = commitSeen[id], s.commit < seen {
            return fail("commit monotonic", "node \(id) commit went from \(seen) to \(s.commit)")
        }
        commitSeen[id] = s.commit
        // Record the terms of newly committed entries; one already recorded must never change.
        let from = max(commitRecorded[id] ?? 0, s.firstIndex - 1) + 1
        if s.commit >= from {
            for i in from...s.commit {
                guard let t = n.raw.term(at: i) else { continue }
                while committed.count <= Int(i) { committed.append((0, 0)) }
                let known = committed[Int(i)].term
                if known == 0 {
                    committed[Int(i)] = (t, s.term)
                } else if known != t {
                    return fail("state machine safety", "node \(id) committed \(i)/\(t) but \(i)/\(known) was committed")
                } else {
                    committed[Int(i)].inTerm = min(committed[Int(i)].inTerm, s.term)
                }
            }
        }
        commitRecorded[id] = max(commitRecorded[id] ?? 0, s.commit)

        guard s.role == .leader else { return }
        // Election safety.
        if let other = leaderOfTerm[s.term], other != id {
            return fail("election safety", "nodes \(other) and \(id) both lead term \(s.term)")
        }
        leaderOfTerm[s.term] = id
        // Leader completeness: a new leader holds every entry committed in an earlier term. (A
        // candidate of an old term may still win with votes cast before a newer term committed
        // anything — seed 155627: a delayed vote for term 12 after term 13 committed an entry;
        // it cannot commit or serve anything, as every peer is past its term.)
        if leadersChecked.insert(IndexTerm(index: id, term: s.term)).inserted {
            let lo = max(s.firstIndex, 1)
            let hi = UInt64(committed.count - 1)
            if hi >= lo {
                for i in lo...hi where committed[Int(i)].term != 0 && committed[Int(i)].inTerm < s.term {
                    let t = n.raw.term(at: i)
                    if t != committed[Int(i)].term {
                        return fail("leader completeness", "leader \(id) of term \(s.term) has \(t.map(String.init) ?? "nothing") "
                            + "at \(i), where term \(committed[Int(i)].term) was committed")
                    }
                }
            }
        }
        // Leader append-only.
        if let last = leaderLast[id], last.term == s.term {
            if s.lastIndex < last.lastIndex {
                return fail("leader append-only", "leader \(id) last index went from \(last.lastIndex) to \(s.lastIndex)")
            }
            if last.lastIndex >= s.firstIndex - 1, let t = n.raw.term(at: last.lastIndex), t != last.lastTerm {
                return fail("leader append-only", "leader \(id) rewrote entry \(last.lastIndex)")
            }
        }
        leaderLast[id] = (s.term, s.lastIndex, n.raw.term(at: s.lastIndex) ?? 0)
        // At most one pending (uncommitted) conf change.
        if s.lastIndex > s.commit, let pending = try? n.raw.entries((s.commit + 1)..<(s.lastIndex + 1)) {
            if pending.count == Int(s.lastIndex - s.commit) {
                let confChanges = pending.filter { $0.kind == .confChange }.count
                if confChanges > 1 {
                    return fail("one pending conf change", "leader \(id) has \(confChanges) uncommitted conf changes")
                }
            }
        }
    }
}
