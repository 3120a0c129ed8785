import CairnCore
import Logging
import NIOCore
import RaftCore
import SystemPackage

/// The Raft loop's state and work: everything here runs on the Raft transport's event loop
/// (one thread), after `init`.
final class RaftLoop<Machine: ReplicatedStateMachine>: @unchecked Sendable {
    private let configuration: RaftNodeConfiguration
    private let machine: Machine
    private let storage: DurableLogStorage
    private let node: RawNode
    private let peers: PeerDirectory
    private let logger: Logger
    private var transport: RaftTransport!
    private var inbox: Inbox<Machine>?
    private var ticker: RepeatedTask?
    private var isFinished = false
    /// The monotonic clock the core judges leases by (`clockNanos`) counts from here.
    private let clockOrigin = ContinuousClock.now

    private var applied: UInt64
    private var lastSnapshotIndex: UInt64
    /// The size of the latest snapshot (taken or restored), and the bytes of the entries applied
    /// since: a snapshot is only worth taking once the log behind it is about as large.
    private var lastSnapshotBytes = 0
    private var appliedBytesSinceSnapshot = 0
    private var nextSerial: UInt64 = 1
    /// Proposals of this node waiting to be applied, by serial.
    private var proposals: [UInt64: PendingProposal] = [:]
    /// Which of our proposals sits at which log index (learned from `Ready.entries`).
    private var proposalAtIndex: [UInt64: UInt64] = [:]
    private var pendingConfChange: PendingProposal?
    /// Reads waiting for their read index, by serial (the ReadIndex context): every read of one
    /// drain of the inbox shares one ReadIndex round.
    private var readsWaitingForIndex: [UInt64: (reads: [PendingRead<Machine>], deadline: ContinuousClock.Instant)] = [:]
    /// Reads collected from one drain of the inbox (one ReadIndex for all of them, in `readBatched`).
    private var readBatch: [PendingRead<Machine>] = []
    /// Reads whose index is known, waiting for it to be applied.
    private var readsWaitingForApply: [(index: UInt64, read: PendingRead<Machine>)] = []
    /// A membership change was applied since the last snapshot (see `maybeSnapshot`).
    private var membershipChanged = false
    /// Proposals collected from one drain of the inbox (proposed together by `proposeBatched`).
    private var batch: [(serial: UInt64, data: [UInt8], reply: @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void)] = []
    /// A commit-index-only hard state not yet written (it rides along with the next write).
    private var lazyHardState: HardState?

    struct PendingProposal {
        var reply: @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void
        var deadline: ContinuousClock.Instant
        var index: UInt64?
    }

    init(configuration: RaftNodeConfiguration, stateMachine: Machine, peers: PeerDirectory, logger: Logger) throws(CairnError) {
        self.configuration = configuration
        self.machine = stateMachine
        self.peers = peers
        self.logger = logger
        storage = try DurableLogStorage(directory: configuration.directory.appending("log"),
                                        entriesKeptBehindSnapshot: configuration.entriesKeptBehindSnapshot, logger: logger)
        if storage.isEmpty {
            if configuration.bootstrap {
                let voters = configuration.peers.keys.sorted()
                let founding = Snapshot(metadata: SnapshotMetadata(index: 1, term: 1, confState: ConfState(voters: voters)),
                                        data: stateMachine.snapshot())
                try storage.persist(snapshot: founding, entries: [], hardState: nil)
                logger.info("bootstrapped a new Raft group", metadata: ["voters": "\(voters)"])
            } else {
                logger.info("empty log and no --bootstrap: waiting to be added to a group")
            }
        } else if configuration.bootstrap {
            logger.info("log exists: --bootstrap ignored")
        }
        let snapshot: Snapshot
        do {
            snapshot = try storage.snapshot()
        } catch {
            throw CairnError(.internal, "cannot read the snapshot", cause: error)
        }
        if !snapshot.isEmpty { try stateMachine.restore(snapshot.data) }
        applied = snapshot.metadata.index
        lastSnapshotIndex = snapshot.metadata.index
        lastSnapshotBytes = snapshot.data.count
        do {
            node = try RawNode(config: configuration.coreConfig(applied: applied), storage: storage)
        } catch {
            throw CairnError(.invalidArgument, "raft configuration", cause: error)
        }
    }

    // MARK: The loop

    /// Starts the loop on the transport's event loop: from then on every turn — a batch of
    /// events, a tick — runs there, so a peer message goes from the socket into the core, and
    /// the core's messages out to the sockets, without a thread hand-off (a hand-off costs
    /// tens of microseconds here, and a commit took eight of them before).
    func start(inbox: Inbox<Machine>, transport: RaftTransport) {
        let eventLoop = transport.eventLoop
        eventLoop.execute {
            self.transport = transport
            self.inbox = inbox
            let interval = TimeAmount.nanoseconds(Int64(self.configuration.tickInterval.wholeNanoseconds))
            self.ticker = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in self.turn(tick: true) }
            inbox.start { eventLoop.execute { self.turn(tick: false) } }
            self.turn(tick: false)
        }
    }

    /// One turn: every queued event, the tick if it is one, then every `Ready` that results.
    private func turn(tick: Bool) {
        guard let inbox, !isFinished else { return }
        let (events, stopping) = inbox.takeAll()
        if stopping {
            finish(nil)
            return
        }
        let now = ContinuousClock.now
        if tick {
            node.tick(now: clockNanos(now))
            expire(now)
        }
        for event in events { handle(event, now: now) }
        proposeBatched(now: now)
        readBatched(now: now)
        do {
            try drainReadies()
        } catch {
            logger.critical("Raft storage failed; this replica stops", metadata: ["error": "\(error)"])
            finish(error)
        }
    }

    /// Nanoseconds of the monotonic clock since this loop was made (the core's lease clock).
    private func clockNanos(_ instant: ContinuousClock.Instant) -> UInt64 {
        UInt64(max(0, (instant - clockOrigin).wholeNanoseconds))
    }

    /// Stops for good: fails everything still waiting, and tells the inbox.
    private func finish(_ failure: CairnError?) {
        guard let inbox, !isFinished else { return }
        isFinished = true
        ticker?.cancel()
        ticker = nil
        let stopped = RaftNodeError(.stopped, failure.map { "node stopped: \($0)" } ?? "node is stopping")
        for event in inbox.markFinished() { fail(event, stopped) }
        for (_, proposal) in proposals { proposal.reply(.failure(stopped)) }
        proposals = [:]
        pendingConfChange?.reply(.failure(stopped))
        pendingConfChange = nil
        for (_, waiting) in readsWaitingForIndex { for read in waiting.reads { read.fail(stopped) } }
        for read in readBatch { read.fail(stopped) }
        readBatch = []
        readsWaitingForIndex = [:]
        for waiting in readsWaitingForApply { waiting.read.fail(stopped) }
        readsWaitingForApply = []
    }

    private func fail(_ event: Event<Machine>, _ error: RaftNodeError) {
        switch event {
        case .propose(_, let reply), .confChange(_, let reply): reply(.failure(error))
        case .read(let read), .localRead(let read): read.fail(error)
        case .status(let reply): reply(status())
        case .message, .transfer: break
        }
    }

    private func handle(_ event: Event<Machine>, now: ContinuousClock.Instant) {
        switch event {
        case .message(let message):
            logger.trace("received", metadata: ["kind": "\(message.kind)", "from": "\(message.from)", "term": "\(message.term)",
                                                 "index": "\(message.index)", "entries": "\(message.entries.count)"])
            do {
                try node.step(message)
            } catch {
                logger.debug("dropped a peer message", metadata: ["from": "\(message.from)", "error": "\(error)"])
            }
        case .propose(let command, let reply):
            let serial = nextSerial
            nextSerial += 1
            batch.append((serial, CommandEnvelope(proposer: configuration.id, serial: serial, command: command).encoded(), reply))
        case .read(let read):
            readBatch.append(read)
        case .localRead(let read):
            read.run(machine)
        case .confChange(let change, let reply):
            guard pendingConfChange == nil else {
                reply(.failure(RaftNodeError(.busy, "a membership change is already in progress")))
                return
            }
            do {
                try node.proposeConfChange(change)
                pendingConfChange = PendingProposal(reply: reply, deadline: now + configuration.requestTimeout)
            } catch {
                reply(.failure(map(error)))
            }
        case .transfer(let target):
            node.transferLeadership(to: target)
        case .status(let reply):
            reply(status())
        }
    }

    /// Proposes what this drain of the inbox collected, as one batch: one log append and one
    /// append message per follower for all of them.
    private func proposeBatched(now: ContinuousClock.Instant) {
        guard !batch.isEmpty else { return }
        defer { batch.removeAll(keepingCapacity: true) }
        do {
            try node.propose(batch: batch.map(\.data))
            for item in batch {
                proposals[item.serial] = PendingProposal(reply: item.reply, deadline: now + configuration.requestTimeout)
            }
        } catch {
            let failure = map(error)
            for item in batch { item.reply(.failure(failure)) }
        }
    }

    /// Starts one ReadIndex round for every read collected since the last round began: they
    /// all wait for the same index (a read may not be served from before it arrived, and each
    /// of these arrived before the round began). At most one round is in flight: reads that
    /// arrive meanwhile join the next, started when it ends — under load one heartbeat round
    /// serves many reads, instead of one round each.
    private func readBatched(now: ContinuousClock.Instant) {
        guard !readBatch.isEmpty, readsWaitingForIndex.isEmpty else { return }
        defer { readBatch.removeAll(keepingCapacity: true) }
        let serial = nextSerial
        nextSerial += 1
        do {
            try node.readIndex(context: CommandEnvelope.serialBytes(serial), now: clockNanos(.now))
            readsWaitingForIndex[serial] = (readBatch, now + configuration.requestTimeout)
        } catch {
            let failure = map(error)
            for read in readBatch { read.fail(failure) }
        }
    }

    private func map(_ error: ProposalError) -> RaftNodeError {
        switch error.code {
        case .notLeader, .noLeader:
            return RaftNodeError(.notLeader, error.message, leader: error.leaderHint, leaderAddress: peers.addresses[error.leaderHint])
        case .uncommittedBytesExceeded, .readIndexQueueFull, .transferInProgress, .confChangePending:
            return RaftNodeError(.busy, error.message)
        case .invalidConfChange:
            return RaftNodeError(.rejected, error.message)
        }
    }

    private func expire(_ now: ContinuousClock.Instant) {
        let timedOut = RaftNodeError(.timedOut, "not applied within \(configuration.requestTimeout); the outcome is unknown")
        for serial in proposals.keys.sorted() where proposals[serial]!.deadline < now {
            let proposal = proposals.removeValue(forKey: serial)!
            if let index = proposal.index { proposalAtIndex.removeValue(forKey: index) }
            proposal.reply(.failure(timedOut))
        }
        if let change = pendingConfChange, change.deadline < now {
            pendingConfChange = nil
            change.reply(.failure(timedOut))
        }
        for serial in readsWaitingForIndex.keys.sorted() where readsWaitingForIndex[serial]!.deadline < now {
            for read in readsWaitingForIndex.removeValue(forKey: serial)!.reads {
                read.fail(RaftNodeError(.timedOut, "read index not confirmed in time"))
            }
        }
    }

    // MARK: Ready

    private func drainReadies() throws(CairnError) {
        while let ready = node.ready() {
            // 0. A leader whose term and vote are already durable sends its appends and
            // heartbeats before its own fsync, so that the followers' fsyncs run in parallel with
            // it (Raft thesis §10.2.1). Safe: the leader counts its own copy at once but acts on
            // an acknowledgement only on a later turn of this loop, after this persist finished,
            // so nothing commits on the strength of the leader's unsynced copy.
            var unreachable: [NodeID] = []
            let hardStateDurable = ready.hardState.map { $0.term == storage.hardState.term && $0.vote == storage.hardState.vote } ?? true
            let sendsEarly = hardStateDurable && node.role == .leader
            func send(_ message: Message) {
                if !transport.send(message), !unreachable.contains(message.to) { unreachable.append(message.to) }
            }
            if sendsEarly {
                for message in ready.messages where Self.sentBeforePersisting(message.kind) { send(message) }
                transport.flush()
            }
            // 1. Persist (one fsync for everything in this Ready).
            let snapshot = ready.snapshot.flatMap { $0.isEmpty ? nil : $0 }
            if snapshot != nil || !ready.entries.isEmpty || ready.mustSync {
                try storage.persist(snapshot: snapshot, entries: ready.entries, hardState: ready.hardState ?? lazyHardState)
                lazyHardState = nil
            } else if let hardState = ready.hardState {
                lazyHardState = hardState
            }
            // Learn where our own proposals landed.
            let isLeader = node.role == .leader
            for entry in ready.entries {
                switch entry.kind {
                case .normal:
                    if let envelope = CommandEnvelope(decoding: entry.data), envelope.proposer == configuration.id,
                       proposals[envelope.serial] != nil {
                        proposals[envelope.serial]!.index = entry.index
                        proposalAtIndex[entry.index] = envelope.serial
                    }
                case .confChange:
                    if isLeader, pendingConfChange != nil, pendingConfChange!.index == nil { pendingConfChange!.index = entry.index }
                }
            }
            // 2. Restore from a snapshot received from the leader.
            if let snapshot {
                try machine.restore(snapshot.data)
                applied = snapshot.metadata.index
                lastSnapshotIndex = snapshot.metadata.index
                lastSnapshotBytes = snapshot.data.count
                appliedBytesSinceSnapshot = 0
            }
            // 3. Send (only after persisting: votes and acks promise what was just written).
            if logger.logLevel <= .trace {
                for message in ready.messages {
                    logger.trace("sending", metadata: ["kind": "\(message.kind)", "to": "\(message.to)", "term": "\(message.term)",
                                                       "index": "\(message.index)", "entries": "\(message.entries.count)"])
                }
            }
            for message in ready.messages where !(sendsEarly && Self.sentBeforePersisting(message.kind)) { send(message) }
            transport.flush()
            // 4. Apply.
            for entry in ready.committedEntries { try apply(entry) }
            // 5. Reads whose index is now known.
            for state in ready.readStates {
                guard let serial = CommandEnvelope.serial(from: state.context),
                      let waiting = readsWaitingForIndex.removeValue(forKey: serial) else { continue }
                for read in waiting.reads { readsWaitingForApply.append((state.index, read)) }
            }
            node.advance(ready)
            for peer in unreachable { node.reportUnreachable(peer) }
            // A finished ReadIndex round lets the reads that waited for it start the next.
            if !ready.readStates.isEmpty { readBatched(now: .now) }
            serveReads()
            try maybeSnapshot()
        }
    }

    /// What a leader with a durable term and vote may send before its own fsync: what it
    /// replicates, never an answer that promises its own storage.
    private static func sentBeforePersisting(_ kind: MessageKind) -> Bool {
        kind == .append || kind == .heartbeat
    }

    private func apply(_ entry: Entry) throws(CairnError) {
        if entry.index <= applied { return }
        applied = entry.index
        appliedBytesSinceSnapshot += entry.data.count
        let ours = proposalAtIndex.removeValue(forKey: entry.index)
        switch entry.kind {
        case .normal:
            guard !entry.data.isEmpty else { break }
            guard let envelope = CommandEnvelope(decoding: entry.data) else {
                logger.error("skipping a malformed log entry", metadata: ["index": "\(entry.index)"])
                break
            }
            let reply = machine.apply(envelope.command, at: entry.index)
            // The proposer hears right here, before the next entry is applied: its reply may
            // look at the state as this entry left it (`RaftNode.propose(_:afterApply:completion:)`).
            if envelope.proposer == configuration.id, let proposal = proposals.removeValue(forKey: envelope.serial) {
                proposal.reply(.success((reply, entry.index)))
                return
            }
        case .confChange:
            if let change = try? ConfChange(decoding: entry.data) {
                let address = HostPort(String(decoding: change.context, as: UTF8.self))
                switch change.kind {
                case .addVoter, .addLearner:
                    if let address {
                        try peers.set(change.nodeID, address)
                        transport.setPeer(change.nodeID, address)
                    }
                case .removeNode:
                    if change.nodeID != configuration.id {
                        try peers.set(change.nodeID, nil)
                        transport.setPeer(change.nodeID, nil)
                    } else {
                        logger.warning("this node was removed from the group")
                    }
                }
                // A member added now may need InstallSnapshot, and a follower only installs a
                // snapshot whose membership includes it: snapshot right after the change.
                membershipChanged = true
                logger.info("membership change applied", metadata: ["change": "\(change.kind)", "node": "\(change.nodeID)", "index": "\(entry.index)"])
            }
            if let change = pendingConfChange, change.index == entry.index {
                pendingConfChange = nil
                change.reply(.success(([], entry.index)))
            }
        }
        // Our proposal was at this index but another entry committed there: it is gone.
        if let serial = ours, let proposal = proposals.removeValue(forKey: serial) {
            proposal.reply(.failure(RaftNodeError(.dropped, "leadership changed before the proposal committed; it was not applied")))
        }
    }

    private func serveReads() {
        guard !readsWaitingForApply.isEmpty else { return }
        var waiting: [(index: UInt64, read: PendingRead<Machine>)] = []
        for item in readsWaitingForApply {
            if item.index <= applied { item.read.run(machine) } else { waiting.append(item) }
        }
        readsWaitingForApply = waiting
    }

    private func maybeSnapshot() throws(CairnError) {
        let since = applied - lastSnapshotIndex
        // Every `snapshotEveryEntries` at most, and only once the log behind the last snapshot
        // holds as many bytes as it did (or `snapshotEntriesMax` entries): serializing a large
        // state for a few small entries cost a quarter of the throughput under load.
        let due = since >= configuration.snapshotEveryEntries
            && (appliedBytesSinceSnapshot >= lastSnapshotBytes || since >= configuration.snapshotEntriesMax)
        guard due || (membershipChanged && applied > lastSnapshotIndex) else { return }
        membershipChanged = false
        let data = machine.snapshot()
        try storage.createSnapshot(at: applied, confState: node.confState, data: data)
        lastSnapshotIndex = applied
        lastSnapshotBytes = data.count
        appliedBytesSinceSnapshot = 0
        logger.info("snapshot taken", metadata: ["index": "\(applied)", "bytes": "\(data.count)"])
    }

    private func status() -> RaftNodeStatus {
        let s = node.status
        var match: [NodeID: UInt64] = [:]
        for (id, progress) in node.progress { match[id] = progress.match }
        return RaftNodeStatus(id: s.id, role: s.role, term: s.term, leader: s.leader, commit: s.commit, applied: applied,
                              lastIndex: s.lastIndex, voters: s.confState.voters, learners: s.confState.learners,
                              addresses: peers.addresses, match: match)
    }
}

/// How a command travels in a log entry: who proposed it and under which serial, so the
/// proposer can hand the state machine's reply back to the waiting caller.
///
///     u8 version (1) | u64 proposer | u64 serial | command
struct CommandEnvelope {
    var proposer: NodeID
    var serial: UInt64
    var command: [UInt8]

    init(proposer: NodeID, serial: UInt64, command: [UInt8]) {
        self.proposer = proposer
        self.serial = serial
        self.command = command
    }

    init?(decoding bytes: [UInt8]) {
        guard bytes.count >= 17, bytes[0] == 1 else { return nil }
        proposer = readUInt64(bytes, 1)
        serial = readUInt64(bytes, 9)
        command = Array(bytes[17...])
    }

    func encoded() -> [UInt8] {
        var out: [UInt8] = [1]
        out.reserveCapacity(17 + command.count)
        appendUInt64(&out, proposer)
        appendUInt64(&out, serial)
        out += command
        return out
    }

    static func serialBytes(_ serial: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        appendUInt64(&out, serial)
        return out
    }

    static func serial(from context: [UInt8]) -> UInt64? {
        context.count == 8 ? readUInt64(context, 0) : nil
    }
}
