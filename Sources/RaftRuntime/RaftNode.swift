import CairnCore
import Logging
import RaftCore
import ServiceLifecycle
import Synchronization
import SystemPackage

/// Runs one Raft replica: the `RawNode` core, its durable log, a state machine, timers and the
/// peer transport.
///
/// All Raft work happens on one thread (the "Raft thread": the event loop of the peer
/// transport, so peer messages reach the core and leave it without a hand-off), as the core
/// is single-threaded by design: it drains every queued event (peer messages, proposals, reads),
/// then handles each `Ready` — persist (one fsync for everything queued: group commit), send,
/// apply, answer. Callers talk to it from any task through `propose`, `read` and friends,
/// which queue an event and await the answer.
public final class RaftNode<Machine: ReplicatedStateMachine>: Service, @unchecked Sendable {
    public let configuration: RaftNodeConfiguration
    private let logger: Logger
    private let inbox: Inbox<Machine>
    let transport: RaftTransport
    /// Touched only on the Raft thread (after `init`).
    private let loop: RaftLoop<Machine>
    /// The state machine, for `propose(_:afterApply:completion:)` bodies (Raft thread only).
    nonisolated(unsafe) private let machine: Machine

    /// Opens the log (recovering it), restores the state machine from the latest snapshot, and
    /// bootstraps a new group if asked to and the directory is empty.
    ///
    /// - Throws: `CairnError` for a bad configuration or a log that cannot be recovered.
    ///
    /// - Parameter eventLoop: the thread the node's peer connections and Raft loop run on, to
    ///   share with the server answering its clients (`SharedEventLoop`); nil: one of its own.
    public init(configuration: RaftNodeConfiguration, stateMachine: Machine, eventLoop: SharedEventLoop? = nil, logger: Logger) throws(CairnError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        let peers = try PeerDirectory(directory: configuration.directory, initial: configuration.peers)
        inbox = Inbox<Machine>(eventsMax: configuration.inboxEventsMax)
        transport = RaftTransport(id: configuration.id, listenHost: configuration.peers[configuration.id]!.host,
                                  listenPort: configuration.raftPort, peers: peers.addresses,
                                  queueMessagesMax: configuration.peerQueueMessagesMax, messageBytesMax: configuration.peerMessageBytesMax,
                                  eventLoop: eventLoop, logger: logger, deliver: { [inbox] message in _ = inbox.post(.message(message), droppable: true) })
        loop = try RaftLoop(configuration: configuration, stateMachine: stateMachine, peers: peers, logger: logger)
        machine = stateMachine
    }

    /// The gRPC service peers ask for this node's Raft port: register it on this node's server.
    public var peerService: RaftPeerService { transport.service }

    // MARK: Requests

    /// Proposes a command and waits until it is committed and applied here. Returns the state
    /// machine's reply and the index it was applied at.
    ///
    /// - Throws: `RaftNodeError` `.notLeader` (with a hint), `.timedOut` (outcome unknown),
    ///   `.dropped` (did not commit), `.busy`, `.stopped`.
    public func propose(_ command: [UInt8]) async throws(RaftNodeError) -> (reply: [UInt8], index: UInt64) {
        try await request { .propose(command, $0) }
    }

    /// `propose(_:)` for callers that cannot wait in a task (a pipelined stream answering many
    /// calls): `completion` runs once, on the Raft thread or at once on this one; keep it short.
    public func propose(_ command: [UInt8], completion: @escaping @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void) {
        if !inbox.post(.propose(command, completion), droppable: false) {
            completion(.failure(RaftNodeError(.busy, "Raft inbox is full or the node is stopped")))
        }
    }

    /// `propose(_:completion:)`, and once the command is applied here, `body` runs on the Raft
    /// thread right after it — before any later entry is applied — with the state machine, the
    /// reply and the index: what a caller needs to learn about the state its command left
    /// (a directory's attributes right after a file was created in it). Keep it short.
    public func propose<T: Sendable>(_ command: [UInt8], afterApply body: @escaping @Sendable (Machine, [UInt8], UInt64) -> T,
                                     completion: @escaping @Sendable (Result<T, RaftNodeError>) -> Void) {
        // A successful proposal's reply is called by the loop's `apply`, on the Raft thread,
        // directly after the state machine applied the entry (RaftLoop.apply).
        nonisolated(unsafe) let machine = self.machine
        propose(command) { result in completion(result.map { body(machine, $0.0, $0.1) }) }
    }

    /// Returns once the node has stopped (its Raft thread finished), or when the calling task
    /// is cancelled.
    public func waitUntilStopped() async {
        await inbox.waitUntilStopped()
    }

    /// Runs `body` against the state machine once every write acknowledged before this call is
    /// applied here (ReadIndex): a linearizable read, on the leader or a follower. `body` runs
    /// on the Raft thread: keep it short.
    ///
    /// - Throws: `RaftNodeError` `.notLeader` (no leader known), `.timedOut`, `.busy`, `.stopped`.
    public func read<T: Sendable>(_ body: @escaping @Sendable (Machine) -> T) async throws(RaftNodeError) -> T {
        try await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, RaftNodeError>, Never>) in
            read(body) { continuation.resume(returning: $0) }
        }.get()
    }

    /// `read(_:)` for callers that cannot wait in a task (a pipelined stream answering many
    /// calls): `completion` runs once, on the Raft thread or at once on this one; keep it short.
    public func read<T: Sendable>(_ body: @escaping @Sendable (Machine) -> T,
                                  completion: @escaping @Sendable (Result<T, RaftNodeError>) -> Void) {
        let pending = PendingRead<Machine>(run: { machine in completion(.success(body(machine))) },
                                           fail: { error in completion(.failure(error)) })
        if !inbox.post(.read(pending), droppable: false) {
            completion(.failure(RaftNodeError(.busy, "Raft inbox is full or the node is stopped")))
        }
    }

    /// Runs `body` against this replica's state as applied so far, without confirming
    /// leadership: not linearizable (status pages, digests of quiet replicas).
    public func localRead<T: Sendable>(_ body: @escaping @Sendable (Machine) -> T) async throws(RaftNodeError) -> T {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, RaftNodeError>, Never>) in
            let pending = PendingRead<Machine>(
                run: { machine in continuation.resume(returning: .success(body(machine))) },
                fail: { error in continuation.resume(returning: .failure(error)) })
            if !inbox.post(.localRead(pending), droppable: false) {
                continuation.resume(returning: .failure(RaftNodeError(.busy, "Raft inbox is full or the node is stopped")))
            }
        }
        return try result.get()
    }

    /// Adds a voter or learner, or removes a member; `address` is where a new member listens.
    public func changeMembership(_ kind: ConfChange.Kind, node: NodeID, address: HostPort?) async throws(RaftNodeError) {
        let context = Array((address?.description ?? "").utf8)
        _ = try await request { .confChange(ConfChange(kind: kind, nodeID: node, context: context), $0) }
    }

    /// Asks the leader to hand leadership to `node`.
    public func transferLeadership(to node: NodeID) {
        _ = inbox.post(.transfer(node), droppable: false)
    }

    /// The node's view: role, term, leader, commit, applied, members and their addresses.
    public func status() async throws(RaftNodeError) -> RaftNodeStatus {
        try await withCheckedContinuation { (continuation: CheckedContinuation<Result<RaftNodeStatus, RaftNodeError>, Never>) in
            if !inbox.post(.status({ continuation.resume(returning: .success($0)) }), droppable: false) {
                continuation.resume(returning: .failure(RaftNodeError(.stopped, "node is stopped")))
            }
        }.get()
    }

    private func request(_ make: (@escaping @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void) -> Event<Machine>) async throws(RaftNodeError) -> ([UInt8], UInt64) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<([UInt8], UInt64), RaftNodeError>, Never>) in
            let event = make { continuation.resume(returning: $0) }
            if !inbox.post(event, droppable: false) {
                continuation.resume(returning: .failure(RaftNodeError(.busy, "Raft inbox is full or the node is stopped")))
            }
        }
        return try result.get()
    }

    // MARK: Service

    /// Runs the Raft thread and the peer senders until graceful shutdown or cancellation.
    public func run() async throws {
        loop.start(inbox: inbox, transport: transport)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.transport.run() }
            await withGracefulShutdownHandler {
                await self.inbox.waitUntilStopped()
            } onGracefulShutdown: {
                self.stop()
            }
            self.stop()  // also when cancelled rather than shut down gracefully
            self.transport.stop()
            group.cancelAll()
        }
        logger.info("raft node stopped", metadata: ["id": "\(configuration.id)"])
    }

    /// Stops the Raft thread; pending requests fail with `.stopped`.
    public func stop() {
        inbox.stop()
    }
}

/// What `RaftNode.status()` reports.
public struct RaftNodeStatus: Sendable, Equatable {
    public var id: NodeID
    public var role: RaftRole
    public var term: UInt64
    public var leader: NodeID
    public var commit: UInt64
    public var applied: UInt64
    public var lastIndex: UInt64
    public var voters: [NodeID]
    public var learners: [NodeID]
    public var addresses: [NodeID: HostPort]
    /// The leader's view of each member's replicated index (empty unless leader).
    public var match: [NodeID: UInt64]

    public var leaderAddress: HostPort? { addresses[leader] }
}

// MARK: - The Raft thread

/// One unit of work for the Raft thread.
enum Event<Machine: ReplicatedStateMachine>: @unchecked Sendable {
    case message(Message)
    case propose([UInt8], @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void)
    case read(PendingRead<Machine>)
    case localRead(PendingRead<Machine>)
    case confChange(ConfChange, @Sendable (Result<([UInt8], UInt64), RaftNodeError>) -> Void)
    case transfer(NodeID)
    case status(@Sendable (RaftNodeStatus) -> Void)
}

/// A linearizable read waiting for its read index to be applied.
final class PendingRead<Machine>: @unchecked Sendable {
    let run: (Machine) -> Void
    let fail: (RaftNodeError) -> Void
    init(run: @escaping (Machine) -> Void, fail: @escaping (RaftNodeError) -> Void) {
        self.run = run
        self.fail = fail
    }
}
