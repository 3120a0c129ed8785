import CairnCore

/// Consistent hashing with virtual nodes (DESIGN.md, Placement): one epoch of the chunkserver
/// registry and the points its members own on a 64-bit circle.
///
/// A chunk sits at its ID's first 8 bytes read as a big-endian `UInt64` (`ChunkID.ringPosition`);
/// its owners are the first distinct active servers met clockwise from there. Every non-removed
/// member with weight > 0 has `weight × virtualNodesPerWeightUnit` points whose positions depend
/// only on (server id, point index) — never on input order, `Dictionary`/`Set` order or Swift's
/// per-process `Hasher` — so every holder of the same members computes the same placement.
///
/// Pure: no I/O, clock or randomness. The point array is built once in `init`.
public struct Ring: Sendable, Hashable {
    public let epoch: UInt64
    /// Every member given, removed ones included, sorted by id.
    public let members: [RingMember]

    /// Points per unit of weight. The standard deviation of a server's share is about 1/√points of its
    /// fair share: 256 points give about ±6% (128 gave a measured 24% outlier among six servers). More
    /// points cost memory (12 bytes each) and build time for every holder of the ring.
    public static let virtualNodesPerWeightUnit = 256
    /// Points on one ring, at most: 2,097,152 points (24 MiB), i.e. a total weight of 8,192 over the
    /// non-removed members. `init` traps above it; the registry refuses weights that would exceed it.
    public static let pointsMax = 1 << 21

    /// Point positions, ascending; `pointMembers[i]` is the index in `members` of the point at `positions[i]`.
    private let positions: [UInt64]
    private let pointMembers: [UInt32]
    /// Active members with points: the most owners a chunk can have.
    private let ownersMax: Int
    /// Among those, distinct labelled failure domains plus unlabelled servers: the most owners
    /// with pairwise distinct domains.
    private let domainSlots: Int
    /// Non-removed members with points (each appears in `candidates` from its points).
    private let membersWithPoints: Int
    /// Non-removed members without points (weight 0), by id: the tail of every candidate list.
    private let membersWithoutPoints: [Int]

    /// Builds the ring. Members are sorted by id; ids must be unique and the non-removed members'
    /// points must not exceed `pointsMax` (programmer errors: the registry checks both).
    public init(epoch: UInt64, members: [RingMember]) {
        let sorted = members.sorted { $0.id < $1.id }
        for i in sorted.indices.dropFirst() {
            precondition(sorted[i - 1].id != sorted[i].id, "duplicate chunkserver id \(sorted[i].id) on a ring")
        }
        var pointCount = 0
        for member in sorted where member.state != .removed {
            pointCount += Int(member.weight) * Self.virtualNodesPerWeightUnit
            precondition(pointCount <= Self.pointsMax, "ring over pointsMax (\(Self.pointsMax)) points")
        }
        var points: [(position: UInt64, member: UInt32)] = []
        points.reserveCapacity(pointCount)
        var withoutPoints: [Int] = []
        var withPoints = 0, ownersMax = 0, unlabelledOwners = 0
        var ownerDomains: Set<String> = []  // only counted, never iterated
        for (index, member) in sorted.enumerated() where member.state != .removed {
            let count = Int(member.weight) * Self.virtualNodesPerWeightUnit
            guard count > 0 else {
                withoutPoints.append(index)
                continue
            }
            withPoints += 1
            if member.state == .active {
                ownersMax += 1
                if member.failureDomain.isEmpty { unlabelledOwners += 1 } else { ownerDomains.insert(member.failureDomain) }
            }
            for vnode in 0..<count { points.append((Self.position(of: member.id, vnode: vnode), UInt32(index))) }
        }
        // Equal positions (vanishingly rare) are ordered by member id, so the order is still total.
        points.sort { ($0.position, $0.member) < ($1.position, $1.member) }
        self.epoch = epoch
        self.members = sorted
        self.positions = points.map(\.position)
        self.pointMembers = points.map(\.member)
        self.ownersMax = ownersMax
        self.domainSlots = ownerDomains.count + unlabelledOwners
        self.membersWithPoints = withPoints
        self.membersWithoutPoints = withoutPoints
    }

    /// The first `replicas` distinct ACTIVE servers clockwise from the chunk's position (the chunk ID's
    /// first 8 bytes as a big-endian UInt64), preferring distinct failure domains when labels allow;
    /// fewer if not enough servers.
    ///
    /// Two walks: the first takes active servers whose label is not yet used (unlabelled servers always
    /// qualify); if that leaves fewer than `replicas`, the second takes the remaining active servers in
    /// ring order. Owners come in that order; the first is the primary. Each walk visits each point at most once.
    public func owners(of chunk: ChunkID, replicas: Int) -> [RingMember] {
        let wanted = min(max(replicas, 0), ownersMax)
        guard wanted > 0 else { return [] }
        let start = firstPoint(atOrAfter: chunk.ringPosition)
        var chosen: [Int] = []
        chosen.reserveCapacity(wanted)
        var usedDomains: [String] = []
        let firstWalkTarget = min(wanted, domainSlots)
        var step = 0
        while chosen.count < firstWalkTarget, step < positions.count {
            let index = Int(pointMembers[(start + step) % positions.count])
            step += 1
            let member = members[index]
            guard member.state == .active, !chosen.contains(index) else { continue }
            if !member.failureDomain.isEmpty {
                guard !usedDomains.contains(member.failureDomain) else { continue }
                usedDomains.append(member.failureDomain)
            }
            chosen.append(index)
        }
        step = 0
        while chosen.count < wanted, step < positions.count {
            let index = Int(pointMembers[(start + step) % positions.count])
            step += 1
            guard members[index].state == .active, !chosen.contains(index) else { continue }
            chosen.append(index)
        }
        precondition(chosen.count == wanted, "ring walk found fewer active owners than it counted")
        return chosen.map { members[$0] }
    }

    /// Every non-removed member in clockwise order from the chunk (active and draining), each once: the
    /// order in which a writer falls back when an owner is down and a reader tries replicas.
    /// Members of weight 0 have no points; they come last, by id.
    public func candidates(of chunk: ChunkID) -> [RingMember] {
        var out: [RingMember] = []
        out.reserveCapacity(membersWithPoints + membersWithoutPoints.count)
        if membersWithPoints > 0 {
            var seen = [Bool](repeating: false, count: members.count)
            let start = firstPoint(atOrAfter: chunk.ringPosition)
            var step = 0, found = 0
            while found < membersWithPoints, step < positions.count {
                let index = Int(pointMembers[(start + step) % positions.count])
                step += 1
                guard !seen[index] else { continue }
                seen[index] = true
                found += 1
                out.append(members[index])
            }
            precondition(found == membersWithPoints, "ring walk missed a member")
        }
        for index in membersWithoutPoints { out.append(members[index]) }
        return out
    }

    /// The member with `id`, removed ones included; nil if the ring never had it.
    public func member(_ id: ChunkserverID) -> RingMember? {
        var low = 0, high = members.count
        while low < high {
            let mid = (low + high) / 2
            if members[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low < members.count && members[low].id == id ? members[low] : nil
    }

    /// Rings are equal when their epoch and members are (the points follow from the members).
    public static func == (a: Ring, b: Ring) -> Bool { a.epoch == b.epoch && a.members == b.members }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(epoch)
        hasher.combine(members)
    }

    // MARK: Points

    /// Index of the first point at or after `position`, wrapping to 0 past the last.
    private func firstPoint(atOrAfter position: UInt64) -> Int {
        var low = 0, high = positions.count
        while low < high {
            let mid = (low + high) / 2
            if positions[mid] < position { low = mid + 1 } else { high = mid }
        }
        return low == positions.count ? 0 : low
    }

    /// The position of point `vnode` of server `id`: the SplitMix64 finalizer of (a per-server base +
    /// vnode × the golden-ratio increment), the base itself the finalizer of the id. The finalizer is a
    /// bijection, so one server's points never collide with each other.
    ///
    /// This function is part of the placement format: changing it moves every chunk in a live cluster
    /// (`RingTests.placementIsPinned` fails if it changes).
    static func position(of id: ChunkserverID, vnode: Int) -> UInt64 {
        let base = mix(id.rawValue ^ 0x6361_6972_6E72_696E)  // "cairnrin"
        return mix(base &+ UInt64(vnode) &* 0x9E37_79B9_7F4A_7C15)
    }

    /// The SplitMix64 output function (Steele, Lea, Flood 2014).
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
