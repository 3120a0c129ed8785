import CairnCore

/// A chunkserver's number in the registry: handed out by the metadata service from a counter
/// (1, 2, …) and never reused, so a number names one server for the life of the cluster.
public struct ChunkserverID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ raw: UInt64) { self.init(rawValue: raw) }

    public static func < (a: ChunkserverID, b: ChunkserverID) -> Bool { a.rawValue < b.rawValue }

    public var description: String { "cs\(rawValue)" }
}

/// Where a chunkserver stands in placement. Liveness is not a state: a server that is down
/// keeps its place on the ring (DESIGN.md, Data model).
public enum ChunkserverState: UInt8, Sendable, Hashable {
    /// Owns chunks: new replicas are placed on it.
    case active = 1
    /// Keeps its ring position for reads and fallback, but owns nothing: rebalance moves its chunks off.
    case draining = 2
    /// Gone for good: not on the ring at all. Final.
    case removed = 3
}

/// One chunkserver as the ring sees it.
public struct RingMember: Sendable, Hashable {
    public var id: ChunkserverID
    public var address: HostPort
    /// Relative capacity: the server gets `weight × Ring.virtualNodesPerWeightUnit` points on the
    /// ring. 0 is allowed and means it holds nothing new (it is still a candidate for reads).
    public var weight: UInt32
    /// A label such as a rack or host name; owners of one chunk prefer distinct labels. "" = no label.
    public var failureDomain: String
    public var state: ChunkserverState

    public init(id: ChunkserverID, address: HostPort, weight: UInt32, failureDomain: String, state: ChunkserverState) {
        self.id = id
        self.address = address
        self.weight = weight
        self.failureDomain = failureDomain
        self.state = state
    }
}
