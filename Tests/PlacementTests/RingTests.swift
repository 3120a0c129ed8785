import CairnCore
import Testing
@testable import Placement

/// `count` chunk IDs as real chunks have them: SHA-256 digests (of the index and a seed).
func chunkIDs(_ count: Int, seed: UInt64 = 1) -> [ChunkID] {
    (0..<count).map { i in
        var bytes: [UInt8] = []
        for value in [seed, UInt64(i)] { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
        return SHA256.hash(bytes)
    }
}

func member(_ id: UInt64, weight: UInt32 = 1, domain: String = "", state: ChunkserverState = .active) -> RingMember {
    RingMember(id: ChunkserverID(id), address: HostPort(host: "10.0.0.\(id)", port: 7000), weight: weight,
               failureDomain: domain, state: state)
}

func servers(_ ids: ClosedRange<UInt64>, weight: UInt32 = 1) -> [RingMember] { ids.map { member($0, weight: weight) } }

struct RingTests {
    static let chunks = chunkIDs(20_000)

    @Test func membersAreSortedAndFoundById() {
        let ring = Ring(epoch: 3, members: [member(5), member(2), member(9, state: .removed)])
        #expect(ring.members.map(\.id.rawValue) == [2, 5, 9])
        #expect(ring.member(ChunkserverID(5))?.address.host == "10.0.0.5")
        #expect(ring.member(ChunkserverID(9))?.state == .removed)
        #expect(ring.member(ChunkserverID(4)) == nil)
        #expect(ring.member(ChunkserverID(10)) == nil)
        #expect(ChunkserverID(7).description == "cs7")
    }

    /// Placement depends only on the members, not on the order they are given in.
    @Test func placementIsDeterministic() {
        let members = (1...7 as ClosedRange<UInt64>).map { member($0, weight: UInt32($0 % 3 + 1), domain: "rack\($0 % 3)") }
        let a = Ring(epoch: 1, members: members)
        let b = Ring(epoch: 1, members: members.reversed())
        var shuffled = members
        shuffled.swapAt(0, 4)
        shuffled.swapAt(2, 6)
        let c = Ring(epoch: 1, members: shuffled)
        #expect(a == b && b == c)
        for chunk in Self.chunks.prefix(2000) {
            let owners = a.owners(of: chunk, replicas: 3)
            #expect(owners == b.owners(of: chunk, replicas: 3))
            #expect(owners == c.owners(of: chunk, replicas: 3))
            #expect(a.candidates(of: chunk) == c.candidates(of: chunk))
        }
    }

    /// The point positions are part of the placement format: a change would move every chunk of a
    /// live cluster. These owners were computed once; this test fails if the position function changes.
    @Test func placementIsPinned() {
        let ring = Ring(epoch: 1, members: servers(1...8))
        let pinned: [[UInt64]] = Self.pinnedOwners
        let measured = Self.chunks.prefix(pinned.count).map { ring.owners(of: $0, replicas: 3).map(\.id.rawValue) }
        #expect(measured == pinned)
        #expect(Ring.position(of: ChunkserverID(1), vnode: 0) == Self.pinnedPosition)
    }

    @Test(arguments: [(1, 3), (2, 3), (3, 3), (5, 3), (9, 2), (12, 5), (4, 1)] as [(UInt64, Int)])
    func ownersAreDistinctAndAsManyAsPossible(serverCount: UInt64, replicas: Int) {
        let ring = Ring(epoch: 1, members: servers(1...serverCount))
        for chunk in Self.chunks.prefix(5000) {
            let owners = ring.owners(of: chunk, replicas: replicas)
            #expect(owners.count == min(replicas, Int(serverCount)))
            #expect(Set(owners.map(\.id)).count == owners.count)
            // Without labels the owners are the first distinct servers of the candidate order.
            #expect(owners == Array(ring.candidates(of: chunk).prefix(owners.count)))
        }
        #expect(ring.owners(of: Self.chunks[0], replicas: 0).isEmpty)
        #expect(ring.owners(of: Self.chunks[0], replicas: -1).isEmpty)
        #expect(ring.owners(of: Self.chunks[0], replicas: Int.max).count == Int(serverCount))
    }

    @Test func emptyRingOwnsNothing() {
        let ring = Ring(epoch: 0, members: [])
        #expect(ring.owners(of: Self.chunks[0], replicas: 3).isEmpty)
        #expect(ring.candidates(of: Self.chunks[0]).isEmpty)
        let idle = Ring(epoch: 1, members: [member(1, weight: 0), member(2, state: .draining)])
        #expect(idle.owners(of: Self.chunks[0], replicas: 3).isEmpty)
        #expect(idle.candidates(of: Self.chunks[0]).map(\.id.rawValue) == [2, 1])
    }

    @Test func drainingAndRemovedServersNeverOwnButDrainingOnesAreCandidates() {
        let ring = Ring(epoch: 1, members: servers(1...4) + [member(5, state: .draining), member(6, state: .removed),
                                                             member(7, weight: 0)])
        var drainingFirst = 0
        for chunk in Self.chunks.prefix(5000) {
            let owners = ring.owners(of: chunk, replicas: 3)
            #expect(owners.count == 3)
            #expect(owners.allSatisfy { $0.state == .active && $0.weight > 0 })
            let candidates = ring.candidates(of: chunk)
            #expect(candidates.map(\.id.rawValue).sorted() == [1, 2, 3, 4, 5, 7])
            #expect(candidates.last?.id == ChunkserverID(7), "weight-0 members come last")
            if candidates.first?.id == ChunkserverID(5) { drainingFirst += 1 }
        }
        #expect(drainingFirst > 500, "the draining server keeps its place in the candidate order")
    }

    /// A weight-2 server gets about twice the chunks of a weight-1 server.
    @Test func sharesAreProportionalToWeight() {
        let ring = Ring(epoch: 1, members: servers(1...4) + [member(5, weight: 2), member(6, weight: 3)])
        var counts: [UInt64: Int] = [:]
        for chunk in Self.chunks { counts[ring.owners(of: chunk, replicas: 1)[0].id.rawValue, default: 0] += 1 }
        let unit = Double(Self.chunks.count) / 9
        for id in 1...6 as ClosedRange<UInt64> {
            let expected = unit * Double(id == 5 ? 2 : id == 6 ? 3 : 1)
            let share = Double(counts[id] ?? 0) / expected
            print("weight share: server \(id) got \(counts[id] ?? 0) chunks, \(share) × its fair share")
            // 256 points per weight unit: a share's standard deviation is about 6%; allow 4 of them.
            #expect(abs(share - 1) < 0.25, "server \(id): \(share) × its fair share")
        }
        let singleWeight = Double((1...4 as ClosedRange<UInt64>).map { counts[$0] ?? 0 }.reduce(0, +)) / 4
        let ratio = Double(counts[5] ?? 0) / singleWeight
        print("weight-2 / weight-1 chunk ratio: \(ratio)")
        #expect(abs(ratio - 2) < 0.35)
    }

    @Test func ownersSpanDistinctFailureDomainsWhenThereAreEnough() {
        // Six servers in three racks: every chunk's three owners are in three racks.
        let racks = Ring(epoch: 1, members: (1...6 as ClosedRange<UInt64>).map { member($0, domain: "rack\($0 % 3)") })
        for chunk in Self.chunks.prefix(5000) {
            let owners = racks.owners(of: chunk, replicas: 3)
            #expect(owners.count == 3)
            #expect(Set(owners.map(\.failureDomain)).count == 3)
        }
        // Two racks, three replicas: both racks are used, then a second server of one rack.
        let two = Ring(epoch: 1, members: (1...6 as ClosedRange<UInt64>).map { member($0, domain: "rack\($0 % 2)") })
        for chunk in Self.chunks.prefix(5000) {
            let owners = two.owners(of: chunk, replicas: 3)
            #expect(owners.count == 3 && Set(owners.map(\.id)).count == 3)
            #expect(Set(owners.prefix(2).map(\.failureDomain)).count == 2)
        }
        // Unlabelled servers count as domains of their own; a labelled pair shares one.
        let mixed = Ring(epoch: 1, members: [member(1, domain: "a"), member(2, domain: "a"), member(3), member(4)])
        for chunk in Self.chunks.prefix(5000) {
            let owners = mixed.owners(of: chunk, replicas: 3)
            #expect(Set(owners.map(\.id)).isSuperset(of: [ChunkserverID(3), ChunkserverID(4)]))
            #expect(owners.filter { $0.failureDomain == "a" }.count == 1)
        }
    }

    /// DESIGN.md: adding one server to N moves about R/(N+1) of the chunks' replicas (one replica each
    /// for that fraction of the chunks: 1/(N+1) of all replicas), and only onto the new server.
    @Test(arguments: [(5, 3), (9, 2), (20, 3)] as [(UInt64, Int)])
    func addingAServerMovesReplicasOnlyOntoIt(serverCount: UInt64, replicas: Int) {
        let before = Ring(epoch: 1, members: servers(1...serverCount))
        let newcomer = ChunkserverID(serverCount + 1)
        let after = Ring(epoch: 2, members: servers(1...serverCount + 1))
        var movedReplicas = 0, chunksTouched = 0
        for chunk in Self.chunks {
            let old = Set(before.owners(of: chunk, replicas: replicas).map(\.id))
            let new = Set(after.owners(of: chunk, replicas: replicas).map(\.id))
            let gained = new.subtracting(old), lost = old.subtracting(new)
            #expect(gained.isSubset(of: [newcomer]), "a replica moved somewhere other than the new server")
            #expect(gained.count == lost.count)
            movedReplicas += lost.count
            if !lost.isEmpty { chunksTouched += 1 }
        }
        let perChunk = Double(movedReplicas) / Double(Self.chunks.count)
        let ofReplicas = Double(movedReplicas) / Double(Self.chunks.count * replicas)
        let expected = Double(replicas) / Double(serverCount + 1)
        print("adding 1 server to N=\(serverCount), R=\(replicas): \(perChunk) replicas moved per chunk "
              + "(expected R/(N+1) = \(expected)), \(ofReplicas) of all replicas (expected \(1 / Double(serverCount + 1))), "
              + "\(chunksTouched) of \(Self.chunks.count) chunks touched")
        // The new server's share of points decides it: about ±6% at 256 points per weight unit; allow 3.5 σ.
        #expect(abs(perChunk - expected) < 0.2 * expected)
    }

    /// Removing (or draining) a server moves only the replicas it held.
    @Test(arguments: [ChunkserverState.removed, .draining])
    func removingAServerMovesOnlyItsReplicas(state: ChunkserverState) {
        let before = Ring(epoch: 1, members: servers(1...6))
        let gone = ChunkserverID(4)
        let after = Ring(epoch: 2, members: servers(1...6).map { $0.id == gone ? member(4, state: state) : $0 })
        var moved = 0
        for chunk in Self.chunks {
            let old = Set(before.owners(of: chunk, replicas: 3).map(\.id))
            let new = Set(after.owners(of: chunk, replicas: 3).map(\.id))
            #expect(!new.contains(gone))
            if old.contains(gone) {
                #expect(old.subtracting(new) == [gone])
                moved += 1
            } else {
                #expect(old == new, "a chunk the removed server did not hold moved")
            }
        }
        print("removing 1 of 6 servers (\(state)), R=3: \(Double(moved) / Double(Self.chunks.count)) replicas moved per chunk (expected 0.5)")
    }

    @Test func changingAWeightMovesReplicasOnlyToOrFromThatServer() {
        let before = Ring(epoch: 1, members: servers(1...6))
        let after = Ring(epoch: 2, members: servers(1...6).map { $0.id == ChunkserverID(2) ? member(2, weight: 2) : $0 })
        for chunk in Self.chunks.prefix(5000) {
            let old = Set(before.owners(of: chunk, replicas: 2).map(\.id))
            let new = Set(after.owners(of: chunk, replicas: 2).map(\.id))
            #expect(new.subtracting(old).isSubset(of: [ChunkserverID(2)]))
        }
    }
}

extension RingTests {
    /// Owners (R=3) of the first eight test chunks on servers 1...8 of weight 1, recorded when the
    /// position function was written.
    static let pinnedOwners: [[UInt64]] = [[1, 3, 2], [4, 3, 5], [4, 2, 8], [1, 6, 8], [7, 1, 4], [6, 1, 7], [3, 1, 7], [5, 6, 3]]
    static let pinnedPosition: UInt64 = 5_629_614_751_774_192_003
}
