import CairnCore
import CairnTestSupport
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
    return machine
}

struct SnapshotTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func snapshotRoundTripsRandomStates(seed: UInt64) throws {
        let machine = randomState(seed: seed, ops: 1500)
        #expect(!machine.namespace.orphans.isEmpty)
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
    ]

    @Test func commandsRoundTrip() throws {
        for (i, operation) in Self.sampleOperations.enumerated() {
            let command = MetaCommand(session: UInt64(i), sequence: UInt64(i * 7), credentials: Self.alice, now: Self.now, operation: operation)
            #expect(try MetaCommand(decoding: command.encoded()) == command)
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
}
