import CairnCore
import CairnTestSupport
import Placement
import Testing
@testable import MetaState

/// Builds a random state by running the differential generator's operations (as several
/// users) on a namespace alone, then leaves some files open and unlinked and some replies
/// remembered, so snapshots carry every kind of record.
func randomState(seed: UInt64, ops: Int) -> MetaStateMachine {
    var model = ModelSide()
    var generator = DifferentialGenerator(rng: SplitMix(seed: seed))
    for index in 0..<ops {
        let cred = differentialUsers[Int(generator.rng.next() % UInt64(differentialUsers.count))]
        _ = model.run(generator.next(), as: cred, chunkSeed: seed &+ UInt64(index))
    }
    let machine = MetaStateMachine()
    try! machine.restore(model.ns.snapshot(appliedIndex: 0))
    // Open, write and unlink through commands, so sessions hold handles, orphans and replies.
    let now = Timestamp(seconds: 5000, nanoseconds: 1)
    guard case .session(let s) = machine.apply(MetaCommand(now: now, operation: .openSession(ttlNanoseconds: 1 << 40))) else {
        preconditionFailure("openSession failed")
    }
    for i in 0..<5 {
        let name = Array("open\(i)".utf8)
        guard case .opened(let opened, _) = machine.apply(MetaCommand(session: s, sequence: UInt64(3 * i + 1), now: now,
                                                                     operation: .create(parent: 1, name: name, flags: [.create, .write], mode: 0o644))) else { continue }
        let extent = Extent(fileOffset: UInt64(i) * 10, length: 10, chunkID: SHA256.hash([UInt8(i), UInt8(seed & 0xff)]), chunkOffset: 0)
        _ = machine.apply(MetaCommand(session: s, sequence: UInt64(3 * i + 2), now: now, operation: .commitWrite(handle: opened.handle, extents: [extent])))
        if i % 2 == 0 { _ = machine.apply(MetaCommand(session: s, sequence: UInt64(3 * i + 3), now: now, operation: .unlink(parent: 1, name: name))) }
    }
    // Chunkservers join, change and leave, so snapshots carry a registry, a ring history and
    // remembered ring replies.
    var rng = SplitMix(seed: seed ^ 0xC4A1)
    for sequence in 100..<UInt64(100 + 40) {
        _ = machine.apply(MetaCommand(session: s, sequence: sequence, now: now, operation: randomRegistryOperation(&rng)))
    }
    return machine
}

/// A registry operation on a small cluster: mostly valid, sometimes refused.
func randomRegistryOperation(_ rng: inout SplitMix) -> MetaOperation {
    let server = rng.next() % 12 + 1
    switch rng.next() % 4 {
    case 0, 1:
        return .registerChunkserver(identity: Array("server-\(server)".utf8), address: "10.0.\(rng.next() % 2).\(server):7000",
                                    weight: UInt32(rng.next() % 4), failureDomain: ["", "rack-a", "rack-b"][Int(rng.next() % 3)])
    case 2:
        let states: [ChunkserverState] = [.active, .active, .draining, .removed]
        return .setChunkserverState(ChunkserverID(server), states[Int(rng.next() % 4)])
    default:
        return .setChunkserverWeight(ChunkserverID(server), UInt32(rng.next() % 5))
    }
}

struct SnapshotTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func snapshotRoundTripsRandomStates(seed: UInt64) throws {
        let machine = randomState(seed: seed, ops: 1500)
        #expect(!machine.namespace.orphans.isEmpty)
        #expect(!machine.namespace.ringState.current.members.isEmpty && !machine.namespace.ringState.previous.isEmpty)
        let snapshot = machine.snapshot()
        #expect(snapshot == machine.snapshot(), "snapshots of one state must be byte-identical")
        let copy = MetaStateMachine()
        try copy.restore(snapshot)
        #expect(copy.namespace == machine.namespace)
        #expect(copy.snapshot() == snapshot)
        #expect(copy.digest == machine.digest)
        // The restored copy keeps behaving identically.
        let command = MetaCommand(now: Timestamp(seconds: 9000, nanoseconds: 0), operation: .mkdir(parent: 1, name: Array("after".utf8), mode: 0o755))
        #expect(copy.apply(command.encoded(), at: 10) == machine.apply(command.encoded(), at: 10))
        #expect(copy.digest == machine.digest)
    }

    @Test func differentStatesHaveDifferentDigests() {
        let a = randomState(seed: 11, ops: 300), b = randomState(seed: 12, ops: 300)
        #expect(a.digest != b.digest)
    }

    @Test func corruptSnapshotsAreRefused() throws {
        let machine = randomState(seed: 21, ops: 800)
        let snapshot = machine.snapshot()
        let target = MetaStateMachine()
        let before = target.digest
        var rng = SplitMix(seed: 99)
        for trial in 0..<300 {
            var bad = snapshot
            switch trial % 3 {
            case 0: bad[Int(rng.next() % UInt64(bad.count))] ^= UInt8(1 << (rng.next() % 8))
            case 1: bad = Array(bad.prefix(Int(rng.next() % UInt64(bad.count))))
            default: bad = testBytes(count: Int(rng.next() % 4096), seed: rng.next())
            }
            #expect(throws: CairnError.self) { try target.restore(bad) }
        }
        #expect(target.digest == before, "a refused snapshot must leave the state alone")
    }

    /// A snapshot whose checksum is right but whose content breaks an invariant (a writer bug)
    /// is refused by the consistency checks, not installed.
    @Test func inconsistentSnapshotsWithGoodChecksumsAreRefused() throws {
        var ns = Namespace()
        _ = ns.mkdir(1, Array("d".utf8), mode: 0o755, .root, now: .zero)
        var broken = ns
        broken.inodes[1]!.nlink = 7
        #expect(throws: CairnError.self) { try MetaStateMachine().restore(broken.snapshot(appliedIndex: 0)) }
        broken = ns
        broken.inodes[2]!.directory!.parent = 2
        #expect(throws: CairnError.self) { try MetaStateMachine().restore(broken.snapshot(appliedIndex: 0)) }
        broken = ns
        broken.inodes[1]!.directory!.entries[Array("d".utf8)]!.inode = 77
        #expect(throws: CairnError.self) { try MetaStateMachine().restore(broken.snapshot(appliedIndex: 0)) }
        try MetaStateMachine().restore(ns.snapshot(appliedIndex: 0))

        // The registry: each broken copy must be refused.
        for i in 1...3 as ClosedRange<UInt8> {
            _ = ns.registerChunkserver(identity: [i], address: "10.0.0.\(i):7000", weight: 1, failureDomain: "")
        }
        _ = ns.setChunkserverState(ChunkserverID(2), .removed)
        try MetaStateMachine().restore(ns.snapshot(appliedIndex: 0))
        let member = ns.registry.members[0]
        var registryBreaks: [(String, (inout ChunkserverRegistry) -> Void)] = [
            ("duplicate identity", { $0.identities[1] = $0.identities[0] }),
            ("empty identity", { $0.identities[0] = [] }),
            ("epoch behind the registrations", { $0.ring.current = Ring(epoch: 1, members: $0.ring.current.members) }),
            ("ids not 1, 2, …", { r in
                r.ring.current = Ring(epoch: r.ring.current.epoch, members: r.ring.current.members.map { m in
                    var m = m
                    m.id = ChunkserverID(m.id.rawValue + 1)
                    return m
                })
            }),
            ("port 0", { r in
                var members = r.ring.current.members
                members[0].address.port = 0
                r.ring.current = Ring(epoch: r.ring.current.epoch, members: members)
            }),
            ("previous ring not older", { $0.ring.previous[0] = Ring(epoch: $0.ring.current.epoch, members: []) }),
            ("previous ring with an unknown id", { r in
                var stranger = member
                stranger.id = ChunkserverID(99)
                r.ring.previous[0] = Ring(epoch: r.ring.previous[0].epoch, members: [stranger])
            }),
        ]
        registryBreaks.append(("history longer than ringHistoryMax", { r in
            r.ring.current = Ring(epoch: 100, members: r.ring.current.members)
            r.ring.previous = (1...5).map { Ring(epoch: UInt64(100 - $0), members: []) }
        }))
        for (reason, breakIt) in registryBreaks {
            broken = ns
            breakIt(&broken.registry)
            #expect(throws: CairnError.self, "\(reason)") { try MetaStateMachine().restore(broken.snapshot(appliedIndex: 0)) }
        }
    }
}

struct CommandTests {
    static let now = Timestamp(seconds: 1_700_000_000, nanoseconds: 123_456_789)
    static let alice = Credentials(uid: 1000, gid: 1000, groups: [2000, 1000])

    static let sampleOperations: [MetaOperation] = [
        .openSession(ttlNanoseconds: 30_000_000_000), .heartbeat, .closeSession, .expireSessions,
        .lookup(parent: 1, name: Array("x".utf8)), .getattr(1), .readlink(9), .readdir(1, after: 3, count: 100), .statfs,
        .getxattr(1, name: Array("user.a".utf8), sizeMax: 10), .getxattr(1, name: Array("user.a".utf8), sizeMax: nil),
        .listxattr(1, sizeMax: nil), .mkdir(parent: 1, name: Array("d".utf8), mode: 0o755),
        .mknod(parent: 1, name: Array("p".utf8), type: .fifo, mode: 0o644, rdev: 0),
        .symlink(parent: 1, name: Array("s".utf8), target: Array("/t".utf8)),
        .create(parent: 1, name: Array("f".utf8), flags: [.create, .exclusive, .write], mode: 0o644),
        .open(2, flags: [.read]), .close(3), .link(2, newParent: 1, newName: Array("g".utf8)),
        .unlink(parent: 1, name: Array("g".utf8)), .rmdir(parent: 1, name: Array("d".utf8)),
        .rename(oldParent: 1, oldName: Array("a".utf8), newParent: 1, newName: Array("b".utf8), flags: .exchange),
        .setattr(2, AttributeChanges(mode: 0o600, uid: 5, gid: 6, size: 7, atime: .now, mtime: .set(now)), handle: 4),
        .setattr(2, AttributeChanges(), handle: nil),
        .commitWrite(handle: 1, extents: [Extent(fileOffset: 0, length: 5, chunkID: SHA256.hash([1]), chunkOffset: 3)]),
        .setxattr(1, name: Array("user.a".utf8), value: [1, 2], flags: .create), .removexattr(1, name: Array("user.a".utf8)),
        .registerChunkserver(identity: [1, 2, 3], address: "10.0.0.1:7000", weight: 2, failureDomain: "rack-1"),
        .registerChunkserver(identity: Array(repeating: 0xff, count: 64), address: "[::1]:7001", weight: 0, failureDomain: ""),
        .setChunkserverState(ChunkserverID(1), .draining), .setChunkserverState(ChunkserverID(300), .removed),
        .setChunkserverWeight(ChunkserverID(2), 7), .ring, .readExtents(2, offset: 4096, length: UInt64.max),
        .closeHandles([]), .closeHandles([1, 300, 1 << 40]),
    ]

    @Test func commandsRoundTrip() throws {
        for (i, operation) in Self.sampleOperations.enumerated() {
            let command = MetaCommand(session: UInt64(i), sequence: UInt64(i * 7), credentials: Self.alice, now: Self.now, operation: operation)
            #expect(try MetaCommand(decoding: command.encoded()) == command)
        }
    }

    @Test func aCloseHandlesOverItsBoundIsRefused() throws {
        let most = MetaCommand(now: Self.now, operation: .closeHandles(Array(1...UInt64(MetaOperation.closeHandlesMax))))
        #expect(try MetaCommand(decoding: most.encoded()) == most)
        let over = MetaCommand(now: Self.now, operation: .closeHandles(Array(1...UInt64(MetaOperation.closeHandlesMax + 1))))
        #expect(throws: FileSystemError.self) { try MetaCommand(decoding: over.encoded()) }
    }

    /// closeHandles closes what is open, skips what is not, and releases an unlinked file's
    /// chunks when its last handle goes; a stale session is refused.
    @Test func closeHandlesClosesEachOpenHandle() throws {
        let machine = MetaStateMachine()
        func apply(_ operation: MetaOperation, session: SessionID = 0, sequence: UInt64 = 0) -> MetaReply {
            machine.apply(MetaCommand(session: session, sequence: sequence, now: Self.now, operation: operation))
        }
        guard case .session(let session) = apply(.openSession(ttlNanoseconds: 60_000_000_000)) else { throw CairnError(.internal, "no session") }
        var handles: [HandleID] = []
        for (i, name) in ["a", "b"].enumerated() {
            guard case .opened(let opened, _) = apply(.create(parent: 1, name: Array(name.utf8), flags: [.create, .write], mode: 0o644),
                                                      session: session, sequence: UInt64(i + 1)) else { throw CairnError(.internal, "create") }
            handles.append(opened.handle)
        }
        let chunk = SHA256.hash([9])
        guard case .attributesReleased(let written, _) = apply(
            .commitWrite(handle: handles[0], extents: [Extent(fileOffset: 0, length: 1, chunkID: chunk, chunkOffset: 0)]),
            session: session, sequence: 3) else { throw CairnError(.internal, "commitWrite") }
        #expect(written.size == 1)
        #expect(apply(.unlink(parent: 1, name: Array("a".utf8)), session: session, sequence: 4) == .released([]))
        // Both closed at once (plus one never opened): the unlinked file's chunk is released now.
        #expect(apply(.closeHandles(handles + [999]), session: session, sequence: 5) == .released([chunk]))
        #expect(apply(.close(handles[1]), session: session, sequence: 6) == .failure(.EBADF))
        #expect(apply(.closeHandles(handles), session: 4242, sequence: 1) == .failure(.ESTALE))
    }

    @Test func repliesRoundTrip() throws {
        let members = [
            RingMember(id: ChunkserverID(1), address: HostPort(host: "10.0.0.1", port: 7000), weight: 3, failureDomain: "rack-ä", state: .active),
            RingMember(id: ChunkserverID(2), address: HostPort(host: "::1", port: 1), weight: 0, failureDomain: "", state: .draining),
            RingMember(id: ChunkserverID(9), address: HostPort(host: "h", port: 65535), weight: 1, failureDomain: "x", state: .removed),
        ]
        let ring = RingState(current: Ring(epoch: 7, members: members),
                             previous: [Ring(epoch: 6, members: Array(members.prefix(2))), Ring(epoch: 2, members: [])])
        let replies: [MetaReply] = [
            .chunkserver(ChunkserverID(42), epoch: 1 << 40), .ring(ring), .ring(RingState(current: Ring(epoch: 0, members: []), previous: [])),
            .extents([Extent(fileOffset: 0, length: 5, chunkID: SHA256.hash([1]), chunkOffset: 3),
                      Extent(fileOffset: 1 << 33, length: 4 << 20, chunkID: SHA256.hash([2]), chunkOffset: 0)], size: 1 << 34),
            .extents([], size: 0), .failure(.EPERM), .done,
        ]
        for reply in replies {
            let decoded = try MetaReply(decoding: reply.encoded())
            #expect(decoded == reply)
            if case .ring(let a) = reply, case .ring(let b) = decoded {
                // Equal rings place equally (their points were rebuilt from the members).
                for chunk in [SHA256.hash([7]), SHA256.hash([8])] {
                    #expect(a.current.candidates(of: chunk) == b.current.candidates(of: chunk))
                }
            }
        }
    }

    /// Registry replies with bad bytes are refused: unknown states, unsorted ids, invalid UTF-8,
    /// a ring over its point bound.
    @Test func malformedRingRepliesAreRefused() throws {
        let good = MetaReply.ring(RingState(current: Ring(epoch: 3, members: [
            RingMember(id: ChunkserverID(1), address: HostPort(host: "a", port: 1), weight: 1, failureDomain: "d", state: .active),
            RingMember(id: ChunkserverID(2), address: HostPort(host: "b", port: 2), weight: 1, failureDomain: "", state: .active),
        ]), previous: [])).encoded()
        // [13, epoch 3, count 2, id 1, host "a", port 1, weight 1, domain "d", state 1, id 2, …]
        #expect(Array(good.prefix(14)) == [13, 3, 2, 1, 1, 0x61, 1, 1, 1, 0x64, 1, 2, 1, 0x62])
        var badState = good
        badState[10] = 4
        var unsorted = good
        unsorted[11] = 1
        var badUTF8 = good
        badUTF8[9] = 0xff
        var heavy = good
        heavy.replaceSubrange(7...7, with: [0xff, 0xff, 0x03])  // weight 65535: over Ring.pointsMax
        var emptyHost = good
        emptyHost.replaceSubrange(4...5, with: [0])
        for bad in [badState, unsorted, badUTF8, heavy, emptyHost, Array(good.dropLast()), good + [0]] {
            #expect(throws: FileSystemError.EBADMSG) { try MetaReply(decoding: bad) }
        }
        #expect(throws: FileSystemError.EBADMSG) {
            try MetaCommand(decoding: Array(MetaCommand(now: Self.now, operation: .setChunkserverState(ChunkserverID(1), .active)).encoded().dropLast()) + [9])
        }
    }

    @Test func malformedCommandsGetErrorRepliesNeverACrash() throws {
        let machine = randomState(seed: 31, ops: 300)
        var rng = SplitMix(seed: 7)
        var index: UInt64 = 1
        for trial in 0..<20_000 {
            var bytes: [UInt8]
            if trial % 2 == 0 {
                bytes = testBytes(count: Int(rng.next() % 64), seed: rng.next())
            } else {
                let operation = Self.sampleOperations[Int(rng.next() % UInt64(Self.sampleOperations.count))]
                bytes = MetaCommand(session: 1, sequence: 0, credentials: Self.alice, now: Self.now, operation: operation).encoded()
                for _ in 0..<(1 + rng.next() % 3) where !bytes.isEmpty {
                    bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(1 << (rng.next() % 8))
                }
                if rng.next() % 4 == 0 { bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count + 1)))) }
            }
            let reply = machine.apply(bytes, at: index)
            index += 1
            // Every reply decodes; a command that does not decode gets EBADMSG.
            let decodedReply = try MetaReply(decoding: reply)
            if (try? MetaCommand(decoding: bytes)) == nil { #expect(decodedReply == .failure(.EBADMSG)) }
        }
        // The state is still consistent: it snapshots and restores.
        try MetaStateMachine().restore(machine.snapshot())
    }

    @Test func retriedMutationsApplyOnce() throws {
        let machine = MetaStateMachine()
        guard case .session(let s) = machine.apply(MetaCommand(now: Self.now, operation: .openSession(ttlNanoseconds: 1 << 40))) else {
            Issue.record("no session")
            return
        }
        let mkdir = MetaCommand(session: s, sequence: 1, now: Self.now, operation: .mkdir(parent: 1, name: Array("d".utf8), mode: 0o755))
        let first = machine.apply(mkdir.encoded(), at: 2)
        let before = machine.namespace
        let retry = machine.apply(mkdir.encoded(), at: 3)
        #expect(retry == first)
        #expect(machine.namespace == before, "a retry must change nothing")
        guard case .attributes(let a) = try MetaReply(decoding: first) else {
            Issue.record("mkdir failed")
            return
        }
        #expect(a.inode == 2)
        // A new sequence number is a new request: now the name exists.
        let again = MetaCommand(session: s, sequence: 2, now: Self.now, operation: .mkdir(parent: 1, name: Array("d".utf8), mode: 0o755))
        #expect(try MetaReply(decoding: machine.apply(again.encoded(), at: 4)) == .failure(.EEXIST))
        // Beyond the remembered window a very old sequence is refused, not re-applied.
        for seq in 3...UInt64(3 + machine.namespace.limits.dedupRepliesPerSessionMax) {
            _ = machine.apply(MetaCommand(session: s, sequence: seq, now: Self.now, operation: .heartbeat))
        }
        #expect(machine.apply(mkdir) == .failure(.ESTALE))
        // Reads are never remembered; an unknown session is stale.
        #expect(machine.apply(MetaCommand(session: 999, sequence: 1, now: Self.now, operation: .mkdir(parent: 1, name: [0x78], mode: 0))) == .failure(.ESTALE))
    }

    /// A mutation held up (retried through an election) while later ones of its session are
    /// applied: overtaken by fewer than the client's window (`MetaSession.mutationsInflightMax`,
    /// half the remembered replies), it still applies, once; overtaken by more than the state
    /// machine remembers, it is refused though it never applied — what the client's window
    /// prevents.
    @Test(arguments: [(63, true), (200, false)]) func aMutationOvertakenByLaterOnesOfItsSession(overtaking: Int, applies: Bool) throws {
        let machine = MetaStateMachine()
        guard case .session(let s) = machine.apply(MetaCommand(now: Self.now, operation: .openSession(ttlNanoseconds: 1 << 40))) else {
            Issue.record("no session")
            return
        }
        for seq in 2...UInt64(1 + overtaking) {
            _ = machine.apply(MetaCommand(session: s, sequence: seq, now: Self.now,
                                          operation: .mkdir(parent: 1, name: Array("later\(seq)".utf8), mode: 0o755)))
        }
        let stalled = MetaCommand(session: s, sequence: 1, now: Self.now, operation: .mkdir(parent: 1, name: Array("stalled".utf8), mode: 0o755))
        let reply = machine.apply(stalled)
        if applies {
            guard case .attributes = reply else {
                Issue.record("the overtaken mkdir did not apply: \(reply)")
                return
            }
            #expect(machine.apply(stalled) == reply, "its retry gets the same reply")
        } else {
            #expect(reply == .failure(.ESTALE))
        }
    }
}
