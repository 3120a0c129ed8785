import RaftCore

/// A whole Raft cluster in one thread: a virtual clock, a seeded network that loses, duplicates, delays and
/// reorders, partitions, crashes that lose unsynced writes (torn tails included), membership changes, leader
/// transfers, compaction and snapshot installs — with every safety invariant checked after every event, client
/// histories checked for linearizability at the end, and liveness checked once the faults stop.
public final class Simulation {
    public let options: SimulationOptions
    private var random: SplitMix64
    private var now: UInt64 = 0
    private var queue = EventQueue<Event>()
    /// Indexed by node id - 1: ids 1...nodeCount are founding voters, nodeCount + 1 starts as a spare.
    private var nodes: [SimulatedNode] = []
    private var network = NetworkFaults()
    private var clients: [ClientState] = []
    private var history: [HistoryOperation] = []
    private var historyDropped: [Bool] = []
    private var checker = InvariantChecker()
    private var violation: Violation?
    private var eventsProcessed = 0
    private var faultsActive = true
    private var livenessDeadline: UInt64 = 0
    private var coverage: [String: Int] = [:]
    /// Per-node config, fixed for the run (randomized within bounds by the seed).
    private var nodeConfigs: [Config] = []
    /// Each node's clock runs at its own rate (drift within 0.7×–1.5×): correct Raft does not care, a leader that
    /// trusts a lease does.
    private var tickMicrosPerNode: [UInt64] = []
    /// Lease reads (half the seeds): each node's monotonic clock runs at its own rate, within ±1 % of the
    /// virtual clock (per mille here); nil when the run has no lease reads.
    private var clockRatePerMille: [UInt64]?
    /// Receives one line per event when set (replaying a failing seed with `--trace`).
    public var trace: ((String) -> Void)?
    private var staleLeaderMarked = Set<UInt64>()

    /// Bounds on the fault schedule.
    private let faultGapMicrosMax: UInt64 = 400_000
    private let downMicrosMax: UInt64 = 2_000_000
    private let redirectsMax = 8
    private let pendingPerNodeMax = 64
    /// Chance (percent) that a buggify fault point fires when reached; varies per seed.
    private var buggifyPercent: UInt64 = 3

    enum Event {
        case tick(NodeID, incarnation: Int)
        case deliver(Message)
        case syncDone(NodeID, incarnation: Int)
        case clientRequest(NodeID, ClientRequest)
        case clientReply(ClientReply)
        case clientNext(Int)
        case clientRetry(Int, sequence: Int)
        case clientTimeout(Int, sequence: Int, attempt: Int)
        case fault
        case restart(NodeID)
        case flap(from: NodeID, to: NodeID, remaining: Int)
        case healAll
    }

    struct ClientState {
        var id: Int
        var sequence = 0
        var current: Current?
        var leaderGuess: NodeID
        /// After the faults stop: the client's next successful operation proves liveness.
        var livenessProbePending = false
        var livenessProbeDone = false

        struct Current {
            var operation: KVOperation
            var historyIndex: Int
            var attempt: Int
            var redirects: Int
        }
    }

    public init(options: SimulationOptions) {
        precondition(options.nodeCount >= 1 && options.nodeCount <= 9, "nodeCount out of range")
        self.options = options
        random = SplitMix64(seed: options.seed)
        let founders = ConfState(voters: (1...UInt64(options.nodeCount)).map { $0 })
        // Flow-control and snapshot bounds vary per seed so that small limits (many messages, many chunks) and
        // large ones are both exercised.
        let messageBytesMax = [64, 256, 4096][random.int(in: 0...2)]
        let inflightMessagesMax = [1, 4, 64][random.int(in: 0...2)]
        let chunkBytesMax = [16, 128, 4096][random.int(in: 0...2)]
        buggifyPercent = [2, 5, 15][random.int(in: 0...2)]
        // Half the seeds run with commit broadcasts (etcd's way), half without (the runtime's default). Taken
        // from the seed, not the generator, so that every other choice of a seed stays what it was.
        let broadcastsCommit = (options.seed >> 1) & 1 == 0
        // Half the seeds run with lease reads. The lease is shorter than the time in which followers that
        // acknowledged a leader could elect another: electionTicks − 1 of the fastest ticks this simulator ever
        // gives a node (0.5 × tickMicros, see the clock drift fault), less 10 % for the clocks' drift.
        let leaseReads = (options.seed >> 2) & 1 == 0
        let electionTicks = 10
        let leaseNanos = leaseReads ? UInt64(electionTicks - 1) * options.tickMicros / 2 * 9 / 10 * 1_000 : 0
        for id in 1...UInt64(options.nodeCount + 1) {
            var config = Config(id: id)
            config.electionTicks = electionTicks
            config.heartbeatTicks = 2
            config.messageBytesMax = messageBytesMax
            config.inflightMessagesMax = inflightMessagesMax
            config.inflightBytesMax = max(messageBytesMax * 4, 1024)
            config.uncommittedEntriesBytesMax = 4096
            config.snapshotChunkBytesMax = chunkBytesMax
            config.readIndexRequestsMax = 64
            config.broadcastsCommit = broadcastsCommit
            config.randomSeed = random.next()
            config.plantedBugs = options.plantedBugs
            config.leaseNanos = leaseNanos
            nodeConfigs.append(config)
            let conf = id <= UInt64(options.nodeCount) ? founders : nil
            nodes.append(SimulatedNode(id: id, disk: SimulatedDisk(founder: conf), config: config))
            tickMicrosPerNode.append(options.tickMicros * UInt64(random.int(in: 70...150)) / 100)
        }
        if leaseReads { clockRatePerMille = nodes.map { _ in UInt64(random.int(in: 990...1010)) } }
        for c in 0..<options.clientCount {
            clients.append(ClientState(id: c, leaderGuess: UInt64(random.int(in: 1...options.nodeCount))))
        }
    }

    /// Node `id`'s monotonic clock in nanoseconds (lease reads), or nil.
    private func clock(of id: NodeID) -> UInt64? {
        clockRatePerMille.map { now * $0[Int(id) - 1] }
    }

    private var allIDs: [NodeID] { nodes.map(\.id) }
    private func node(_ id: NodeID) -> SimulatedNode { nodes[Int(id) - 1] }

    private func mark(_ probe: String) {
        coverage[probe, default: 0] += 1
        if let trace { trace("   * \(probe)") }
    }

    // MARK: - Running

    public func run() -> SimulationReport {
        for n in nodes { scheduleTick(n, after: UInt64(random.int(in: 1...Int(options.tickMicros)))) }
        for c in clients.indices { queue.push(at: UInt64(random.int(in: 1_000...50_000)), .clientNext(c)) }
        queue.push(at: 100_000 + random.next(below: faultGapMicrosMax), .fault)

        let eventsMax = options.steps * 20 + 1_000_000  // a hard bound on the whole run, liveness phase included
        while violation == nil, let (time, event) = queue.pop() {
            precondition(time >= now, "time went backwards")
            now = time
            eventsProcessed += 1
            if faultsActive && eventsProcessed >= options.steps { stopFaults() }
            if let trace { trace("t=\(now) \(describe(event))") }
            handle(event)
            if violation == nil { checkInvariants() }
            if !faultsActive && clients.allSatisfy(\.livenessProbeDone) { break }
            if !faultsActive && now > livenessDeadline {
                fail("liveness", "faults stopped at t=\(livenessDeadline - options.livenessMicrosMax)µs but "
                    + "clients \(clients.filter { !$0.livenessProbeDone }.map(\.id)) completed nothing within "
                    + "\(options.livenessMicrosMax)µs; leaders: \(nodes.filter { $0.up && $0.raw.status.role == .leader }.map(\.id))")
            }
            if eventsProcessed >= eventsMax {
                fail("liveness", "run exceeded \(eventsMax) events")
            }
        }

        var result = LinearizabilityResult.linearizable
        if violation == nil {
            let kept = zip(history, historyDropped).filter { !$0.1 }.map(\.0)
            result = LinearizabilityChecker().check(kept)
            if case .violation(let key, let n) = result {
                fail("linearizability", "history of key \(key) (\(n) operations) has no linearization")
            }
        }
        let kept = zip(history, historyDropped).filter { !$0.1 }.map(\.0)
        return SimulationReport(
            options: options, violation: violation, events: eventsProcessed, virtualMicros: now,
            operationsCompleted: kept.filter { $0.returned != nil }.count,
            operationsIndeterminate: kept.filter { $0.returned == nil }.count,
            linearizability: result, coverage: coverage)
    }

    private func fail(_ property: String, _ detail: String) {
        guard violation == nil else { return }
        violation = Violation(property: property, detail: detail, time: now)
    }

    private func stopFaults() {
        faultsActive = false
        livenessDeadline = now + options.livenessMicrosMax
        network = NetworkFaults()
        for n in nodes where !n.up { restart(n) }
        for i in clients.indices { clients[i].livenessProbePending = true }
        mark("faults stopped")
    }

    private func handle(_ event: Event) {
        switch event {
        case .tick(let id, let incarnation):
            let n = node(id)
            guard n.up, n.incarnation == incarnation else { return }
            if let clock = clock(of: id) { n.raw.tick(now: clock) } else { n.raw.tick() }
            drive(n)
            scheduleTick(n, after: tickMicrosPerNode[Int(id) - 1])
        case .deliver(let m):
            let n = node(m.to)
            guard n.up else { return }
            do { try n.raw.step(m) } catch { mark("message refused: \(error.code)") }
            drive(n)
        case .syncDone(let id, let incarnation):
            let n = node(id)
            guard n.up, n.incarnation == incarnation, let rd = n.awaitingSync else { return }
            let before = n.disk.durable.hardState
            n.disk.sync()
            checker.checkDurable(node: id, before: before, after: n.disk.durable.hardState, now: now, fail: fail)
            n.awaitingSync = nil
            finishReady(n, rd)
            buggifyCrashAfterCommit(n, rd)
            drive(n)
        case .clientRequest(let id, let request):
            serve(node(id), request)
        case .clientReply(let reply):
            clientReceived(reply)
        case .clientNext(let c):
            clientStartNext(c)
        case .clientRetry(let c, let sequence):
            guard clients[c].sequence == sequence, clients[c].current != nil else { return }
            clientSendAttempt(c)
        case .clientTimeout(let c, let sequence, let attempt):
            clientTimedOut(c, sequence: sequence, attempt: attempt)
        case .fault:
            guard faultsActive else { return }
            injectFault()
            queue.push(at: now + 20_000 + random.next(below: faultGapMicrosMax), .fault)
        case .restart(let id):
            let n = node(id)
            if !n.up { restart(n) }
        case .flap(let from, let to, let remaining):
            guard faultsActive, remaining > 0 else { return }
            network.toggle(from: from, to: to)
            queue.push(at: now + 5_000 + random.next(below: 60_000), .flap(from: from, to: to, remaining: remaining - 1))
        case .healAll:
            if faultsActive { network.healAll() }
        }
    }

    private func scheduleTick(_ n: SimulatedNode, after delay: UInt64) {
        queue.push(at: now + delay, .tick(n.id, incarnation: n.incarnation))
    }

    // MARK: - The ready loop (what the runtime's driver does, with a simulated disk)

    private func drive(_ n: SimulatedNode) {
        // Bounded: each round hands out a Ready that must be advanced before the next.
        while n.up, n.awaitingSync == nil, let rd = n.raw.ready() {
            if let s = rd.softState, s.role == .leader { mark("leader elected") }
            // 1. Write (the in-memory storage sees it at once, as a WAL's page cache would).
            if let snapshot = rd.snapshot {
                do { try n.storage.applySnapshot(snapshot) } catch {
                    fail("snapshot", "node \(n.id) could not store snapshot \(snapshot.metadata.index): \(error)")
                    return
                }
                n.disk.write(.snapshot(snapshot))
            }
            if !rd.entries.isEmpty {
                checker.recordEntries(rd.entries, node: n.id, previousTerm: n.raw.term(at: rd.entries[0].index - 1),
                                      now: now, fail: fail)
                n.storage.append(rd.entries)
                n.disk.write(.entries(rd.entries))
            }
            if let hs = rd.hardState {
                n.storage.setHardState(hs)
                n.disk.write(.hardState(hs))
            }
            if faultsActive && rd.softState?.role ?? n.raw.status.role == .leader && !rd.entries.isEmpty
                && random.chance(buggifyPercent, in: 100)
            {
                // Buggify: isolate a leader right after it appended, before its appends leave: divergent logs.
                for other in allIDs where other != n.id {
                    network.block(from: n.id, to: other)
                    network.block(from: other, to: n.id)
                }
                mark("buggify: leader isolated after append")
            }
            if let hs = rd.hardState, hs.commit > n.disk.durable.hardState.commit, buggifyCrashBeforeSend(n) {
                return
            }
            if rd.mustSync {
                // 2. fsync takes time; a crash before it completes loses (a suffix of) what was written.
                n.awaitingSync = rd
                queue.push(at: now + 50 + random.next(below: 2_000), .syncDone(n.id, incarnation: n.incarnation))
                return
            }
            finishReady(n, rd)
            buggifyCrashAfterCommit(n, rd)
        }
    }

    /// Buggify: crash a leader whose commit index just advanced, before its writes are synced and before the
    /// messages that would spread the news (and its next entries) leave: the moment figure 8 is about.
    private func buggifyCrashBeforeSend(_ n: SimulatedNode) -> Bool {
        guard faultsActive, n.raw.status.role == .leader, random.chance(buggifyPercent, in: 100),
            nodes.filter({ !$0.up }).count < max(1, (options.nodeCount - 1) / 2)
        else { return false }
        mark("buggify: leader crashed before sending its commit")
        crash(n)
        return true
    }

    /// Buggify: crash a leader right after it advanced its commit index and told the others.
    private func buggifyCrashAfterCommit(_ n: SimulatedNode, _ rd: Ready) {
        guard faultsActive, n.up, rd.hardState != nil, n.raw.status.role == .leader, random.chance(buggifyPercent, in: 100),
            nodes.filter({ !$0.up }).count < max(1, (options.nodeCount - 1) / 2)
        else { return }
        mark("buggify: leader crashed after commit")
        crash(n)
    }

    /// After the Ready's writes are durable: send, apply, serve reads, advance, compact.
    private func finishReady(_ n: SimulatedNode, _ rd: Ready) {
        for m in rd.messages {
            checker.checkSend(m, durable: n.disk.durable.hardState, now: now, fail: fail)
            send(m)
        }
        if let snapshot = rd.snapshot {
            guard let restored = KeyValueStore(decoding: snapshot.data) else {
                fail("snapshot", "node \(n.id) received an undecodable snapshot")
                return
            }
            n.store = restored
            n.appliedIndex = snapshot.metadata.index
            checker.recordState(index: snapshot.metadata.index, digest: restored.digest, node: n.id, now: now, fail: fail)
            mark("snapshot installed")
        }
        for entry in rd.committedEntries {
            guard entry.index == n.appliedIndex + 1 else {
                fail("apply order", "node \(n.id) applies \(entry.index) after \(n.appliedIndex)")
                return
            }
            checker.recordApply(entry, node: n.id, now: now, fail: fail)
            if entry.kind == .normal, let command = KVCommand(decoding: entry.data) {
                n.store.apply(command)
                let key = SimulatedNode.ClientKey(client: command.client, sequence: command.sequence)
                if let request = n.pendingWrites.removeValue(forKey: key) {
                    reply(from: n, request, .ok(nil))
                }
            }
            if entry.kind == .confChange { mark("conf change applied") }
            n.appliedIndex = entry.index
            checker.recordState(index: entry.index, digest: n.store.digest, node: n.id, now: now, fail: fail)
        }
        for rs in rd.readStates {
            if let i = n.pendingReads.firstIndex(where: { $0.context == rs.context }) {
                n.pendingReads[i].readIndex = rs.index
            }
        }
        serveReadyReads(n)
        n.raw.advance(rd)
        maybeCompact(n, force: false)
    }

    private func serveReadyReads(_ n: SimulatedNode) {
        var still: [SimulatedNode.PendingRead] = []
        for read in n.pendingReads {
            if let index = read.readIndex, n.appliedIndex >= index {
                reply(from: n, read.request, .ok(n.store.get(read.request.operation.key)))
                mark("read served")
                let term = n.raw.status.term
                if nodes.contains(where: { $0.up && $0.raw.status.role == .leader && $0.raw.status.term > term }) {
                    mark("read served while a newer leader exists")
                }
            } else {
                still.append(read)
            }
        }
        n.pendingReads = still
    }

    /// Snapshots the state machine and compacts the log behind it, keeping a short tail so that slightly lagging
    /// followers need no snapshot; lagging further ones get one.
    private func maybeCompact(_ n: SimulatedNode, force: Bool) {
        let snapshotIndex = (try? n.storage.snapshot().metadata.index) ?? 0
        let every: UInt64 = 24
        guard n.appliedIndex > snapshotIndex, force || n.appliedIndex - snapshotIndex >= every else { return }
        let snapshot: Snapshot
        do {
            snapshot = try n.storage.createSnapshot(at: n.appliedIndex, confState: n.raw.confState, data: n.store.encode())
        } catch { return }
        let keep: UInt64 = force ? 0 : 4
        let compactIndex = n.appliedIndex > keep ? n.appliedIndex - keep : 0
        if compactIndex >= n.storage.firstIndex {
            do { try n.storage.compact(to: compactIndex) } catch { fail("compaction", "\(error)") }
        }
        n.disk.installLocalSnapshot(snapshot, compactIndex: compactIndex)
        mark("log compacted")
    }

    // MARK: - Network

    private func send(_ m: Message) {
        guard network.allows(from: m.from, to: m.to) else { return }
        if faultsActive && random.chance(network.lossPercent, in: 100) { return }
        queue.push(at: now + network.delay(&random), .deliver(m))
        if faultsActive && random.chance(network.duplicatePercent, in: 100) {
            mark("message duplicated")
            queue.push(at: now + network.delay(&random), .deliver(m))
        }
    }

    // MARK: - Crashes

    private func crash(_ n: SimulatedNode) {
        guard n.up else { return }
        n.up = false
        let before = n.disk.durable.hardState
        let unsynced = n.disk.unsynced.count
        let survivors = unsynced == 0 ? 0 : random.int(in: 0...unsynced)
        if survivors < unsynced { mark("crash lost unsynced writes") }
        n.disk.crash(keeping: survivors)
        checker.checkDurable(node: n.id, before: before, after: n.disk.durable.hardState, now: now, fail: fail)
        // Clients waiting on this node get no answer: they time out.
        n.pendingWrites = [:]
        n.pendingReads = []
        n.awaitingSync = nil
        mark("crash")
        if faultsActive {
            queue.push(at: now + 50_000 + random.next(below: downMicrosMax), .restart(n.id))
        }
    }

    private func restart(_ n: SimulatedNode) {
        n.restart(config: nodeConfigs[Int(n.id) - 1])
        checker.nodeRestarted(n.id)
        scheduleTick(n, after: UInt64(random.int(in: 1...Int(options.tickMicros))))
        mark("restart")
        drive(n)
    }

    // MARK: - Faults

    private var leaderID: NodeID? {
        // The leader of the highest term among live nodes (there may be a stale one too).
        nodes.filter { $0.up && $0.raw.status.role == .leader }.max { $0.raw.status.term < $1.raw.status.term }?.id
    }

    private func injectFault() {
        let members = (1...UInt64(options.nodeCount)).map { $0 }
        let upCount = nodes.filter(\.up).count
        let downAllowed = nodes.count - upCount < max(1, (options.nodeCount - 1) / 2)
        switch random.int(in: 0...17) {
        case 0, 1:
            if downAllowed, let victim = nodes.filter(\.up).randomElement(using: &random) { crash(victim) }
        case 2:
            if downAllowed, let l = leaderID { crash(node(l)); mark("leader crashed") }
        case 3:
            // Symmetric partition: a random split.
            var side: [NodeID: Bool] = [:]
            for id in allIDs { side[id] = random.chance(1, in: 2) }
            for a in allIDs { for b in allIDs where a != b && side[a] != side[b] { network.block(from: a, to: b) } }
            mark("partition")
        case 4:
            // Asymmetric: some directed links fail.
            for _ in 0..<random.int(in: 1...3) {
                let a = allIDs.randomElement(using: &random)!
                let b = allIDs.randomElement(using: &random)!
                if a != b { network.block(from: a, to: b) }
            }
            mark("asymmetric partition")
        case 5, 8:
            if let l = leaderID {
                for other in allIDs where other != l {
                    network.block(from: l, to: other)
                    network.block(from: other, to: l)
                }
                // A stalling VM often does both: its network drops and its timers run late.
                if random.chance(1, in: 2) {
                    tickMicrosPerNode[Int(l) - 1] = options.tickMicros * UInt64(random.int(in: 150...250)) / 100
                    mark("isolated leader's clock slowed")
                }
                // Clients can still reach it. Long enough for the others to elect a new leader.
                queue.push(at: now + 200_000 + random.next(below: 1_500_000), .healAll)
                mark("leader isolated")
            }
        case 6:
            let a = allIDs.randomElement(using: &random)!
            let b = allIDs.randomElement(using: &random)!
            if a != b {
                queue.push(at: now + 1_000, .flap(from: a, to: b, remaining: random.int(in: 4...40)))
                mark("flapping link")
            }
        case 7:
            network.healAll()
        case 9:
            network.lossPercent = UInt64(random.int(in: 0...20))
            network.duplicatePercent = UInt64(random.int(in: 0...10))
            network.longDelayPercent = UInt64(random.int(in: 0...20))
        case 10, 11:
            proposeMembershipChange(members: members)
        case 12:
            if let l = leaderID {
                let voters = node(l).raw.confState.voters.filter { $0 != l }
                if let target = voters.randomElement(using: &random) {
                    node(l).raw.transferLeadership(to: target)
                    drive(node(l))
                    mark("leader transfer requested")
                }
            }
        case 13:
            if let victim = nodes.filter(\.up).randomElement(using: &random), victim.awaitingSync == nil {
                maybeCompact(victim, force: true)
            }
        case 16, 17:
            // Clock drift (a VM stalled, a slow timer): a node's ticks slow down or speed up, 0.5×–2×.
            let i = random.int(in: 0...(nodes.count - 1))
            tickMicrosPerNode[i] = options.tickMicros * UInt64(random.int(in: 50...200)) / 100
            mark("clock drift")
        default:
            if let victim = nodes.filter({ !$0.up }).randomElement(using: &random) { restart(victim) }
        }
    }

    /// One server at a time: add the spare as a learner, promote it, or remove a voter (possibly the leader) so
    /// the voter count stays within nodeCount...nodeCount + 1.
    private func proposeMembershipChange(members: [NodeID]) {
        guard let l = leaderID else { return }
        let leader = node(l)
        let conf = leader.raw.confState
        let outsiders = allIDs.filter { !conf.contains($0) }
        let change: ConfChange
        if let learner = conf.learners.first {
            change = ConfChange(kind: .addVoter, nodeID: learner)
        } else if conf.voters.count > options.nodeCount, let victim = conf.voters.randomElement(using: &random) {
            change = ConfChange(kind: .removeNode, nodeID: victim)
        } else if let newcomer = outsiders.first {
            change = ConfChange(kind: .addLearner, nodeID: newcomer)
        } else {
            return
        }
        do {
            try leader.raw.proposeConfChange(change)
            mark("conf change proposed")
        } catch {
            mark("conf change refused")
        }
        drive(leader)
    }

    // MARK: - Servers

    private func serve(_ n: SimulatedNode, _ request: ClientRequest) {
        guard n.up else { return }
        let status = n.raw.status
        guard status.role == .leader else {
            reply(from: n, request, .notLeader(status.leader))
            return
        }
        switch request.operation {
        case .get:
            guard n.pendingReads.count < pendingPerNodeMax else { return reply(from: n, request, .notLeader(n.id)) }
            let context = Array("\(request.client).\(request.sequence).\(request.attempt)".utf8)
            do {
                if let clock = clock(of: n.id) {
                    if n.raw.holdsLease(now: clock) { mark("read by lease") }
                    try n.raw.readIndex(context: context, now: clock)
                } else {
                    try n.raw.readIndex(context: context)
                }
            } catch {
                return reply(from: n, request, .notLeader(error.leaderHint))
            }
            n.pendingReads.append(SimulatedNode.PendingRead(context: context, request: request, readIndex: nil))
        case .put, .append:
            guard n.pendingWrites.count < pendingPerNodeMax else { return reply(from: n, request, .notLeader(n.id)) }
            let command = KVCommand(client: request.client, sequence: request.sequence, operation: request.operation)
            do { try n.raw.propose(command.encode()) } catch {
                // Refused: it was not appended anywhere, so the client may safely retry.
                return reply(from: n, request, .notLeader(error.leaderHint == noNode ? n.id : error.leaderHint))
            }
            n.pendingWrites[SimulatedNode.ClientKey(client: request.client, sequence: request.sequence)] = request
        }
        drive(n)
    }

    private func reply(from n: SimulatedNode, _ request: ClientRequest, _ result: ClientReply.Result) {
        if faultsActive && random.chance(network.lossPercent, in: 100) { return }
        let r = ClientReply(client: request.client, sequence: request.sequence, attempt: request.attempt, result: result)
        queue.push(at: now + network.delay(&random), .clientReply(r))
    }

    // MARK: - Clients

    private func clientStartNext(_ c: Int) {
        guard clients[c].current == nil, !clients[c].livenessProbeDone else { return }
        clients[c].sequence += 1
        let seq = clients[c].sequence
        let key = "k\(random.int(in: 0...(options.keyCount - 1)))"
        let operation: KVOperation
        if clients[c].livenessProbePending {
            operation = .put(key: key, value: "<live\(c).\(seq)>")
        } else {
            switch random.int(in: 0...9) {
            case 0...3: operation = .get(key: key)
            // Unique, delimited tokens: "observed" is then a substring test (see the linearizability checker).
            case 4...6: operation = .put(key: key, value: "<p\(c).\(seq)>")
            default: operation = .append(key: key, value: "<a\(c).\(seq)>")
            }
        }
        history.append(HistoryOperation(client: c, operation: operation, invoked: now, returned: nil, output: nil))
        historyDropped.append(false)
        clients[c].current = ClientState.Current(operation: operation, historyIndex: history.count - 1, attempt: 0,
                                                 redirects: 0)
        clientSendAttempt(c)
    }

    private func clientSendAttempt(_ c: Int) {
        guard var current = clients[c].current else { return }
        current.attempt += 1
        clients[c].current = current
        let request = ClientRequest(client: c, sequence: clients[c].sequence, attempt: current.attempt,
                                    operation: current.operation)
        // Clients mostly go to the leader they believe in, sometimes anywhere (a load balancer, a stale cache).
        let target = random.chance(1, in: 4) ? UInt64(random.int(in: 1...nodes.count)) : clients[c].leaderGuess
        if !(faultsActive && random.chance(network.lossPercent, in: 100)) {
            queue.push(at: now + network.delay(&random), .clientRequest(target, request))
        }
        queue.push(at: now + options.clientTimeoutMicros / 4 + random.next(below: options.clientTimeoutMicros * 3 / 4),
                   .clientTimeout(c, sequence: clients[c].sequence, attempt: current.attempt))
    }

    private func clientReceived(_ r: ClientReply) {
        let c = r.client
        guard let current = clients[c].current, clients[c].sequence == r.sequence, current.attempt == r.attempt
        else { return }
        switch r.result {
        case .ok(let value):
            history[current.historyIndex].returned = now
            history[current.historyIndex].output = current.operation.isRead ? (value ?? "") : nil
            clients[c].current = nil
            if clients[c].livenessProbePending { clients[c].livenessProbeDone = true }
            scheduleClientNext(c)
        case .notLeader(let hint):
            clients[c].leaderGuess = hint != noNode && hint != clients[c].leaderGuess
                ? hint : UInt64(random.int(in: 1...nodes.count))
            clients[c].current!.redirects += 1
            if current.redirects + 1 > redirectsMax {
                // Every attempt was refused: the operation certainly never happened.
                historyDropped[current.historyIndex] = true
                clients[c].current = nil
                scheduleClientNext(c)
            } else {
                queue.push(at: now + 5_000 + random.next(below: 20_000), .clientRetry(c, sequence: r.sequence))
            }
        }
    }

    private func clientTimedOut(_ c: Int, sequence: Int, attempt: Int) {
        guard let current = clients[c].current, clients[c].sequence == sequence, current.attempt == attempt else {
            return
        }
        // A read without an answer constrains nothing; a write may or may not have happened: indeterminate.
        if current.operation.isRead { historyDropped[current.historyIndex] = true } else { mark("write indeterminate") }
        clients[c].current = nil
        clients[c].leaderGuess = UInt64(random.int(in: 1...nodes.count))
        scheduleClientNext(c)
    }

    private func scheduleClientNext(_ c: Int) {
        queue.push(at: now + 1_000 + random.next(below: 30_000), .clientNext(c))
    }

    private func describe(_ event: Event) -> String {
        switch event {
        case .deliver(let m):
            var s = "\(m.from)->\(m.to) \(m.kind) term=\(m.term) logTerm=\(m.logTerm) index=\(m.index) commit=\(m.commit)"
            if !m.entries.isEmpty { s += " entries=\(m.entries.map { "\($0.index)/\($0.term)" })" }
            if m.reject { s += " reject hint=\(m.rejectHint)" }
            if let snap = m.snapshot { s += " snap=\(snap.index)/\(snap.term) off=\(m.snapshotOffset)/\(m.snapshotBytes)" }
            return s
        case .tick(let id, _): return "tick \(id)"
        default: return "\(event)"
        }
    }

    private func statusLine() -> String {
        nodes.map { n in
            let s = n.raw.status
            return "\(n.id):\(n.up ? "" : "DOWN ")\(s.role) t\(s.term) c\(s.commit) l\(s.lastIndex) f\(s.firstIndex) a\(s.applied) \(s.confState.voters)/\(s.confState.learners)"
        }.joined(separator: " | ")
    }

    // MARK: - Invariants

    private func checkInvariants() {
        for n in nodes where n.up {
            checker.check(node: n, now: now, fail: fail)
            if violation != nil { return }
        }
        if let trace { trace("   \(statusLine())") }
        let leaders = nodes.filter { $0.up && $0.raw.status.role == .leader }
        if leaders.count > 1, let stale = leaders.min(by: { $0.raw.status.term < $1.raw.status.term }),
            staleLeaderMarked.insert(stale.raw.status.term).inserted
        {
            mark("stale leader coexists with a newer one")
        }
    }
}

/// Links that are down and the rates of loss, duplication and long delays.
struct NetworkFaults {
    private var blocked = Set<Link>()
    var lossPercent: UInt64 = 0
    var duplicatePercent: UInt64 = 0
    var longDelayPercent: UInt64 = 0

    private struct Link: Hashable {
        var from: NodeID
        var to: NodeID
    }

    func allows(from: NodeID, to: NodeID) -> Bool { !blocked.contains(Link(from: from, to: to)) }
    mutating func block(from: NodeID, to: NodeID) { blocked.insert(Link(from: from, to: to)) }
    mutating func healAll() { blocked = [] }
    mutating func toggle(from: NodeID, to: NodeID) {
        let link = Link(from: from, to: to)
        if blocked.contains(link) { blocked.remove(link) } else { blocked.insert(link) }
    }

    /// Usually 0.1–3 ms; sometimes up to 80 ms, which reorders messages.
    func delay(_ random: inout SplitMix64) -> UInt64 {
        if random.chance(longDelayPercent, in: 100) { return 3_000 + random.next(below: 80_000) }
        return 100 + random.next(below: 3_000)
    }
}
