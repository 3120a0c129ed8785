/// Classic Raft bugs that the simulator must be able to find. Test-only: they exist to prove that the
/// simulator's checks can fail. Off by default; a production configuration must never set one.
public struct PlantedBugs: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Commit an entry of a previous term by counting replicas (Raft paper, figure 8).
    public static let figure8Commit = PlantedBugs(rawValue: 1 << 0)
    /// Grant a vote without persisting it: `Ready.hardState` omits the vote.
    public static let unpersistedVote = PlantedBugs(rawValue: 1 << 1)
    /// Answer a read from the leader's local commit index, with no heartbeat round and no current-term commit.
    public static let staleLocalRead = PlantedBugs(rawValue: 1 << 2)
    /// Grant votes (and pre-votes) without checking that the candidate's log is at least as up to date.
    public static let noUpToDateCheck = PlantedBugs(rawValue: 1 << 3)
    /// Lease reads: a lease, once a quorum acknowledged it, never expires (for the rest of the term).
    public static let unboundedLease = PlantedBugs(rawValue: 1 << 4)

    /// Command-line names, in a fixed order.
    public static let named: [(name: String, bug: PlantedBugs)] = [
        ("figure8-commit", .figure8Commit),
        ("unpersisted-vote", .unpersistedVote),
        ("stale-local-read", .staleLocalRead),
        ("no-uptodate-check", .noUpToDateCheck),
        ("unbounded-lease", .unboundedLease),
    ]

    public init?(name: String) {
        guard let found = Self.named.first(where: { $0.name == name }) else { return nil }
        self = found.bug
    }
}

/// Why a `Config` was refused.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case invalidNodeID
        case invalidTicks
        case invalidBound
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "ConfigError(\(code)): \(message)" }
}

/// Everything a Raft node needs besides its storage. Every queue and message the core builds is bounded by one of
/// these, named with the unit last. `validate()` checks them once at start-up.
public struct Config: Sendable {
    /// This node's identity; must not be `noNode`.
    public var id: NodeID
    /// A follower that hears nothing from a leader for a random time in
    /// `electionTicks ..< 2 * electionTicks` starts an election; a leader with check-quorum steps down when it has
    /// not heard from a quorum for `electionTicks`.
    public var electionTicks: Int = 10
    /// A leader sends heartbeats every `heartbeatTicks`; must be less than `electionTicks`.
    public var heartbeatTicks: Int = 1
    /// The last index the application had applied when this node (re)started (a snapshot index, or more).
    public var applied: UInt64 = 0
    /// The most bytes of entries in one append message (at least one entry is always sent).
    public var messageBytesMax: Int = 1 << 20
    /// The most append messages in flight to one follower in replicate state (pipelining depth).
    public var inflightMessagesMax: Int = 256
    /// The most bytes of entries in flight to one follower; at least `messageBytesMax`.
    public var inflightBytesMax: Int = 64 << 20
    /// The most payload bytes a leader accepts as proposed but not yet committed; beyond it proposals are
    /// dropped (back-pressure). A single proposal is always accepted when nothing is uncommitted.
    public var uncommittedEntriesBytesMax: Int = 64 << 20
    /// The most bytes of committed entries handed to the application in one `Ready`.
    public var committedEntriesBytesMax: Int = 4 << 20
    /// The most bytes of snapshot data in one InstallSnapshot chunk.
    public var snapshotChunkBytesMax: Int = 1 << 20
    /// The largest snapshot a follower accepts to reassemble in memory.
    public var snapshotBytesMax: Int = 1 << 30
    /// The most linearizable reads a leader holds waiting for their heartbeat quorum (and, before its first
    /// commit in a term, waiting for that commit).
    public var readIndexRequestsMax: Int = 4096
    /// Pre-vote (Raft thesis §9.6): a partitioned node rejoining does not disrupt the cluster with a higher term.
    public var preVote: Bool = true
    /// Check-quorum: a leader that cannot reach a quorum steps down; followers with a live leader ignore votes.
    public var checkQuorum: Bool = true
    /// When a leader's commit index advances, send every follower an append at once, empty if it has every
    /// entry (etcd's behaviour, and the default). When false, the new commit index travels with the next append
    /// carrying entries, the next heartbeat, or the answer to a read the follower forwarded: two messages fewer
    /// per follower and commit (an empty append and its answer), at the price of followers applying up to a
    /// heartbeat later. Nothing a client waits for depends on a follower's commit index except a forwarded read,
    /// and that gets it.
    public var broadcastsCommit: Bool = true
    /// Lease reads, in nanoseconds of the clock the application passes in (`RawNode.tick(now:)`,
    /// `RawNode.readIndex(context:now:)`); 0 turns them off. A leader that a quorum acknowledged a
    /// heartbeat sent at time S answers reads at once, without a heartbeat round, until S + `leaseNanos`.
    ///
    /// Why that is safe: with check-quorum, a voter that heard from the leader ignores votes for
    /// `electionTicks` of its ticks, and a node ignores votes for its first `electionTicks` ticks after it
    /// starts (it may have acknowledged a leader before a crash). So no other leader can be elected before
    /// S + (electionTicks − 1) ticks (the first tick may come at once) — if ticks never come faster than real
    /// time. The lease must be shorter than that by the clocks' worst drift; a leader hands leadership
    /// over (`MsgTimeoutNow`, which voters obey regardless) only after giving up its lease for the term.
    /// Needs check-quorum and pre-vote.
    public var leaseNanos: UInt64 = 0
    /// Seed of the node's own generator for randomized election timeouts.
    public var randomSeed: UInt64 = 0
    /// Test-only planted bugs; empty in production.
    public var plantedBugs: PlantedBugs = []

    public init(id: NodeID) { self.id = id }

    /// Checks every bound; throws a `ConfigError` naming the first one that is wrong.
    public func validate() throws(ConfigError) {
        guard id != noNode else { throw ConfigError(.invalidNodeID, "node id 0 is reserved for \"none\"") }
        guard heartbeatTicks > 0 else { throw ConfigError(.invalidTicks, "heartbeatTicks must be positive") }
        guard electionTicks > heartbeatTicks else {
            throw ConfigError(.invalidTicks, "electionTicks (\(electionTicks)) must exceed heartbeatTicks (\(heartbeatTicks))")
        }
        for (name, value) in [
            ("messageBytesMax", messageBytesMax), ("inflightMessagesMax", inflightMessagesMax),
            ("inflightBytesMax", inflightBytesMax), ("uncommittedEntriesBytesMax", uncommittedEntriesBytesMax),
            ("committedEntriesBytesMax", committedEntriesBytesMax), ("snapshotChunkBytesMax", snapshotChunkBytesMax),
            ("snapshotBytesMax", snapshotBytesMax), ("readIndexRequestsMax", readIndexRequestsMax),
        ] where value <= 0 {
            throw ConfigError(.invalidBound, "\(name) must be positive, got \(value)")
        }
        guard inflightBytesMax >= messageBytesMax else {
            throw ConfigError(.invalidBound, "inflightBytesMax (\(inflightBytesMax)) must be at least messageBytesMax (\(messageBytesMax))")
        }
        guard leaseNanos == 0 || (checkQuorum && preVote) else {
            throw ConfigError(.invalidBound, "lease reads (leaseNanos) need checkQuorum and preVote")
        }
    }
}
