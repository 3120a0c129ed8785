/// What a `Message` asks for. Local kinds (`hup`, `beat`, `checkQuorum`, `unreachable`) never cross the wire; the
/// node generates them for itself. The raw values are the wire encoding and never change.
public enum MessageKind: UInt8, Sendable, Equatable, Hashable, CaseIterable, CustomStringConvertible {
    case hup = 0
    case beat = 1
    case checkQuorum = 2
    case append = 3
    case appendResponse = 4
    case vote = 5
    case voteResponse = 6
    case preVote = 7
    case preVoteResponse = 8
    case heartbeat = 9
    case heartbeatResponse = 10
    /// One chunk of an InstallSnapshot transfer.
    case snapshot = 11
    /// Acknowledges snapshot chunks: `snapshotOffset` is the next byte the follower expects.
    case snapshotResponse = 12
    case readIndex = 13
    case readIndexResponse = 14
    case transferLeader = 15
    case timeoutNow = 16
    case unreachable = 17

    /// True for kinds that only ever travel from a node to itself.
    public var isLocal: Bool {
        switch self {
        case .hup, .beat, .checkQuorum, .unreachable: true
        default: false
        }
    }

    /// True for responses (they carry the term of the request they answer, or the responder's term).
    public var isResponse: Bool {
        switch self {
        case .appendResponse, .voteResponse, .preVoteResponse, .heartbeatResponse, .snapshotResponse,
            .readIndexResponse:
            true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .hup: "MsgHup"
        case .beat: "MsgBeat"
        case .checkQuorum: "MsgCheckQuorum"
        case .append: "MsgApp"
        case .appendResponse: "MsgAppResp"
        case .vote: "MsgVote"
        case .voteResponse: "MsgVoteResp"
        case .preVote: "MsgPreVote"
        case .preVoteResponse: "MsgPreVoteResp"
        case .heartbeat: "MsgHeartbeat"
        case .heartbeatResponse: "MsgHeartbeatResp"
        case .snapshot: "MsgSnap"
        case .snapshotResponse: "MsgSnapResp"
        case .readIndex: "MsgReadIndex"
        case .readIndexResponse: "MsgReadIndexResp"
        case .transferLeader: "MsgTransferLeader"
        case .timeoutNow: "MsgTimeoutNow"
        case .unreachable: "MsgUnreachable"
        }
    }
}

/// A Raft message. One flat value type for every kind (as etcd's `raftpb.Message`), so the transport and the WAL
/// need only one codec; fields a kind does not use stay at their zero values.
public struct Message: Sendable, Equatable, Hashable {
    public var kind: MessageKind
    public var from: NodeID
    public var to: NodeID
    public var term: UInt64
    /// Term of the entry at `index` (append: the previous entry; vote: the candidate's last entry;
    /// rejected append response: the follower's term at `rejectHint`).
    public var logTerm: UInt64
    public var index: UInt64
    public var entries: [Entry]
    public var commit: UInt64
    public var reject: Bool
    public var rejectHint: UInt64
    /// Opaque context: read-index request ids, or `campaignTransfer` on a vote forced by leadership transfer.
    public var context: [UInt8]
    /// Snapshot chunk: the snapshot it belongs to.
    public var snapshot: SnapshotMetadata?
    /// Snapshot chunk: byte offset of `snapshotChunk` within the snapshot data (in a response: the next offset
    /// the follower expects).
    public var snapshotOffset: UInt64
    /// Snapshot chunk: total size of the snapshot data.
    public var snapshotBytes: UInt64
    public var snapshotChunk: [UInt8]

    public init(
        kind: MessageKind, from: NodeID = noNode, to: NodeID = noNode, term: UInt64 = 0, logTerm: UInt64 = 0,
        index: UInt64 = 0, entries: [Entry] = [], commit: UInt64 = 0, reject: Bool = false, rejectHint: UInt64 = 0,
        context: [UInt8] = [], snapshot: SnapshotMetadata? = nil, snapshotOffset: UInt64 = 0,
        snapshotBytes: UInt64 = 0, snapshotChunk: [UInt8] = []
    ) {
        self.kind = kind
        self.from = from
        self.to = to
        self.term = term
        self.logTerm = logTerm
        self.index = index
        self.entries = entries
        self.commit = commit
        self.reject = reject
        self.rejectHint = rejectHint
        self.context = context
        self.snapshot = snapshot
        self.snapshotOffset = snapshotOffset
        self.snapshotBytes = snapshotBytes
        self.snapshotChunk = snapshotChunk
    }
}

/// The context a candidate puts on votes it asks for because the old leader told it to (`MsgTimeoutNow`): voters
/// then disregard their leader lease, since the leader itself asked for the transfer.
public let campaignTransferContext: [UInt8] = Array("CampaignTransfer".utf8)
