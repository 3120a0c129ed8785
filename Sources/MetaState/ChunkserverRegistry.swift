import CairnCore
import Placement

/// The ring of the current epoch and the rings of the epochs before it (newest first, at most
/// `MetaLimits.ringHistoryMax`): a reader that misses a chunk on its current owners tries the owners
/// under earlier epochs, where a chunk not yet rebalanced still is (DESIGN.md, Placement).
public struct RingState: Sendable, Hashable {
    public var current: Ring
    public var previous: [Ring]

    public init(current: Ring, previous: [Ring]) {
        self.current = current
        self.previous = previous
    }
}

/// The chunkserver registry (DESIGN.md, Data model): every server ever registered, removed ones
/// included, so a removed server's identity stays refused and its id is never handed out again.
///
/// IDs are allocated 1, 2, … in registration order, so the member with id `n` is
/// `ring.current.members[n - 1]` and `identities[n - 1]` is its identity.
struct ChunkserverRegistry: Sendable, Equatable {
    /// The opaque token each server keeps in its data directory, by id - 1.
    var identities: [[UInt8]] = []
    var ring = RingState(current: Ring(epoch: 0, members: []), previous: [])
    /// `identities` inverted (derived; rebuilt on restore, only looked up, never iterated).
    var idsByIdentity: [[UInt8]: ChunkserverID] = [:]

    var members: [RingMember] { ring.current.members }

    /// Starts the next epoch with `members`, keeping the current ring as the newest previous one.
    mutating func install(_ members: [RingMember], historyMax: Int) {
        precondition(members.count == identities.count, "registry members and identities out of step")
        let next = Ring(epoch: ring.current.epoch + 1, members: members)
        ring.previous.insert(ring.current, at: 0)
        if ring.previous.count > historyMax { ring.previous.removeLast(ring.previous.count - historyMax) }
        ring.current = next
    }

    /// Sum of the weights of the servers on the ring (removed ones have no points).
    static func weightTotal(_ members: [RingMember]) -> UInt64 {
        members.reduce(0) { $0 + ($1.state == .removed ? 0 : UInt64($1.weight)) }
    }
}

extension Namespace {
    // MARK: Chunkserver registry

    /// The ring now and under the last `ringHistoryMax` epochs.
    public var ringState: RingState { registry.ring }

    /// Registers a chunkserver, or updates the one that registered with `identity` before.
    ///
    /// A new identity gets the next id (1, 2, …, never reused), state active, and a new epoch. A known
    /// identity whose address, weight or failure domain differ is updated (its state is kept) in a new
    /// epoch; an unchanged one changes nothing, so a server may register on every start.
    ///
    /// Errors: EINVAL for an identity that is empty or over `chunkserverIdentityBytesMax`, an address that
    /// is not `HOST:PORT` with a port in 1...65535 (or is over `chunkserverAddressBytesMax`), a weight over
    /// `chunkserverWeightMax`, a failure domain over `failureDomainBytesMax`; EPERM for the identity of a
    /// removed server (removal is final: a server coming back needs a fresh data directory and identity);
    /// ENOSPC when `chunkserversMax` servers have registered, or when the weights on the ring would exceed
    /// `ringWeightTotalMax`.
    public mutating func registerChunkserver(identity: [UInt8], address: String, weight: UInt32,
                                             failureDomain: String) -> Result<(ChunkserverID, UInt64), FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard !identity.isEmpty, identity.count <= limits.chunkserverIdentityBytesMax else { throw .EINVAL }
            let hostPort = try checkChunkserverAddress(address)
            guard weight <= limits.chunkserverWeightMax, failureDomain.utf8.count <= limits.failureDomainBytesMax else { throw .EINVAL }
            var members = registry.members
            if let id = registry.idsByIdentity[identity] {
                let index = Int(id.rawValue - 1)
                let old = members[index]
                guard old.state != .removed else { throw .EPERM }
                if old.address == hostPort, old.weight == weight, old.failureDomain == failureDomain {
                    return (id, registry.ring.current.epoch)
                }
                members[index].address = hostPort
                members[index].weight = weight
                members[index].failureDomain = failureDomain
                guard ChunkserverRegistry.weightTotal(members) <= limits.ringWeightTotalMax else { throw .ENOSPC }
                registry.install(members, historyMax: limits.ringHistoryMax)
                return (id, registry.ring.current.epoch)
            }
            guard registry.identities.count < limits.chunkserversMax else { throw .ENOSPC }
            let id = ChunkserverID(UInt64(registry.identities.count + 1))
            members.append(RingMember(id: id, address: hostPort, weight: weight, failureDomain: failureDomain, state: .active))
            guard ChunkserverRegistry.weightTotal(members) <= limits.ringWeightTotalMax else { throw .ENOSPC }
            registry.identities.append(identity)
            registry.idsByIdentity[identity] = id
            registry.install(members, historyMax: limits.ringHistoryMax)
            return (id, registry.ring.current.epoch)
        }
    }

    /// Moves a server between active and draining, or removes it for good (a new epoch if the state
    /// changes; setting the state it has is a no-op).
    ///
    /// Errors: ENOENT for an unknown id; EPERM for any change to a removed server (removal is final).
    public mutating func setChunkserverState(_ id: ChunkserverID, _ state: ChunkserverState) -> Result<RingState, FileSystemError> {
        attempt { () throws(FileSystemError) in
            var members = registry.members
            let index = try chunkserverIndex(id)
            let old = members[index].state
            if old == state { return registry.ring }
            guard old != .removed else { throw .EPERM }
            members[index].state = state
            registry.install(members, historyMax: limits.ringHistoryMax)
            return registry.ring
        }
    }

    /// Changes a server's weight (a new epoch if it changes).
    ///
    /// Errors: ENOENT for an unknown id; EINVAL for a weight over `chunkserverWeightMax`; EPERM for a
    /// removed server; ENOSPC when the weights on the ring would exceed `ringWeightTotalMax`.
    public mutating func setChunkserverWeight(_ id: ChunkserverID, _ weight: UInt32) -> Result<RingState, FileSystemError> {
        attempt { () throws(FileSystemError) in
            var members = registry.members
            let index = try chunkserverIndex(id)
            guard weight <= limits.chunkserverWeightMax else { throw .EINVAL }
            guard members[index].state != .removed else { throw .EPERM }
            if members[index].weight == weight { return registry.ring }
            members[index].weight = weight
            guard ChunkserverRegistry.weightTotal(members) <= limits.ringWeightTotalMax else { throw .ENOSPC }
            registry.install(members, historyMax: limits.ringHistoryMax)
            return registry.ring
        }
    }

    /// The index in the registry of `id`; ENOENT if no server has it.
    private func chunkserverIndex(_ id: ChunkserverID) throws(FileSystemError) -> Int {
        guard id.rawValue >= 1, id.rawValue <= UInt64(registry.identities.count) else { throw .ENOENT }
        return Int(id.rawValue - 1)
    }

    private func checkChunkserverAddress(_ address: String) throws(FileSystemError) -> HostPort {
        guard address.utf8.count <= limits.chunkserverAddressBytesMax, let hostPort = HostPort(address),
              hostPort.port >= 1, hostPort.host.utf8.count <= limits.chunkserverAddressBytesMax else { throw .EINVAL }
        return hostPort
    }

    // MARK: Reading a file's extents

    /// The extents of a regular file that overlap `[offset, offset + length)`, in file order and whole
    /// (the caller trims the first and last), with the file's size. At most `extentsPerReadMax`: when
    /// that many come back the caller asks again from the last one's end. Bytes no extent covers are
    /// holes (zeros up to the size). No permission check: like read(2), reading is allowed by the open
    /// that handed out the handle.
    ///
    /// Errors: ENOENT for an unknown inode, EISDIR for a directory, EINVAL for other non-regular types.
    public func readExtents(_ inode: InodeNumber, offset: UInt64, length: UInt64) -> Result<([Extent], UInt64), FileSystemError> {
        guard let record = inodes[inode] else { return .failure(.ENOENT) }
        guard record.type == .regular else { return .failure(record.type == .directory ? .EISDIR : .EINVAL) }
        let (sum, overflow) = offset.addingReportingOverflow(length)
        let end = overflow ? UInt64.max : sum
        let extents = record.extents
        // First extent that ends after `offset` (extents are sorted and disjoint, so their ends are sorted too).
        var low = 0, high = extents.count
        while low < high {
            let mid = (low + high) / 2
            if extents[mid].fileEnd <= offset { low = mid + 1 } else { high = mid }
        }
        var out: [Extent] = []
        var index = low
        while index < extents.count, extents[index].fileOffset < end, out.count < limits.extentsPerReadMax {
            out.append(extents[index])
            index += 1
        }
        return .success((out, record.size))
    }
}

// MARK: - Encoding

extension ByteWriter {
    mutating func ringMember(_ m: RingMember) {
        varint(m.id.rawValue)
        data(Array(m.address.host.utf8))
        varint(m.address.port)
        varint(m.weight)
        data(Array(m.failureDomain.utf8))
        byte(m.state.rawValue)
    }

    mutating func ring(_ ring: Ring) {
        varint(ring.epoch)
        varint(ring.members.count)
        for m in ring.members { ringMember(m) }
    }

    mutating func ringState(_ state: RingState) {
        ring(state.current)
        varint(state.previous.count)
        for r in state.previous { ring(r) }
    }

    mutating func string(_ s: String) { data(Array(s.utf8)) }
}

extension ByteReader {
    /// A UTF-8 string; EBADMSG for invalid UTF-8 (so every string has one encoding).
    mutating func string() throws(FileSystemError) -> String {
        guard let s = String(validating: try data(), as: UTF8.self) else { throw .EBADMSG }
        return s
    }

    /// One member, checked only for form (a non-empty host, a port in 0...65535, a known state).
    mutating func ringMember() throws(FileSystemError) -> RingMember {
        let id = ChunkserverID(try varint())
        let host = try string()
        let port = try varint()
        guard !host.isEmpty, port <= 65535 else { throw .EBADMSG }
        let weight = try uint32()
        let domain = try string()
        guard let state = ChunkserverState(rawValue: try byte()) else { throw .EBADMSG }
        return RingMember(id: id, address: HostPort(host: host, port: Int(port)), weight: weight, failureDomain: domain, state: state)
    }

    /// A ring, checked for what `Ring.init` requires: ids strictly ascending, points within `Ring.pointsMax`.
    mutating func ring() throws(FileSystemError) -> Ring {
        let epoch = try varint()
        let n = try count(itemBytesMin: 6)
        var members: [RingMember] = []
        members.reserveCapacity(n)
        for _ in 0..<n {
            let m = try ringMember()
            guard members.last.map({ $0.id < m.id }) ?? true else { throw .EBADMSG }
            members.append(m)
        }
        guard ChunkserverRegistry.weightTotal(members) <= UInt64(Ring.pointsMax / Ring.virtualNodesPerWeightUnit) else { throw .EBADMSG }
        return Ring(epoch: epoch, members: members)
    }

    mutating func ringState() throws(FileSystemError) -> RingState {
        let current = try ring()
        let n = try count(itemBytesMin: 2)
        var previous: [Ring] = []
        for _ in 0..<n { previous.append(try ring()) }
        return RingState(current: current, previous: previous)
    }
}

extension Namespace {
    /// Appends the registry to a snapshot: each server's identity and member (by id), the current epoch,
    /// then the previous rings.
    func encodeRegistry(_ w: inout ByteWriter) {
        w.varint(registry.identities.count)
        for (identity, member) in zip(registry.identities, registry.members) {
            w.data(identity)
            w.ringMember(member)
        }
        w.varint(registry.ring.current.epoch)
        w.varint(registry.ring.previous.count)
        for r in registry.ring.previous { w.ring(r) }
    }

    /// Reads the registry of a snapshot and checks every rule the operations keep.
    static func decodeRegistry(_ r: inout ByteReader, limits: MetaLimits) throws -> ChunkserverRegistry {
        func check(_ ok: Bool, _ reason: String) throws {
            if !ok { throw SnapshotInvalid(reason: reason) }
        }
        func checkMember(_ m: RingMember) throws {
            try check(m.address.port >= 1 && m.address.host.utf8.count <= limits.chunkserverAddressBytesMax, "chunkserver address")
            try check(m.weight <= limits.chunkserverWeightMax, "chunkserver weight")
            try check(m.failureDomain.utf8.count <= limits.failureDomainBytesMax, "failure domain")
        }
        var registry = ChunkserverRegistry()
        let count = try r.count(itemBytesMin: 8)
        try check(count <= limits.chunkserversMax, "more chunkservers than chunkserversMax")
        var members: [RingMember] = []
        for index in 0..<count {
            let identity = try r.data()
            try check(!identity.isEmpty && identity.count <= limits.chunkserverIdentityBytesMax, "chunkserver identity")
            try check(registry.idsByIdentity[identity] == nil, "duplicate chunkserver identity")
            let member = try r.ringMember()
            try check(member.id.rawValue == UInt64(index + 1), "chunkserver ids not 1, 2, …")
            try checkMember(member)
            registry.identities.append(identity)
            registry.idsByIdentity[identity] = member.id
            members.append(member)
        }
        try check(ChunkserverRegistry.weightTotal(members) <= limits.ringWeightTotalMax, "ring weight total")
        let epoch = try r.varint()
        // Every registration starts an epoch, so there are at least as many epochs as servers.
        try check(epoch >= UInt64(count), "ring epoch behind the registrations")
        let previousCount = try r.count(itemBytesMin: 2)
        try check(previousCount <= limits.ringHistoryMax, "more previous rings than ringHistoryMax")
        var previous: [Ring] = []
        var newer = epoch
        for _ in 0..<previousCount {
            let ring = try r.ring()
            try check(ring.epoch < newer, "previous ring epochs not descending")
            newer = ring.epoch
            try check(ring.members.allSatisfy { $0.id.rawValue >= 1 && $0.id.rawValue <= UInt64(count) }, "previous ring has an unknown id")
            for m in ring.members { try checkMember(m) }
            try check(ChunkserverRegistry.weightTotal(ring.members) <= limits.ringWeightTotalMax, "previous ring weight total")
            previous.append(ring)
        }
        registry.ring = RingState(current: Ring(epoch: epoch, members: members), previous: previous)
        return registry
    }
}
