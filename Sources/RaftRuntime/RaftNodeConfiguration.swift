import CairnCore
import RaftCore
import SystemPackage

/// Everything a `RaftNode` is told at start-up. Bounds carry their unit last and are checked
/// by `validate()`.
public struct RaftNodeConfiguration: Sendable {
    public var id: NodeID
    /// Every member's peer address, this node's included.
    public var peers: [NodeID: HostPort]
    /// Where the WAL, snapshots and the peer list live.
    public var directory: FilePath
    /// The TCP port of the Raft listener (peer traffic), on the host of this node's own
    /// address; 0 picks a free one. Peers learn it through `RaftPeer.Endpoint`, so it only needs
    /// fixing where a firewall must let it through.
    public var raftPort = 0
    /// Found a new group from `peers` if the directory is empty. Ignored when the directory
    /// holds a log already; never implied by an empty directory.
    public var bootstrap: Bool
    /// One Raft tick.
    public var tickInterval: Duration = .milliseconds(20)
    public var electionTicks = 10
    public var heartbeatTicks = 2
    /// Take a state-machine snapshot (and compact the log) after at least this many applied
    /// entries, once the entries applied since the last snapshot hold at least as many bytes
    /// as that snapshot (or `snapshotEntriesMax` were applied): the work of snapshots then grows
    /// with what is written, not with the size of the state times the write rate. Measured on
    /// `cairn kv` at 64 proposers: a fixed 10,000-entry interval cost ~25 % of the puts/s.
    public var snapshotEveryEntries: UInt64 = 10_000
    /// A snapshot is taken after this many applied entries whatever their size (bounds the
    /// log kept in memory and replayed on restart).
    public var snapshotEntriesMax: UInt64 = 1_000_000
    /// Entries kept behind a snapshot for followers that are only a little behind.
    public var entriesKeptBehindSnapshot: UInt64 = 1_000
    /// A proposal or read that is not done by then fails (its outcome unknown for a proposal).
    public var requestTimeout: Duration = .seconds(5)
    /// Events (messages, proposals, reads) queued for the Raft thread; beyond it messages are
    /// dropped and requests refused with `busy`.
    public var inboxEventsMax = 65_536
    /// Messages queued to one peer (between two flushes) before further ones are dropped.
    public var peerQueueMessagesMax = 4_096
    /// Largest message accepted from a peer (one frame on the Raft connection): above the
    /// core's `messageBytesMax`, as a single large entry travels alone.
    public var peerMessageBytesMax = 16 << 20
    /// The core's own bounds (message size, in-flight, uncommitted bytes).
    public var messageBytesMax = 1 << 20
    public var inflightMessagesMax = 256
    public var uncommittedEntriesBytesMax = 64 << 20
    public var snapshotChunkBytesMax = 1 << 20
    /// The core's `broadcastsCommit`. Off: followers learn a new commit index from the next append or heartbeat
    /// instead of an empty append of its own, which halves the peer messages of a lone proposal.
    public var broadcastsCommit = false
    /// Lease reads (the core's `leaseNanos`): a leader that a quorum acknowledged within the
    /// lease answers reads at once instead of after a heartbeat round (~0.13 vs ~0.26 ms per
    /// `cairn meta` stat here). The lease is `leaseFraction` of the time in which the followers
    /// that acknowledged it could elect another leader, (electionTicks − 1) ticks: the rest is the
    /// margin for the clocks of different hosts running at different rates. It is judged by the
    /// monotonic clock at the moment of each read, so a leader whose process stalls does not
    /// trust a lease it no longer holds. 0 turns lease reads off.
    public var leaseFraction = 0.8
    /// Seed for the randomized election timeout.
    public var randomSeed: UInt64

    public init(id: NodeID, peers: [NodeID: HostPort], directory: FilePath, bootstrap: Bool, randomSeed: UInt64? = nil) {
        self.id = id
        self.peers = peers
        self.directory = directory
        self.bootstrap = bootstrap
        self.randomSeed = randomSeed ?? UInt64.random(in: 0...UInt64.max)
    }

    public func validate() throws(CairnError) {
        guard id != noNode else { throw CairnError(.invalidArgument, "node id 0 is reserved") }
        guard peers[id] != nil else { throw CairnError(.invalidArgument, "the peer list must include this node (\(id))") }
        guard (0...65535).contains(raftPort) else { throw CairnError(.invalidArgument, "raftPort must be 0...65535") }
        guard tickInterval >= .milliseconds(1) else { throw CairnError(.invalidArgument, "tickInterval must be at least 1 ms") }
        guard (0...0.9).contains(leaseFraction) else { throw CairnError(.invalidArgument, "leaseFraction must be 0...0.9") }
        guard snapshotEveryEntries > 0, snapshotEntriesMax >= snapshotEveryEntries else {
            throw CairnError(.invalidArgument, "snapshotEveryEntries must be positive and at most snapshotEntriesMax")
        }
        guard inboxEventsMax > 0, peerQueueMessagesMax > 0 else {
            throw CairnError(.invalidArgument, "queue bounds must be positive")
        }
        guard peerMessageBytesMax >= messageBytesMax + (1 << 20), peerMessageBytesMax >= 2 * snapshotChunkBytesMax else {
            throw CairnError(.invalidArgument, "peerMessageBytesMax must exceed a message of the core and a snapshot chunk")
        }
        do {
            try coreConfig(applied: 0).validate()
        } catch {
            throw CairnError(.invalidArgument, "raft configuration: \(error)")
        }
    }

    func coreConfig(applied: UInt64) -> Config {
        var config = Config(id: id)
        config.electionTicks = electionTicks
        config.heartbeatTicks = heartbeatTicks
        config.applied = applied
        config.messageBytesMax = messageBytesMax
        config.inflightMessagesMax = inflightMessagesMax
        config.inflightBytesMax = max(64 << 20, messageBytesMax)
        config.uncommittedEntriesBytesMax = uncommittedEntriesBytesMax
        config.snapshotChunkBytesMax = snapshotChunkBytesMax
        config.broadcastsCommit = broadcastsCommit
        config.leaseNanos = UInt64(Double(Int64(electionTicks - 1) * tickInterval.wholeNanoseconds) * leaseFraction)
        config.randomSeed = randomSeed
        return config
    }
}

/// Why a request to a `RaftNode` failed.
public struct RaftNodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Only the leader takes proposals; `leader`/`leaderAddress` say who is, if known.
        case notLeader
        /// Not done within `requestTimeout`: a proposal's outcome is unknown (retry with dedup).
        case timedOut
        /// The proposal definitely did not commit (a new leader overwrote it): safe to retry.
        case dropped
        /// Queues are full: back off and retry.
        case busy
        /// The node is stopping.
        case stopped
        /// The request was refused (an invalid membership change, a malformed command).
        case rejected
    }

    public var code: Code
    public var message: String
    public var leader: NodeID
    public var leaderAddress: HostPort?

    public init(_ code: Code, _ message: String, leader: NodeID = noNode, leaderAddress: HostPort? = nil) {
        self.code = code
        self.message = message
        self.leader = leader
        self.leaderAddress = leaderAddress
    }

    public var description: String {
        "\(code): \(message)" + (leaderAddress.map { " (leader \(leader) at \($0))" } ?? "")
    }
}
