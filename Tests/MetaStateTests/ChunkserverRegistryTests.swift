import CairnCore
import CairnTestSupport
import Placement
import Testing
@testable import MetaState

/// The chunkserver registry and ring in the state machine, and readExtents.
struct ChunkserverRegistryTests {
    static let t = Timestamp(seconds: 100, nanoseconds: 7)

    func errno<T>(_ r: Result<T, FileSystemError>) -> FileSystemError? {
        if case .failure(let e) = r { return e }
        return nil
    }

    func identity(_ i: Int) -> [UInt8] { Array("identity-\(i)".utf8) }

    /// Registers servers 1...count (weight 1, no label) and returns the namespace.
    func cluster(_ count: Int, limits: MetaLimits = MetaLimits()) -> Namespace {
        var ns = Namespace(limits: limits)
        for i in 1...count {
            let (id, epoch) = try! ns.registerChunkserver(identity: identity(i), address: "10.0.0.\(i):7000", weight: 1, failureDomain: "").get()
            precondition(id == ChunkserverID(UInt64(i)) && epoch == UInt64(i))
        }
        return ns
    }

    @Test func registrationAllocatesIdsAndEpochs() throws {
        var ns = Namespace()
        #expect(ns.ringState.current.epoch == 0 && ns.ringState.current.members.isEmpty && ns.ringState.previous.isEmpty)
        let (a, e1) = try ns.registerChunkserver(identity: identity(1), address: "localhost:7001", weight: 2, failureDomain: "rack-a").get()
        let (b, e2) = try ns.registerChunkserver(identity: identity(2), address: "[::1]:7002", weight: 1, failureDomain: "").get()
        #expect(a == ChunkserverID(1) && e1 == 1 && b == ChunkserverID(2) && e2 == 2)
        let first = try #require(ns.ringState.current.member(a))
        #expect(first.address == HostPort(host: "127.0.0.1", port: 7001) && first.weight == 2 && first.failureDomain == "rack-a")
        #expect(first.state == .active)
        #expect(ns.ringState.current.member(b)?.address == HostPort(host: "::1", port: 7002))
        // The previous epochs, newest first.
        #expect(ns.ringState.previous.map(\.epoch) == [1, 0])
        #expect(ns.ringState.previous[0].members.map(\.id) == [a])
    }

    @Test func registrationIsIdempotentPerIdentity() throws {
        var ns = cluster(2)
        let before = ns
        // Same identity, same everything (localhost is 127.0.0.1 either way): nothing changes.
        #expect(try ns.registerChunkserver(identity: identity(1), address: "10.0.0.1:7000", weight: 1, failureDomain: "").get() == (ChunkserverID(1), 2))
        #expect(ns == before)
        // Same identity, new address: updated in place, new epoch, id kept.
        #expect(try ns.registerChunkserver(identity: identity(1), address: "10.9.9.9:7100", weight: 1, failureDomain: "").get() == (ChunkserverID(1), 3))
        #expect(ns.ringState.current.member(ChunkserverID(1))?.address == HostPort(host: "10.9.9.9", port: 7100))
        // New weight, then new domain: each an epoch.
        #expect(try ns.registerChunkserver(identity: identity(1), address: "10.9.9.9:7100", weight: 4, failureDomain: "").get().1 == 4)
        #expect(try ns.registerChunkserver(identity: identity(1), address: "10.9.9.9:7100", weight: 4, failureDomain: "r").get().1 == 5)
        #expect(ns.ringState.current.members.count == 2)
        // A draining server that re-registers stays draining.
        _ = try ns.setChunkserverState(ChunkserverID(2), .draining).get()
        _ = try ns.registerChunkserver(identity: identity(2), address: "10.0.0.2:7001", weight: 1, failureDomain: "").get()
        #expect(ns.ringState.current.member(ChunkserverID(2))?.state == .draining)
    }

    @Test func removedServersStayRemovedAndTheirIdsAreNeverReused() throws {
        var ns = cluster(3)
        let ring = try ns.setChunkserverState(ChunkserverID(3), .removed).get()
        #expect(ring.current.epoch == 4 && ring.current.member(ChunkserverID(3))?.state == .removed)
        // Its identity is refused; removal is final.
        #expect(errno(ns.registerChunkserver(identity: identity(3), address: "10.0.0.3:7000", weight: 1, failureDomain: "")) == .EPERM)
        #expect(errno(ns.setChunkserverState(ChunkserverID(3), .active)) == .EPERM)
        #expect(errno(ns.setChunkserverState(ChunkserverID(3), .draining)) == .EPERM)
        #expect(errno(ns.setChunkserverWeight(ChunkserverID(3), 5)) == .EPERM)
        // Removing again is a no-op (a retry), not an error.
        #expect(try ns.setChunkserverState(ChunkserverID(3), .removed).get().current.epoch == 4)
        // A new identity gets a new id, never 3.
        #expect(try ns.registerChunkserver(identity: identity(9), address: "10.0.0.3:7000", weight: 1, failureDomain: "").get() == (ChunkserverID(4), 5))
    }

    @Test func stateChangesFollowTheRules() throws {
        var ns = cluster(2)
        #expect(try ns.setChunkserverState(ChunkserverID(1), .draining).get().current.epoch == 3)
        #expect(try ns.setChunkserverState(ChunkserverID(1), .draining).get().current.epoch == 3, "no change, no epoch")
        #expect(try ns.setChunkserverState(ChunkserverID(1), .active).get().current.epoch == 4)
        #expect(try ns.setChunkserverState(ChunkserverID(1), .removed).get().current.epoch == 5)
        #expect(try ns.setChunkserverState(ChunkserverID(2), .draining).get().current.epoch == 6)
        #expect(try ns.setChunkserverState(ChunkserverID(2), .removed).get().current.epoch == 7, "draining → removed")
        #expect(errno(ns.setChunkserverState(ChunkserverID(0), .active)) == .ENOENT)
        #expect(errno(ns.setChunkserverState(ChunkserverID(3), .active)) == .ENOENT)
        #expect(errno(ns.setChunkserverState(ChunkserverID(UInt64.max), .removed)) == .ENOENT)
    }

    @Test func weightChangesFollowTheRules() throws {
        var ns = cluster(2)
        #expect(try ns.setChunkserverWeight(ChunkserverID(1), 3).get().current.member(ChunkserverID(1))?.weight == 3)
        #expect(ns.ringState.current.epoch == 3)
        #expect(try ns.setChunkserverWeight(ChunkserverID(1), 3).get().current.epoch == 3, "no change, no epoch")
        #expect(try ns.setChunkserverWeight(ChunkserverID(1), 0).get().current.epoch == 4, "weight 0 is allowed")
        #expect(errno(ns.setChunkserverWeight(ChunkserverID(7), 1)) == .ENOENT)
        #expect(errno(ns.setChunkserverWeight(ChunkserverID(1), ns.limits.chunkserverWeightMax + 1)) == .EINVAL)
        #expect(try ns.setChunkserverWeight(ChunkserverID(1), ns.limits.chunkserverWeightMax).get().current.epoch == 5)
    }

    @Test func registrationValidatesItsInput() {
        var ns = Namespace()
        let limits = ns.limits
        func register(identity: [UInt8] = [1], address: String = "10.0.0.1:7000", weight: UInt32 = 1, domain: String = "") -> FileSystemError? {
            errno(ns.registerChunkserver(identity: identity, address: address, weight: weight, failureDomain: domain))
        }
        #expect(register(identity: []) == .EINVAL)
        #expect(register(identity: Array(repeating: 1, count: limits.chunkserverIdentityBytesMax + 1)) == .EINVAL)
        for address in ["", "10.0.0.1", "10.0.0.1:", "10.0.0.1:70000", "10.0.0.1:0", ":7000", "[::1", "host:port",
                        String(repeating: "h", count: limits.chunkserverAddressBytesMax) + ":1"] {
            #expect(register(address: address) == .EINVAL, "address \(address.prefix(30))")
        }
        #expect(register(weight: limits.chunkserverWeightMax + 1) == .EINVAL)
        #expect(register(domain: String(repeating: "d", count: limits.failureDomainBytesMax + 1)) == .EINVAL)
        #expect(ns.ringState.current.epoch == 0, "refused registrations change nothing")
        #expect(register(identity: Array(repeating: 1, count: limits.chunkserverIdentityBytesMax),
                         weight: limits.chunkserverWeightMax, domain: String(repeating: "d", count: limits.failureDomainBytesMax)) == nil)
    }

    @Test func registryBoundsAreEnforced() throws {
        var limits = MetaLimits()
        limits.chunkserversMax = 3
        limits.ringWeightTotalMax = 10
        limits.chunkserverWeightMax = 8
        var ns = cluster(3, limits: limits)
        // A fourth server: the registry is full, even after a removal (removed servers stay registered).
        #expect(errno(ns.registerChunkserver(identity: identity(4), address: "10.0.0.4:7000", weight: 1, failureDomain: "")) == .ENOSPC)
        _ = try ns.setChunkserverState(ChunkserverID(3), .removed).get()
        #expect(errno(ns.registerChunkserver(identity: identity(4), address: "10.0.0.4:7000", weight: 1, failureDomain: "")) == .ENOSPC)
        // Total weight on the ring: 1 + 8 = 9 fits, 1 + 8 + removed server's weight does not count.
        #expect(try ns.setChunkserverWeight(ChunkserverID(2), 8).get().current.epoch == 5)
        #expect(errno(ns.setChunkserverWeight(ChunkserverID(1), 3)) == .ENOSPC)
        #expect(errno(ns.registerChunkserver(identity: identity(1), address: "10.0.0.1:7000", weight: 3, failureDomain: "")) == .ENOSPC)
        #expect(try ns.setChunkserverWeight(ChunkserverID(1), 2).get().current.epoch == 6)
        #expect(throws: Never.self) { try limits.validate() }
        var bad = MetaLimits()
        bad.ringWeightTotalMax = UInt64(Ring.pointsMax / Ring.virtualNodesPerWeightUnit) + 1
        #expect(throws: CairnError.self) { try bad.validate() }
        bad = MetaLimits()
        bad.extentsPerReadMax = bad.commandBytesMax
        #expect(throws: CairnError.self) { try bad.validate() }
    }

    @Test func ringHistoryIsBounded() throws {
        var limits = MetaLimits()
        limits.ringHistoryMax = 2
        var ns = cluster(5, limits: limits)
        #expect(ns.ringState.previous.map(\.epoch) == [4, 3])
        _ = try ns.setChunkserverState(ChunkserverID(1), .draining).get()
        #expect(ns.ringState.current.epoch == 6 && ns.ringState.previous.map(\.epoch) == [5, 4])
        #expect(ns.ringState.previous[0].member(ChunkserverID(1))?.state == .active)
        #expect(MetaLimits().ringHistoryMax == 4)
    }

    /// Through the state machine: the replies, reads that are not deduplicated, registrations that are.
    @Test func commandsThroughTheStateMachine() throws {
        let machine = MetaStateMachine()
        let register = MetaOperation.registerChunkserver(identity: [7], address: "10.0.0.7:7000", weight: 1, failureDomain: "r")
        #expect(machine.apply(MetaCommand(now: Self.t, operation: register)) == .chunkserver(ChunkserverID(1), epoch: 1))
        #expect(machine.apply(MetaCommand(now: Self.t, operation: register)) == .chunkserver(ChunkserverID(1), epoch: 1))
        guard case .ring(let ring) = machine.apply(MetaCommand(now: Self.t, operation: .ring)) else {
            Issue.record("ring failed")
            return
        }
        #expect(ring == machine.namespace.ringState && ring.current.epoch == 1)
        #expect(machine.apply(MetaCommand(now: Self.t, operation: .setChunkserverState(ChunkserverID(1), .draining)))
                == .ring(machine.namespace.ringState))
        #expect(machine.namespace.ringState.current.epoch == 2)
        #expect(machine.apply(MetaCommand(now: Self.t, operation: .setChunkserverWeight(ChunkserverID(2), 1))) == .failure(.ENOENT))
        #expect(!MetaOperation.ring.isMutation && !MetaOperation.readExtents(1, offset: 0, length: 1).isMutation)
        #expect(register.isMutation && MetaOperation.setChunkserverState(ChunkserverID(1), .active).isMutation)
        #expect(MetaOperation.setChunkserverWeight(ChunkserverID(1), 1).isMutation)
    }

    @Test func readExtentsReturnsTheOverlappingExtents() throws {
        var ns = Namespace()
        let s = try ns.openSession(ttlNanoseconds: 1 << 40, now: Self.t).get()
        let opened = try ns.create(1, Array("f".utf8), flags: [.create, .write], mode: 0o644, session: s, .root, now: Self.t).get().0
        let f = opened.attributes.inode
        let chunks = (0..<10).map { SHA256.hash([UInt8($0)]) }
        // Extents at [0,100), [200,300), … [1800,1900): holes between them.
        let extents = (0..<10).map { Extent(fileOffset: UInt64($0) * 200, length: 100, chunkID: chunks[$0], chunkOffset: 0) }
        _ = try ns.commitWrite(session: s, handle: opened.handle, extents: extents, .root, now: Self.t).get()
        func read(_ offset: UInt64, _ length: UInt64) throws -> [UInt64] {
            let (out, size) = try ns.readExtents(f, offset: offset, length: length).get()
            #expect(size == 1900)
            return out.map(\.fileOffset)
        }
        #expect(try read(0, 1900) == extents.map(\.fileOffset))
        #expect(try read(0, UInt64.max) == extents.map(\.fileOffset), "offset + length overflowing reads to the end")
        #expect(try read(50, 1) == [0])
        #expect(try read(100, 100) == [], "a hole")
        #expect(try read(99, 102) == [0, 200], "touching both edges")
        #expect(try read(250, 400) == [200, 400, 600])
        #expect(try read(5000, 10) == [])
        #expect(try read(0, 0) == [])
        // Bounded per reply: the caller continues from the last extent's end.
        var limits = MetaLimits()
        limits.extentsPerReadMax = 3
        var small = Namespace(limits: limits)
        let s2 = try small.openSession(ttlNanoseconds: 1 << 40, now: Self.t).get()
        let o2 = try small.create(1, Array("f".utf8), flags: [.create, .write], mode: 0o644, session: s2, .root, now: Self.t).get().0
        _ = try small.commitWrite(session: s2, handle: o2.handle, extents: extents, .root, now: Self.t).get()
        var offset: UInt64 = 0, seen: [Extent] = [], replies = 0
        while true {
            let (page, _) = try small.readExtents(o2.attributes.inode, offset: offset, length: UInt64.max - offset).get()
            replies += 1
            #expect(page.count <= 3)
            guard let last = page.last else { break }
            seen += page
            offset = last.fileEnd
        }
        #expect(seen == extents && replies == 5)
        // Errors.
        #expect(errno(ns.readExtents(999, offset: 0, length: 1)) == .ENOENT)
        #expect(errno(ns.readExtents(1, offset: 0, length: 1)) == .EISDIR)
        let link = try ns.symlink(1, Array("l".utf8), target: Array("f".utf8), .root, now: Self.t).get().inode
        #expect(errno(ns.readExtents(link, offset: 0, length: 1)) == .EINVAL)
        let fifo = try ns.mknod(1, Array("p".utf8), type: .fifo, mode: 0o644, rdev: 0, .root, now: Self.t).get().inode
        #expect(errno(ns.readExtents(fifo, offset: 0, length: 1)) == .EINVAL)
        // Through the state machine.
        let machine = MetaStateMachine()
        try machine.restore(ns.snapshot(appliedIndex: 0))
        #expect(machine.apply(MetaCommand(now: Self.t, operation: .readExtents(f, offset: 250, length: 100)))
                == .extents([extents[1]], size: 1900))
        #expect(machine.apply(MetaCommand(now: Self.t, operation: .readExtents(1, offset: 0, length: 1))) == .failure(.EISDIR))
    }

    /// The registry survives a snapshot round trip, and the restored ring places chunks identically.
    @Test func registrySurvivesSnapshots() throws {
        var ns = cluster(6)
        _ = try ns.setChunkserverState(ChunkserverID(2), .draining).get()
        _ = try ns.setChunkserverState(ChunkserverID(4), .removed).get()
        _ = try ns.setChunkserverWeight(ChunkserverID(5), 3).get()
        _ = try ns.registerChunkserver(identity: identity(1), address: "10.1.1.1:7000", weight: 2, failureDomain: "rack").get()
        let machine = MetaStateMachine()
        try machine.restore(ns.snapshot(appliedIndex: 9))
        #expect(machine.namespace == ns)
        #expect(machine.namespace.ringState.previous.count == 4)
        for i in 0..<200 {
            let chunk = SHA256.hash([UInt8(i)])
            #expect(machine.namespace.ringState.current.owners(of: chunk, replicas: 3) == ns.ringState.current.owners(of: chunk, replicas: 3))
        }
        // The restored registry still refuses the removed identity and knows the others.
        var restored = machine.namespace
        #expect(errno(restored.registerChunkserver(identity: identity(4), address: "10.0.0.4:7000", weight: 1, failureDomain: "")) == .EPERM)
        #expect(try restored.registerChunkserver(identity: identity(6), address: "10.0.0.6:7000", weight: 1, failureDomain: "").get().0 == ChunkserverID(6))
    }
}
