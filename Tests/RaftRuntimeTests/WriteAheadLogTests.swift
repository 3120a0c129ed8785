import CairnCore
import CairnTestSupport
import RaftCore
import SystemPackage
import Testing
@testable import RaftRuntime

func entries(_ range: ClosedRange<UInt64>, term: UInt64, size: Int = 40) -> [Entry] {
    range.map { Entry(term: term, index: $0, data: testBytes(count: size, seed: $0 &* 31 &+ term)) }
}

func segmentPaths(_ dir: FilePath) -> [FilePath] {
    ((try? FileSystemCalls.directoryEntries(dir)) ?? []).filter { $0.hasSuffix(".wal") }.map { dir.appending($0) }
}

func fileSize(_ path: FilePath) -> Int { Int((try? FileSystemCalls.status(path))??.size ?? 0) }

func truncateFile(_ path: FilePath, to length: Int) throws {
    let fd = try FileDescriptor.open(path, .readWrite)
    defer { try? fd.close() }
    try fd.resize(to: Int64(length))
}

func appendBytes(_ path: FilePath, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor.open(path, .writeOnly, options: [.append])
    defer { try? fd.close() }
    _ = try fd.writeAll(bytes)
}

/// Where the batches of a segment end, give or take zero bytes at the end of the last one: the zeros
/// written ahead of them follow.
func batchesEnd(_ path: FilePath) throws -> Int {
    let bytes = try FileSystemCalls.readFile(path, bytesMax: 1 << 30)
    return (bytes.lastIndex { $0 != 0 } ?? -1) + 1
}

func writeBytes(_ path: FilePath, at offset: Int, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor.open(path, .writeOnly)
    defer { try? fd.close() }
    _ = try fd.writeAll(toAbsoluteOffset: Int64(offset), bytes)
}

func zeroBytes(in path: FilePath, _ range: Range<Int>) throws {
    try writeBytes(path, at: range.lowerBound, [UInt8](repeating: 0, count: range.count))
}

/// Runs `body` on a log of entries 1...200 (term 1, 40 batches) in 4 KiB segments: its directory, limits and
/// segments in order.
func withSmallSegmentLog(_ body: (FilePath, WALLimits, [FilePath]) throws -> Void) throws {
    let dir = TestDirectory("wal")
    var limits = WALLimits()
    limits.segmentBytesMax = 4096
    do {
        let (wal, _) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
        for i in 0..<40 { try wal.append([.entries(entries((UInt64(i) * 5 + 1)...(UInt64(i) * 5 + 5), term: 1))]) }
    }
    let segments = segmentPaths(dir.path).sorted { $0.string < $1.string }
    #expect(segments.count >= 3)
    try body(dir.path, limits, segments)
}

/// Opening the log in `dir` must fail with `.corrupt`.
func expectRefusedAsCorrupt(_ dir: FilePath, limits: WALLimits, _ otherwise: String) {
    do {
        _ = try WriteAheadLog.open(directory: dir, limits: limits, logger: quietLogger())
        Issue.record(Comment(rawValue: otherwise))
    } catch {
        #expect(error.code == .corrupt)
    }
}

@Suite struct WriteAheadLogTests {
    @Test func segmentsGrowByZerosAheadOfTheBatchesAndTheZerosAreACleanEnd() throws {
        let dir = TestDirectory("wal")
        var end = 0
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            try wal.append([.entries(entries(1...5, term: 1))])
            // The first batch extended the file by zeroFillBytes; the next ones overwrite zeros.
            #expect(fileSize(segmentPaths(dir.path)[0]) == WALLimits().zeroFillBytes)
            try wal.append([.entries(entries(6...9, term: 1)), .hardState(HardState(term: 1, vote: 1, commit: 9))])
            #expect(fileSize(segmentPaths(dir.path)[0]) == WALLimits().zeroFillBytes)
            end = wal.currentBytes
        }
        let segment = segmentPaths(dir.path)[0]
        do {
            let (wal, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            #expect(recovered.entries == entries(1...9, term: 1))
            #expect(recovered.tornTailBytes == 0)
            #expect(fileSize(segment) == WALLimits().zeroFillBytes, "a clean end is not truncated")
            #expect(wal.currentBytes == end)
            try wal.append([.entries(entries(10...10, term: 2))])
        }
        let (_, again) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
        #expect(again.entries == entries(1...9, term: 1) + entries(10...10, term: 2))
        // Without zero fill (and through the page cache) the file is exactly its batches.
        let plain = TestDirectory("wal")
        var limits = WALLimits()
        limits.zeroFillBytes = 0
        limits.directWrites = false
        let (wal, _) = try WriteAheadLog.open(directory: plain.path, limits: limits, logger: quietLogger())
        try wal.append([.entries(entries(1...5, term: 1))])
        #expect(fileSize(segmentPaths(plain.path)[0]) == wal.currentBytes)
    }

    /// The same appends, with O_DIRECT and through the page cache, with reopens between them: the same bytes up
    /// to the end of the batches, zeros after, and the same log on recovery. Batches of every size around the
    /// 4 KiB block, segments rotating.
    @Test func directAndBufferedWritesLeaveTheSameLog() throws {
        var rng = SplitMix(seed: 7)
        var plan: [(batch: [Entry], reopenAfter: Bool)] = []
        var next: UInt64 = 1
        for _ in 0..<60 {
            let count = UInt64.random(in: 1...4, using: &rng)
            let size = [0, 10, 500, 1000, 4000, 4096, 9000][Int.random(in: 0...6, using: &rng)]
            plan.append((entries(next...(next + count - 1), term: 1, size: size), Bool.random(using: &rng)))
            next += count
        }
        var results: [(bytes: [[UInt8]], ends: [Int], recovered: RecoveredLog, direct: Bool)] = []
        for direct in [true, false] {
            let dir = TestDirectory("wal")
            var limits = WALLimits()
            limits.directWrites = direct
            limits.segmentBytesMax = 64 << 10
            limits.zeroFillBytes = 16 << 10
            var (wal, _) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
            var writesDirectly = wal.writesDirectly
            for step in plan {
                try wal.append([.entries(step.batch)])
                if step.reopenAfter { (wal, _) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger()) }
                writesDirectly = writesDirectly && wal.writesDirectly
            }
            let lastEnd = wal.currentBytes
            let (_, recovered) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
            let segments = segmentPaths(dir.path).sorted { $0.string < $1.string }
            let bytes = try segments.map { try FileSystemCalls.readFile($0, bytesMax: 1 << 20) }
            var ends = try segments.dropLast().map { try batchesEnd($0) }
            ends.append(lastEnd)
            results.append((bytes, ends, recovered, writesDirectly))
        }
        let (direct, buffered) = (results[0], results[1])
        // This machine's file system takes O_DIRECT (ext4, xfs): the direct path really ran.
        #expect(direct.direct && !buffered.direct)
        #expect(direct.recovered.entries == plan.flatMap(\.batch))
        #expect(direct.recovered == buffered.recovered)
        #expect(direct.bytes.count == buffered.bytes.count)
        for (i, (d, b)) in zip(direct.bytes, buffered.bytes).enumerated() {
            let end = buffered.ends[i]
            #expect(Array(d.prefix(end)) == Array(b.prefix(end)), "segment \(i)")
            #expect(d.dropFirst(end).allSatisfy { $0 == 0 } && b.dropFirst(end).allSatisfy { $0 == 0 }, "segment \(i)")
        }
    }

    @Test func aBatchZeroedAtTheEndOfAnEarlierSegmentIsAGapNotACleanEnd() throws {
        try withSmallSegmentLog { dir, limits, segments in
            // Zeros after the batches of every segment: opens cleanly.
            let (_, recovered) = try WriteAheadLog.open(directory: dir, limits: limits, logger: quietLogger())
            #expect(recovered.entries == entries(1...200, term: 1))
            // The last batch of segment 1 lost (zeros where it was): the zeros look like a clean end, but the
            // next segment starts one batch late.
            let bytes = try FileSystemCalls.readFile(segments[1], bytesMax: 1 << 20)
            let magic = withUnsafeBytes(of: WriteAheadLog.magic.littleEndian, Array.init)
            let lastBatch = try #require((0..<(bytes.count - 4)).last { Array(bytes[$0..<($0 + 4)]) == magic })
            try zeroBytes(in: segments[1], lastBatch..<(try batchesEnd(segments[1])))
            expectRefusedAsCorrupt(dir, limits: limits, "opened a WAL that lost a batch in a middle segment")
        }
    }

    @Test func aTornBatchFollowedByZerosIsATornTail() throws {
        let dir = TestDirectory("wal")
        var start = 0
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            try wal.append([.entries(entries(1...5, term: 1))])
            start = wal.currentBytes
            try wal.append([.entries(entries(6...9, term: 1))])
        }
        let segment = segmentPaths(dir.path)[0]
        // The second batch's write reached the disk only in part: its end reads as zeros.
        try zeroBytes(in: segment, (start + 30)..<(start + 100))
        let (wal, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
        #expect(recovered.entries == entries(1...5, term: 1))
        #expect(recovered.tornTailBytes > 0)
        #expect(fileSize(segment) == start)
        #expect(wal.currentBytes == start)
    }

    @Test func appendsSurviveReopenWithOverwriteSemantics() throws {
        let dir = TestDirectory("wal")
        do {
            let (wal, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            #expect(recovered == RecoveredLog())
            try wal.append([.entries(entries(1...10, term: 1)), .hardState(HardState(term: 1, vote: 2, commit: 3))])
            // A new leader overwrites 6... with its own entries.
            try wal.append([.entries(entries(6...8, term: 2)), .hardState(HardState(term: 2, vote: 3, commit: 5))])
        }
        let (_, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
        #expect(recovered.hardState == HardState(term: 2, vote: 3, commit: 5))
        #expect(recovered.entries == entries(1...5, term: 1) + entries(6...8, term: 2))
        #expect(recovered.tornTailBytes == 0)
    }

    @Test func aTornTailIsTruncatedAndEverythingBeforeItKept() throws {
        for cut in [1, 5, 19, 20, 21, 60] {
            let dir = TestDirectory("wal")
            var lastBatchStart = 0
            do {
                let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
                try wal.append([.entries(entries(1...5, term: 1))])
                lastBatchStart = wal.currentBytes
                try wal.append([.entries(entries(6...9, term: 1)), .hardState(HardState(term: 1, vote: 1, commit: 9))])
            }
            let segment = segmentPaths(dir.path)[0]
            try truncateFile(segment, to: lastBatchStart + cut)
            let (wal, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            #expect(recovered.entries == entries(1...5, term: 1), "cut \(cut)")
            #expect(recovered.hardState == HardState())
            #expect(recovered.tornTailBytes == cut)
            #expect(fileSize(segment) == lastBatchStart)
            // Appending goes on from the truncation point.
            try wal.append([.entries(entries(6...6, term: 2))])
            let (_, again) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            #expect(again.entries == entries(1...5, term: 1) + entries(6...6, term: 2))
        }
    }

    @Test func garbageAfterTheLastBatchIsATornTail() throws {
        let dir = TestDirectory("wal")
        var end = 0
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            try wal.append([.entries(entries(1...3, term: 1))])
            end = wal.currentBytes
        }
        let segment = segmentPaths(dir.path)[0]
        try writeBytes(segment, at: end, [UInt8](repeating: 0, count: 4096) + testBytes(count: 100, seed: 1))
        let size = fileSize(segment)
        let (_, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
        #expect(recovered.entries == entries(1...3, term: 1))
        #expect(recovered.tornTailBytes == size - end)
        #expect(fileSize(segment) == end)
    }

    @Test func damageBeforeAValidBatchIsCorruptionNotATornTail() throws {
        let dir = TestDirectory("wal")
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            for i in 0..<3 { try wal.append([.entries(entries((UInt64(i) * 5 + 1)...(UInt64(i) * 5 + 5), term: 1))]) }
        }
        let segment = segmentPaths(dir.path)[0]
        try flipByte(in: segment, at: 40)  // inside the first batch's payload
        #expect(throws: CairnError.self) { try WriteAheadLog.open(directory: dir.path, logger: quietLogger()) }
        do {
            _ = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
        } catch {
            #expect(error.code == .corrupt)
            #expect(error.message.contains("not a torn tail"))
        }
        // Nothing was truncated by the failed attempts.
        #expect(fileSize(segment) > 0)
        #expect(try FileSystemCalls.directoryEntries(dir.path).count == 1)
    }

    @Test func damageInAnEarlierSegmentIsCorruption() throws {
        try withSmallSegmentLog { dir, limits, segments in
            // Cutting the end off a segment that is not the last is not a torn tail.
            try truncateFile(segments[1], to: batchesEnd(segments[1]) - 7)
            expectRefusedAsCorrupt(dir, limits: limits, "opened a WAL with a damaged middle segment")
        }
    }

    @Test func segmentsRotateAndReplayInOrder() throws {
        let dir = TestDirectory("wal")
        var limits = WALLimits()
        limits.segmentBytesMax = 4096
        var expected: [Entry] = []
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
            for i in 0..<60 {
                let batch = entries((UInt64(i) * 4 + 1)...(UInt64(i) * 4 + 4), term: 1, size: 100)
                try wal.append([.entries(batch), .hardState(HardState(term: 1, vote: 1, commit: UInt64(i * 4)))])
                expected += batch
            }
            #expect(wal.segmentFiles.count >= 6)
        }
        let (_, recovered) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
        #expect(recovered.entries == expected)
        #expect(recovered.hardState.commit == 236)
        // A missing segment in the middle is refused.
        let segments = segmentPaths(dir.path).sorted { $0.string < $1.string }
        try FileSystemCalls.unlink(segments[4])
        #expect(throws: CairnError.self) { try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger()) }
    }

    @Test func rewriteReplacesAllSegments() throws {
        let dir = TestDirectory("wal")
        var limits = WALLimits()
        limits.segmentBytesMax = 4096
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
            for i in 0..<30 { try wal.append([.entries(entries((UInt64(i) * 4 + 1)...(UInt64(i) * 4 + 4), term: 1, size: 100))]) }
            let meta = SnapshotMetadata(index: 100, term: 1, confState: ConfState(voters: [1, 2, 3]))
            try wal.rewrite([.compacted(meta), .entries(entries(101...120, term: 1, size: 100)), .hardState(HardState(term: 1, vote: 1, commit: 110))])
            #expect(wal.segmentFiles.count == 1)
            try wal.append([.entries(entries(121...121, term: 2))])
        }
        let (_, recovered) = try WriteAheadLog.open(directory: dir.path, limits: limits, logger: quietLogger())
        #expect(recovered.snapshot.index == 100)
        #expect(recovered.entries == entries(101...120, term: 1, size: 100) + entries(121...121, term: 2))
        #expect(recovered.hardState.commit == 110)
    }

    @Test func randomTornTailsNeverLoseASyncedBatch() throws {
        var rng = SplitMix(seed: 42)
        for round in 0..<25 {
            let dir = TestDirectory("wal")
            var model = MemoryStorage()
            var boundaries: [(size: Int, model: [Entry], hard: HardState)] = []
            var hard = HardState()
            do {
                let (wal, _) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
                var term: UInt64 = 1
                for _ in 0..<Int.random(in: 2...12, using: &rng) {
                    let last = model.lastIndex
                    let start = last == 0 ? 1 : UInt64.random(in: (last > 3 ? last - 3 : 1)...(last + 1), using: &rng)
                    if start <= last { term += 1 }
                    let batch = entries(start...(start + UInt64.random(in: 0...5, using: &rng)), term: term, size: Int.random(in: 0...300, using: &rng))
                    hard = HardState(term: term, vote: 1, commit: min(hard.commit + 1, batch.last!.index))
                    try wal.append([.entries(batch), .hardState(hard)])
                    model.append(batch)
                    boundaries.append((wal.currentBytes, model.allEntries, hard))
                }
            }
            // Cut somewhere inside the last batch: everything up to the batch before it survives.
            let segment = segmentPaths(dir.path)[0]
            let lastEnd = boundaries.last!.size
            let previous = boundaries.count >= 2 ? boundaries[boundaries.count - 2] : (size: 0, model: [Entry](), hard: HardState())
            let cut = Int.random(in: previous.size..<lastEnd, using: &rng)
            try truncateFile(segment, to: cut)
            let (_, recovered) = try WriteAheadLog.open(directory: dir.path, logger: quietLogger())
            #expect(recovered.entries == previous.model, "round \(round) cut \(cut)")
            #expect(recovered.hardState == previous.hard, "round \(round)")
            model = MemoryStorage()
        }
    }
}

@Suite struct DurableLogStorageTests {
    @Test func persistSnapshotCompactAndRecover() throws {
        let dir = TestDirectory("log")
        let conf = ConfState(voters: [1, 2, 3])
        do {
            let log = try DurableLogStorage(directory: dir.path, entriesKeptBehindSnapshot: 5, logger: quietLogger())
            #expect(log.isEmpty)
            try log.persist(snapshot: nil, entries: entries(1...50, term: 1), hardState: HardState(term: 1, vote: 1, commit: 40))
            try log.createSnapshot(at: 40, confState: conf, data: Array("state@40".utf8))
            #expect(log.firstIndex == 36)
            try log.persist(snapshot: nil, entries: entries(51...55, term: 2), hardState: HardState(term: 2, vote: 2, commit: 52))
        }
        let log = try DurableLogStorage(directory: dir.path, logger: quietLogger())
        #expect(!log.isEmpty)
        #expect(try log.snapshot().metadata == SnapshotMetadata(index: 40, term: 1, confState: conf))
        #expect(try log.snapshot().data == Array("state@40".utf8))
        #expect(log.firstIndex == 41)
        #expect(log.lastIndex == 55)
        #expect(try log.entries(41..<56, bytesMax: .max) == entries(41...50, term: 1) + entries(51...55, term: 2))
        #expect(log.initialState().0 == HardState(term: 2, vote: 2, commit: 52))
        #expect(log.initialState().1 == conf)
    }

    @Test func installedSnapshotReplacesTheLog() throws {
        let dir = TestDirectory("log")
        let conf = ConfState(voters: [1, 2, 3])
        do {
            let log = try DurableLogStorage(directory: dir.path, logger: quietLogger())
            try log.persist(snapshot: nil, entries: entries(1...10, term: 1), hardState: HardState(term: 1, vote: 1, commit: 5))
            let snapshot = Snapshot(metadata: SnapshotMetadata(index: 100, term: 3, confState: conf), data: [9, 9, 9])
            try log.persist(snapshot: snapshot, entries: [], hardState: HardState(term: 3, vote: 0, commit: 100))
            try log.persist(snapshot: nil, entries: entries(101...102, term: 3), hardState: nil)
        }
        let log = try DurableLogStorage(directory: dir.path, logger: quietLogger())
        #expect(try log.snapshot().data == [9, 9, 9])
        #expect(log.firstIndex == 101 && log.lastIndex == 102)
        #expect(log.hardState.commit == 100)
    }

    @Test func aMissingOrDamagedSnapshotThatTheLogNeedsIsRefused() throws {
        let dir = TestDirectory("log")
        do {
            let log = try DurableLogStorage(directory: dir.path, entriesKeptBehindSnapshot: 0, logger: quietLogger())
            try log.persist(snapshot: nil, entries: entries(1...20, term: 1), hardState: HardState(term: 1, vote: 1, commit: 20))
            try log.createSnapshot(at: 20, confState: ConfState(voters: [1]), data: testBytes(count: 1000, seed: 5))
        }
        let snapDir = dir.path.appending("snap")
        let file = snapDir.appending(try FileSystemCalls.directoryEntries(snapDir)[0])
        try flipByte(in: file, at: 500)
        do {
            _ = try DurableLogStorage(directory: dir.path, logger: quietLogger())
            Issue.record("opened with a damaged snapshot")
        } catch {
            #expect(error.code == .corrupt)
        }
        try FileSystemCalls.unlink(file)
        do {
            _ = try DurableLogStorage(directory: dir.path, logger: quietLogger())
            Issue.record("opened with a missing snapshot")
        } catch {
            #expect(error.code == .notFound)
        }
    }
}
