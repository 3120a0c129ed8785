/// One Raft log entry. Value type: entries are copied freely between the log, messages and `Ready`.
public struct Entry: Sendable, Equatable, Hashable {
    public enum Kind: UInt8, Sendable, Equatable, Hashable {
        /// Application data (possibly empty: a new leader's no-op entry).
        case normal = 0
        /// An encoded `ConfChange`; it takes effect when the application applies it.
        case confChange = 1
    }

    public var term: UInt64
    public var index: UInt64
    public var kind: Kind
    public var data: [UInt8]

    public init(term: UInt64, index: UInt64, kind: Kind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// The bytes this entry costs for flow control: an approximation of its encoded size, so that a message of
    /// tiny entries cannot become unbounded.
    public var sizeBytes: Int { data.count + Entry.overheadBytes }

    /// Fixed per-entry cost counted by flow control (term, index, kind, length prefix).
    public static let overheadBytes = 24
}

extension Array where Element == Entry {
    /// Sum of `sizeBytes` (flow-control cost).
    var sizeBytes: Int { reduce(0) { $0 + $1.sizeBytes } }
    /// Sum of payload bytes (what counts against `uncommittedEntriesBytesMax`).
    var payloadBytes: Int { reduce(0) { $0 + $1.data.count } }
}

/// Returns the longest prefix of `entries` whose total size stays within `bytesMax`, but always at least one
/// entry (so that an entry larger than the limit still makes progress, as in etcd's `limitSize`).
func limitSize(_ entries: [Entry], bytesMax: Int) -> [Entry] {
    guard !entries.isEmpty else { return entries }
    var size = entries[0].sizeBytes
    var count = 1
    while count < entries.count {
        size += entries[count].sizeBytes
        if size > bytesMax { break }
        count += 1
    }
    return Array(entries[0..<count])
}
