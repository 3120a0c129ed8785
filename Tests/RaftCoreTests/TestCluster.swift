import RaftCore

/// A small synchronous cluster for unit and transcript tests (etcd's `network` in raft_test.go and the
/// interaction environment): every node has a MemoryStorage, Readies are processed in node-id order, messages are
/// queued per recipient and delivered on request. Optionally it narrates everything it does, for transcripts.
final class TestCluster {
    struct Node {
        var raw: RawNode
        var storage: MemoryStorage
        var applied: [Entry] = []
        var readStates: [ReadState] = []
        var config: Config
    }

    private(set) var nodes: [NodeID: Node] = [:]
    /// Messages waiting for delivery, per recipient, in send order.
    private(set) var inbox: [NodeID: [Message]] = [:]
    /// Links that drop everything (from, to).
    private var cut = Set<[NodeID]>()
    var output: [String] = []
    var narrate = false

    var ids: [NodeID] { nodes.keys.sorted() }

    func makeConfig(_ id: NodeID) -> Config {
        var c = Config(id: id)
        c.electionTicks = 10
        c.heartbeatTicks = 3
        c.randomSeed = 42
        c.snapshotChunkBytesMax = 8
        return c
    }

    /// Founding members `ids`, all voters (plus `learners`).
    func bootstrap(voters: [NodeID], learners: [NodeID] = [], configure: (inout Config) -> Void = { _ in }) {
        for id in voters + learners {
            let storage = MemoryStorage(bootstrap: ConfState(voters: voters, learners: learners))
            add(id, storage: storage, configure: configure)
        }
    }

    /// A node that joins later: empty storage.
    func add(_ id: NodeID, storage: MemoryStorage = MemoryStorage(), configure: (inout Config) -> Void = { _ in }) {
        var config = makeConfig(id)
        configure(&config)
        config.applied = (try? storage.snapshot().metadata.index) ?? 0
        let raw = try! RawNode(config: config, storage: storage)
        nodes[id] = Node(raw: raw, storage: storage, config: config)
    }

    func node(_ id: NodeID) -> RawNode { nodes[id]!.raw }

    /// A crash and restart: a new RawNode over what the node persisted (its MemoryStorage).
    func restart(_ id: NodeID) {
        var n = nodes[id]!
        var config = n.config
        config.applied = n.applied.last?.index ?? ((try? n.storage.snapshot().metadata.index) ?? 0)
        n.raw = try! RawNode(config: config, storage: n.storage)
        nodes[id] = n
        inbox[id] = []
    }

    func say(_ line: String) { if narrate { output.append(line) } }

    // MARK: - Network

    func isolate(_ id: NodeID) {
        for other in ids where other != id {
            cut.insert([id, other])
            cut.insert([other, id])
        }
    }

    func cutLink(from: NodeID, to: NodeID) { cut.insert([from, to]) }
    func heal() { cut = [] }

    /// Delivers the messages queued for `to` (all recipients if nil); returns how many.
    @discardableResult
    func deliver(to: NodeID? = nil) -> Int {
        var count = 0
        for id in to.map({ [$0] }) ?? ids {
            let messages = inbox[id] ?? []
            inbox[id] = []
            for m in messages {
                if cut.contains([m.from, m.to]) {
                    say("dropped: \(describe(m))")
                    continue
                }
                say("\(describe(m))")
                do { try nodes[id]?.raw.step(m) } catch { say("  refused: \(error)") }
                count += 1
            }
        }
        return count
    }

    func drop(to: NodeID) {
        for m in inbox[to] ?? [] { say("dropped: \(describe(m))") }
        inbox[to] = []
    }

    // MARK: - Readies

    /// Processes one Ready of node `id` as a driver would; returns false if there was none.
    @discardableResult
    func processReady(_ id: NodeID) -> Bool {
        guard var n = nodes[id], let rd = n.raw.ready() else { return false }
        say("> \(id) handling Ready")
        for line in describe(rd) { say("  \(line)") }
        if let s = rd.snapshot { try! n.storage.applySnapshot(s) }
        n.storage.append(rd.entries)
        if let hs = rd.hardState { n.storage.setHardState(hs) }
        for m in rd.messages {
            // A cut link drops at send time, so healing it later does not deliver stale traffic.
            if cut.contains([m.from, m.to]) { continue }
            inbox[m.to, default: []].append(m)
        }
        n.applied.append(contentsOf: rd.committedEntries)
        n.readStates.append(contentsOf: rd.readStates)
        n.raw.advance(rd)
        nodes[id] = n
        return true
    }

    /// Processes Readies and delivers messages until nothing changes (bounded).
    func stabilize(_ only: [NodeID]? = nil, roundsMax: Int = 1000) {
        for _ in 0..<roundsMax {
            var progressed = false
            for id in only ?? ids where processReady(id) { progressed = true }
            for id in only ?? ids where !(inbox[id] ?? []).isEmpty {
                deliver(to: id)
                progressed = true
            }
            if !progressed { return }
        }
        preconditionFailure("cluster did not stabilize within \(roundsMax) rounds")
    }

    func tick(_ id: NodeID, times: Int) {
        for _ in 0..<times { nodes[id]!.raw.tick() }
    }

    /// Ticks until `id` campaigns (its randomized timeout is at most 2 × electionTicks).
    func tickElection(_ id: NodeID) { tick(id, times: 2 * nodes[id]!.config.electionTicks) }

    func leaders() -> [NodeID] { ids.filter { node($0).status.role == .leader } }

    /// Snapshot at `index` with the node's membership, then compaction up to it.
    func compact(_ id: NodeID, to index: UInt64) {
        let n = nodes[id]!
        try! n.storage.createSnapshot(at: index, confState: n.raw.confState, data: Array("snapshot-of-state-at-\(index)".utf8))
        try! n.storage.compact(to: index)
    }

    // MARK: - Formatting (etcd-like, stable)

    func describe(_ e: Entry) -> String {
        let kind = e.kind == .normal ? "EntryNormal" : "EntryConfChange"
        var data = String(decoding: e.data, as: UTF8.self)
        if e.kind == .confChange, let cc = try? ConfChange(decoding: e.data) { data = "\(cc.kind) \(cc.nodeID)" }
        return "\(e.term)/\(e.index) \(kind) \"\(data)\""
    }

    func describe(_ m: Message) -> String {
        var s = "\(m.from)->\(m.to) \(m.kind) Term:\(m.term) Log:\(m.logTerm)/\(m.index)"
        if m.commit != 0 { s += " Commit:\(m.commit)" }
        if m.reject { s += " Rejected (Hint: \(m.rejectHint))" }
        if !m.entries.isEmpty { s += " Entries:[\(m.entries.map(describe).joined(separator: ", "))]" }
        if let snap = m.snapshot {
            s += " Snapshot: Index:\(snap.index) Term:\(snap.term) Voters:\(snap.confState.voters)"
            if !snap.confState.learners.isEmpty { s += " Learners:\(snap.confState.learners)" }
            s += " Chunk:\(m.snapshotOffset)+\(m.snapshotChunk.count)/\(m.snapshotBytes)"
        } else if m.kind == .snapshotResponse {
            s += " Acked:\(m.snapshotOffset)/\(m.snapshotBytes)"
        }
        if !m.context.isEmpty { s += " Context:\(String(decoding: m.context, as: UTF8.self))" }
        return s
    }

    func describe(_ rd: Ready) -> [String] {
        var lines = ["Ready MustSync=\(rd.mustSync):"]
        if let s = rd.softState { lines.append("Lead:\(s.leader) State:\(s.role)") }
        if let h = rd.hardState { lines.append("HardState Term:\(h.term) Vote:\(h.vote) Commit:\(h.commit)") }
        if let s = rd.snapshot {
            lines.append("Snapshot Index:\(s.metadata.index) Term:\(s.metadata.term) Voters:\(s.metadata.confState.voters)")
        }
        if !rd.entries.isEmpty {
            lines.append("Entries:")
            lines.append(contentsOf: rd.entries.map(describe))
        }
        if !rd.committedEntries.isEmpty {
            lines.append("CommittedEntries:")
            lines.append(contentsOf: rd.committedEntries.map(describe))
        }
        if !rd.messages.isEmpty {
            lines.append("Messages:")
            lines.append(contentsOf: rd.messages.map(describe))
        }
        if !rd.readStates.isEmpty {
            lines.append("ReadStates:")
            lines.append(contentsOf: rd.readStates.map { "Index:\($0.index) Context:\(String(decoding: $0.context, as: UTF8.self))" })
        }
        return lines
    }

    func describeStatus(_ id: NodeID) -> [String] {
        let s = node(id).status
        var lines = ["\(id): \(s.role) Term:\(s.term) Lead:\(s.leader) Commit:\(s.commit) Applied:\(s.applied) "
            + "Log:\(s.firstIndex)...\(s.lastIndex) Voters:\(s.confState.voters) Learners:\(s.confState.learners)"]
        for (peer, p) in node(id).progress {
            lines.append("  \(peer): \(p.state) match=\(p.match) next=\(p.next)" + (p.isLearner ? " learner" : "")
                + (p.inflightMessages > 0 ? " inflight=\(p.inflightMessages)" : ""))
        }
        return lines
    }
}
