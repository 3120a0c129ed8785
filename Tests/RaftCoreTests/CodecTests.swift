import RaftCore
import Testing

@Suite struct CodecTests {
    /// A random but reproducible message with every field populated.
    static func randomMessage(_ r: inout SplitMix64) -> Message {
        let kind = MessageKind.allCases[Int(r.next(below: UInt64(MessageKind.allCases.count)))]
        var entries: [Entry] = []
        for i in 0..<Int(r.next(below: 4)) {
            entries.append(Entry(term: r.next(), index: UInt64(i) + r.next(below: 1 << 40),
                                 kind: r.chance(1, in: 2) ? .normal : .confChange,
                                 data: (0..<Int(r.next(below: 40))).map { _ in UInt8(truncatingIfNeeded: r.next()) }))
        }
        return Message(
            kind: kind, from: r.next(), to: r.next(below: 10), term: r.next(), logTerm: r.next(below: 1000),
            index: r.next(), entries: entries, commit: r.next(), reject: r.chance(1, in: 2), rejectHint: r.next(),
            context: (0..<Int(r.next(below: 20))).map { _ in UInt8(truncatingIfNeeded: r.next()) },
            snapshot: r.chance(1, in: 2)
                ? SnapshotMetadata(index: r.next(), term: r.next(), confState: ConfState(voters: [1, 2, 3], learners: [9]))
                : nil,
            snapshotOffset: r.next(), snapshotBytes: r.next(), snapshotChunk: [1, 2, 3])
    }

    @Test func messagesRoundTrip() throws {
        var r = SplitMix64(seed: 7)
        for _ in 0..<500 {
            let m = Self.randomMessage(&r)
            #expect(try Message(decoding: m.encode()) == m)
        }
    }

    @Test func valuesRoundTrip() throws {
        let hs = HardState(term: .max, vote: 3, commit: 1 << 40)
        #expect(try HardState(decoding: hs.encode()) == hs)
        let e = Entry(term: 5, index: 9, kind: .confChange, data: ConfChange(kind: .addLearner, nodeID: 4).encode())
        #expect(try Entry(decoding: e.encode()) == e)
        let cc = ConfChange(kind: .removeNode, nodeID: 12, context: Array("ctx".utf8))
        #expect(try ConfChange(decoding: cc.encode()) == cc)
        let snap = Snapshot(metadata: SnapshotMetadata(index: 10, term: 3, confState: ConfState(voters: [1, 2], learners: [3])),
                            data: Array(repeating: 0xAB, count: 1000))
        #expect(try Snapshot(decoding: snap.encode()) == snap)
    }

    @Test func everyTruncationIsRejected() {
        var r = SplitMix64(seed: 11)
        for _ in 0..<50 {
            let bytes = Self.randomMessage(&r).encode()
            for cut in 0..<bytes.count {
                #expect(throws: RaftDecodingError.self) { try Message(decoding: Array(bytes[0..<cut])) }
            }
        }
    }

    @Test func trailingBytesAreRejected() {
        let bytes = HardState(term: 1, vote: 2, commit: 3).encode() + [0]
        #expect(throws: RaftDecodingError(.trailingBytes, "1 trailing bytes")) { try HardState(decoding: bytes) }
    }

    @Test func invalidValuesAreRejected() {
        // Unknown message kind.
        #expect(throws: RaftDecodingError.self) { try Message(decoding: [200] + Array(repeating: 0, count: 20)) }
        // Unknown entry kind.
        #expect(throws: RaftDecodingError.self) { try Entry(decoding: [1, 1, 7, 0]) }
        // A varint longer than 10 bytes / overflowing 64 bits.
        #expect(throws: RaftDecodingError.self) { try HardState(decoding: Array(repeating: 0xFF, count: 11) + [0, 0]) }
        #expect(throws: RaftDecodingError.self) { try HardState(decoding: Array(repeating: 0xFF, count: 9) + [0x02, 0, 0]) }
        // A length far beyond the input must fail before allocating.
        #expect(throws: RaftDecodingError.self) { try Entry(decoding: [1, 1, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) }
        // A bool that is neither 0 nor 1 (the `reject` field).
        var m = Message(kind: .append).encode()
        m[8] = 2  // kind, from, to, term, logTerm, index, entry count, commit, then reject
        #expect(throws: RaftDecodingError.self) { try Message(decoding: m) }
        // Duplicate members.
        #expect(throws: RaftDecodingError.self) { try ConfState(decoding: [2, 1, 1, 0]) }
    }

    @Test func randomGarbageNeverCrashes() {
        var r = SplitMix64(seed: 99)
        var decoded = 0
        for _ in 0..<20_000 {
            let bytes = (0..<Int(r.next(below: 64))).map { _ in UInt8(truncatingIfNeeded: r.next()) }
            if (try? Message(decoding: bytes)) != nil { decoded += 1 }
            _ = try? Snapshot(decoding: bytes)
            _ = try? ConfChange(decoding: bytes)
        }
        // Some garbage happens to be a valid message; most is not.
        #expect(decoded < 20_000)
    }
}

@Suite struct ConfigTests {
    @Test func defaultsAreValid() throws {
        try Config(id: 1).validate()
    }

    @Test func eachBoundIsChecked() {
        func refused(_ change: (inout Config) -> Void) -> ConfigError.Code? {
            var c = Config(id: 1)
            change(&c)
            do { try c.validate() } catch { return error.code }
            return nil
        }
        #expect(refused { $0.id = 0 } == .invalidNodeID)
        #expect(refused { $0.heartbeatTicks = 0 } == .invalidTicks)
        #expect(refused { $0.electionTicks = $0.heartbeatTicks } == .invalidTicks)
        #expect(refused { $0.messageBytesMax = 0 } == .invalidBound)
        #expect(refused { $0.inflightMessagesMax = 0 } == .invalidBound)
        #expect(refused { $0.inflightBytesMax = 0 } == .invalidBound)
        #expect(refused { $0.uncommittedEntriesBytesMax = -1 } == .invalidBound)
        #expect(refused { $0.snapshotChunkBytesMax = 0 } == .invalidBound)
        #expect(refused { $0.readIndexRequestsMax = 0 } == .invalidBound)
        #expect(refused { $0.inflightBytesMax = $0.messageBytesMax - 1 } == .invalidBound)
    }

    @Test func rawNodeRefusesAnInvalidConfig() {
        var c = Config(id: 1)
        c.electionTicks = 1
        #expect(throws: ConfigError.self) { try RawNode(config: c, storage: MemoryStorage()) }
    }

    @Test func plantedBugNamesRoundTrip() {
        for (name, bug) in PlantedBugs.named { #expect(PlantedBugs(name: name) == bug) }
        #expect(PlantedBugs(name: "nope") == nil)
    }
}
