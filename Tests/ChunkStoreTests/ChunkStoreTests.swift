import CairnCore
import CairnTestSupport
import CCairnLinux
import Glibc
import SystemPackage
import Testing
@testable import ChunkStore

@Suite struct ChunkStoreTests {
    func open(_ dir: borrowing TestDirectory, reserve: Int64 = 0, limits: ChunkLimits = ChunkLimits()) throws(CairnError) -> ChunkStore {
        try ChunkStore(configuration: .init(directory: dir.path, limits: limits, reserveBytes: reserve), logger: quietLogger())
    }

    @Test func putThenGetRoundTripsAndNamesTheFileByItsHash() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 3_000_001, seed: 1)
        let id = SHA256.hash(bytes)
        #expect(try store.put(id: id, bytes: bytes) == .stored)
        #expect(try store.get(id) == bytes)
        #expect(store.has(id))
        // The file under chunks/<2 hex>/<64 hex> holds exactly the bytes: sha256sum checks it.
        let path = dir.path.appending("chunks").appending(String(id.hex.prefix(2))).appending(id.hex)
        let fd = try FileDescriptor.open(path, .readOnly)
        defer { try? fd.close() }
        var onDisk = [UInt8](repeating: 0, count: bytes.count + 10)
        let n = try onDisk.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: 0, into: $0) }
        #expect(n == bytes.count)
        #expect(SHA256.hash(onDisk[..<n]) == id)
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
        let stats = try store.stats()
        #expect(stats.chunkCount == 1)
        #expect(stats.usedBytes == Int64(bytes.count))
    }

    @Test func emptyChunkIsAChunk() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let id = SHA256.hash([UInt8]())
        #expect(try store.put(id: id, bytes: []) == .stored)
        #expect(try store.get(id) == [])
        #expect(try store.read(id, offset: 0, length: nil).bytes == [])
    }

    @Test func putWithWrongIDIsRejectedAndLeavesNothing() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 100_000, seed: 2)
        let claimed = SHA256.hash(testBytes(count: 100_000, seed: 3))
        #expect(throws: CairnError.self) { try store.put(id: claimed, bytes: bytes) }
        do {
            try store.put(id: claimed, bytes: bytes)
        } catch {
            #expect(error.code == .hashMismatch)
        }
        #expect(!store.has(claimed))
        #expect(!store.has(SHA256.hash(bytes)))
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
        #expect(try store.list(after: nil, limit: 10).entries.isEmpty)
        #expect(try store.stats().rejectedPutTotal == 2)
        #expect(try store.stats().chunkCount == 0)
    }

    @Test func rePutIsIdempotentAndStillChecksTheBytes() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 70_000, seed: 4)
        let id = SHA256.hash(bytes)
        #expect(try store.put(id: id, bytes: bytes) == .stored)
        #expect(try store.put(id: id, bytes: bytes) == .alreadyPresent)
        #expect(try store.stats().chunkCount == 1)
        var wrong = bytes
        wrong[5] ^= 1
        #expect(throws: CairnError.self) { try store.put(id: id, bytes: wrong) }
        #expect(try store.get(id) == bytes)
    }

    @Test func rangeReadsMatchSlicesAcrossBlockBoundaries() throws {
        let dir = TestDirectory()
        var limits = ChunkLimits()
        limits.checksumBlockBytes = 4096
        let store = try open(dir, limits: limits)
        let bytes = testBytes(count: 50_000, seed: 5)
        let id = SHA256.hash(bytes)
        try store.put(id: id, bytes: bytes)
        var rng = SplitMix(seed: 6)
        for _ in 0..<200 {
            let offset = Int(rng.next() % UInt64(bytes.count + 1))
            let length = Int(rng.next() % UInt64(bytes.count - offset + 1))
            let read = try store.read(id, offset: offset, length: length)
            #expect(read.bytes == Array(bytes[offset..<(offset + length)]), "offset \(offset) length \(length)")
            #expect(read.chunkLength == bytes.count)
        }
        #expect(try store.read(id, offset: 49_000, length: nil).bytes == Array(bytes[49_000...]))
        for (offset, length) in [(-1, 1), (50_001, nil), (49_999, 2), (0, 50_001)] as [(Int, Int?)] {
            do {
                _ = try store.read(id, offset: offset, length: length)
                Issue.record("range \(offset)+\(String(describing: length)) should fail")
            } catch {
                #expect(error.code == .invalidArgument)
            }
        }
    }

    /// Chunks written with O_DIRECT (through the aligned staging buffer, the last block padded
    /// and the file cut back to the chunk's length) and through the page cache are the same:
    /// fed in pieces of odd sizes, as a connection delivers them, each reads back whole and
    /// verifies, and the store lists its exact size.
    @Test(arguments: [1, 4095, 4096, 4097, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 12_345])
    func directAndBufferedPutsStoreTheSameChunk(size: Int) throws {
        let bytes = testBytes(count: size, seed: UInt64(size))
        let id = SHA256.hash(bytes)
        for direct in [true, false] {
            let dir = TestDirectory()
            let store = try ChunkStore(configuration: .init(directory: dir.path, reserveBytes: 0, directWrites: direct), logger: quietLogger())
            let session = try store.beginPut(id: id, length: size)
            var offset = 0
            var piece = 1
            while offset < size {
                let count = min(piece, size - offset)
                try bytes[offset..<(offset + count)].withUnsafeBytes { raw in try session.append(raw) }
                offset += count
                piece = piece * 3 + 7
            }
            #expect(try session.commit() == .stored)
            // Whether this file system takes O_DIRECT at all (tmpfs does not): then the store must use it.
            let probe = dir.path.appending("probe").withPlatformString { cairn_create_direct($0, 0o644) }
            if probe >= 0 { close(probe) }
            #expect(store.writesDirectly == (direct && probe >= 0))
            #expect(try store.get(id) == bytes)
            #expect(try store.verify(id) == size)
            #expect(try store.list(after: nil, limit: 10).entries.map(\.sizeBytes) == [Int64(size)])
            #expect(dir.entries("tmp").isEmpty)
        }
    }

    /// A range read keeps its chunk open, so later range reads of it are served without
    /// blocking (`readIfCached`) while its blocks are in the page cache — the same bytes as
    /// `read` — but never a range outside the chunk, a chunk evicted from the bounded table, a
    /// deleted one, or blocks that fail their checksums (those are left to `read`, which
    /// quarantines the chunk).
    @Test func recentlyReadChunksServeRangesWithoutBlocking() throws {
        let dir = TestDirectory()
        var limits = ChunkLimits()
        limits.checksumBlockBytes = 4096
        // Written through the page cache, so that a whole chunk is cached once put (O_DIRECT
        // writes leave nothing there; this test is about serving what is cached).
        let store = try ChunkStore(configuration: .init(directory: dir.path, limits: limits, reserveBytes: 0, openChunksMax: 2,
                                                        directWrites: false),
                                   logger: quietLogger())
        let chunks = (0..<3).map { testBytes(count: 300_000 + $0, seed: 50 + UInt64($0)) }
        let ids = chunks.map { SHA256.hash($0) }
        for (id, bytes) in zip(ids, chunks) { try store.put(id: id, bytes: bytes) }
        func cached(_ id: ChunkID, _ offset: Int, _ length: Int?) -> [UInt8]? {
            let read = store.readIfCached(id, offset: offset, length: length) { (count, fill) throws(CairnError) -> [UInt8] in
                var buffer = [UInt8](repeating: 0, count: count)
                try typedCairnErrors { try buffer.withUnsafeMutableBytes { raw in try fill(raw) } }
                return buffer
            }
            return read.map { Array($0.output[$0.range]) }
        }
        #expect(cached(ids[0], 0, 100) == nil, "not read by range yet: not open")
        #expect(try store.read(ids[0], offset: 70_000, length: 5_000).bytes == Array(chunks[0][70_000..<75_000]))
        #expect(cached(ids[0], 70_000, 5_000) == Array(chunks[0][70_000..<75_000]))
        #expect(cached(ids[0], 123_457, nil) == Array(chunks[0][123_457...]))
        #expect(cached(ids[0], 299_999, 10) == nil, "a range past the end")
        // The table holds two: reading two more evicts the least recently used.
        _ = try store.read(ids[1], offset: 0, length: 10)
        _ = try store.read(ids[2], offset: 0, length: 10)
        #expect(cached(ids[0], 0, 100) == nil)
        #expect(cached(ids[2], 10, 20_000) == Array(chunks[2][10..<20_010]))
        #expect(try store.delete(ids[2]))
        #expect(cached(ids[2], 10, 20_000) == nil, "a deleted chunk")
        // A flipped byte, seen through the open descriptor: declined, then found by read.
        try flipByte(in: dir.path.appending("chunks").appending(String(ids[1].hex.prefix(2))).appending(ids[1].hex), at: 5_000)
        #expect(cached(ids[1], 4_000, 2_000) == nil)
        #expect(cached(ids[1], 8_192, 100) == Array(chunks[1][8_192..<8_292]), "a range missing the damaged block")
        #expect(throws: CairnError.self) { try store.read(ids[1], offset: 4_000, length: 2_000) }
        #expect(!store.has(ids[1]))
        #expect(cached(ids[1], 8_192, 100) == nil, "a quarantined chunk")
    }

    @Test func flippedByteIsNeverServedAndTheChunkIsQuarantined() throws {
        for wholeRead in [true, false] {
            let dir = TestDirectory()
            var limits = ChunkLimits()
            limits.checksumBlockBytes = 4096
            let store = try open(dir, limits: limits)
            let bytes = testBytes(count: 40_000, seed: 7)
            let id = SHA256.hash(bytes)
            try store.put(id: id, bytes: bytes)
            try flipByte(in: dir.path.appending("chunks").appending(String(id.hex.prefix(2))).appending(id.hex), at: 10_000)
            // A range that misses the damaged block is still served, and is correct.
            #expect(try store.read(id, offset: 0, length: 4096).bytes == Array(bytes[0..<4096]))
            do {
                if wholeRead {
                    _ = try store.get(id)
                } else {
                    _ = try store.read(id, offset: 9_000, length: 2_000)
                }
                Issue.record("corrupt chunk was served")
            } catch {
                #expect(error.code == .corrupt)
            }
            #expect(!store.has(id))
            #expect(try store.quarantinedFiles().count == 1)
            #expect(try store.quarantinedFiles().first?.hasPrefix(id.hex) == true)
            let stats = try store.stats()
            #expect(stats.quarantinedTotal == 1)
            #expect(stats.chunkCount == 0)
            #expect(stats.corruptReadTotal == 1)
            do {
                _ = try store.get(id)
                Issue.record("quarantined chunk was served")
            } catch {
                #expect(error.code == .notFound)
            }
            // A good copy can be put back.
            #expect(try store.put(id: id, bytes: bytes) == .stored)
            #expect(try store.get(id) == bytes)
        }
    }

    @Test func damagedChecksumFileFallsBackToAWholeVerifyAndIsRewritten() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 200_000, seed: 8)
        let id = SHA256.hash(bytes)
        try store.put(id: id, bytes: bytes)
        let sums = dir.path.appending("sums").appending(String(id.hex.prefix(2))).appending(id.hex)
        try flipByte(in: sums, at: 30)
        #expect(try store.read(id, offset: 100, length: 1000).bytes == Array(bytes[100..<1100]))
        // Rewritten: the file decodes again.
        #expect(try store.verify(id) == bytes.count)
        #expect(try store.read(id, offset: 150_000, length: 10).bytes == Array(bytes[150_000..<150_010]))
        #expect(try store.stats().quarantinedTotal == 0)
    }

    /// A whole read through `read(_:offset:length:into:)` into an array of the size it asks for.
    func readIntoArray(_ store: ChunkStore, _ id: ChunkID) throws(CairnError) -> (bytes: [UInt8], chunkLength: Int) {
        let read = try store.read(id, offset: 0, length: nil, into: Self.makeArray)
        return (Array(read.output[read.range]), read.chunkLength)
    }

    static func makeArray(_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0xAA, count: count)
        var failure: CairnError? = nil
        buffer.withUnsafeMutableBytes { raw in
            do throws(CairnError) { try fill(raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return buffer
    }

    /// The server's whole-chunk reads go through `read(_:offset:length:into:)`: block CRC-32Cs,
    /// or SHA-256 when the checksum file is gone. Either way a flipped byte is never returned.
    @Test func wholeReadIntoACallerBufferChecksBlocksOrFallsBackToSHA256() throws {
        for sumsLost in [false, true] {
            let dir = TestDirectory()
            let store = try open(dir)
            let bytes = testBytes(count: 300_000, seed: 11)
            let id = SHA256.hash(bytes)
            try store.put(id: id, bytes: bytes)
            func wholeRead() throws(CairnError) -> [UInt8] {
                let read = try readIntoArray(store, id)
                #expect(read.chunkLength == bytes.count)
                return read.bytes
            }
            let sums = dir.path.appending("sums").appending(String(id.hex.prefix(2))).appending(id.hex)
            if sumsLost { try FileSystemCalls.unlink(sums) }
            #expect(try wholeRead() == bytes)
            // A lost checksum file was rebuilt by that read.
            #expect(try FileSystemCalls.status(sums) != nil)
            if sumsLost { try FileSystemCalls.unlink(sums) }
            try flipByte(in: dir.path.appending("chunks").appending(String(id.hex.prefix(2))).appending(id.hex), at: 250_001)
            do {
                _ = try wholeRead()
                Issue.record("corrupt chunk was served")
            } catch {
                #expect(error.code == .corrupt)
            }
            #expect(!store.has(id))
            #expect(try store.stats().quarantinedTotal == 1)
        }
    }

    /// The hashing and writing halves of a put, run on two threads at once (as the server's
    /// lanes do), store the same chunk as `append`, and still refuse bytes that do not hash to the ID.
    @Test func hashAndWriteHalvesOnTwoThreadsEqualAppend() async throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 1_000_003, seed: 12)
        let id = SHA256.hash(bytes)
        for claimed in [SHA256.hash(testBytes(count: 10, seed: 13)), id] {
            let session = try store.beginPut(id: claimed, length: bytes.count)
            let parts = stride(from: 0, to: bytes.count, by: 65_537).map { Array(bytes[$0..<min($0 + 65_537, bytes.count)]) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { for part in parts { try part.withUnsafeBytes { try session.hash($0) } } }
                group.addTask {
                    for part in parts {
                        try part.withUnsafeBytes { try session.write($0) }
                        try session.syncWritten()
                    }
                }
                try await group.waitForAll()
            }
            if claimed == id {
                #expect(try session.commit() == .stored)
            } else {
                do {
                    try session.commit()
                    Issue.record("a put whose bytes do not hash to its ID was kept")
                } catch {
                    #expect(error.code == .hashMismatch)
                }
                #expect(!store.has(claimed))
            }
        }
        #expect(try store.get(id) == bytes)
        #expect(try store.read(id, offset: 70_000, length: 5).bytes == Array(bytes[70_000..<70_005]))
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
    }

    @Test func openingRemovesLeftoverTempFilesAndCountsChunks() throws {
        let dir = TestDirectory()
        let bytes = testBytes(count: 10_000, seed: 9)
        let id = SHA256.hash(bytes)
        do {
            let store = try open(dir)
            try store.put(id: id, bytes: bytes)
            // A put cut off by a crash: its temp file is all that remains.
            let session = try store.beginPut(id: SHA256.hash(testBytes(count: 5000, seed: 10)), length: 5000)
            try testBytes(count: 2500, seed: 10).withUnsafeBytes { try session.append($0) }
            let leftover = dir.path.appending("tmp").appending("crashed.put")
            let fd = try FileDescriptor.open(leftover, .writeOnly, options: [.create], permissions: .ownerReadWrite)
            try fd.close()
            #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).count == 2)
            session.abort()
        }
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).count == 1)
        let reopened = try open(dir)
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
        #expect(try reopened.stats().chunkCount == 1)
        #expect(try reopened.stats().usedBytes == 10_000)
        #expect(try reopened.get(id) == bytes)
    }

    @Test func droppedSessionLeavesNoTempFile() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        do {
            let session = try store.beginPut(id: SHA256.hash([1, 2, 3]), length: 3)
            try [UInt8(1)].withUnsafeBytes { try session.append($0) }
        }
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
        // Too few or too many bytes are refused.
        let short = try store.beginPut(id: SHA256.hash([1, 2, 3]), length: 3)
        try [UInt8(1)].withUnsafeBytes { try short.append($0) }
        #expect(throws: CairnError.self) { try short.commit() }
        let long = try store.beginPut(id: SHA256.hash([1, 2, 3]), length: 3)
        #expect(throws: CairnError.self) { try [UInt8](repeating: 1, count: 4).withUnsafeBytes { try long.append($0) } }
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
    }

    @Test func listPagesThroughEverythingInIDOrder() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        var ids: [ChunkID] = []
        for seed in 0..<25 {
            let bytes = testBytes(count: 100 + seed, seed: UInt64(100 + seed))
            let id = SHA256.hash(bytes)
            try store.put(id: id, bytes: bytes)
            ids.append(id)
        }
        var listed: [ChunkInfo] = []
        var after: ChunkID? = nil
        var pages = 0
        while true {
            let page = try store.list(after: after, limit: 7)
            listed += page.entries
            pages += 1
            #expect(page.entries.count <= 7)
            guard page.more else { break }
            after = page.entries.last!.id
        }
        #expect(pages == 4)
        #expect(listed.map(\.id) == ids.sorted())
        #expect(listed.allSatisfy { $0.storedAtNanoseconds > 1_700_000_000_000_000_000 })
        let sizes = Dictionary(uniqueKeysWithValues: listed.map { ($0.id, $0.sizeBytes) })
        for (seed, id) in ids.enumerated() { #expect(sizes[id] == Int64(100 + seed)) }
    }

    @Test func deleteRemovesAndReportsWhetherItExisted() throws {
        let dir = TestDirectory()
        let store = try open(dir)
        let bytes = testBytes(count: 1000, seed: 11)
        let id = SHA256.hash(bytes)
        try store.put(id: id, bytes: bytes)
        #expect(try store.delete(id))
        #expect(try !store.delete(id))
        #expect(!store.has(id))
        #expect(try store.stats().chunkCount == 0)
        #expect(try store.stats().usedBytes == 0)
    }

    @Test func putIsRefusedWhenItWouldEatIntoTheReserve() throws {
        let dir = TestDirectory()
        let available = try FileSystemCalls.volumeStatus(dir.path).availableBytes
        let store = try open(dir, reserve: available - 1000)
        let bytes = testBytes(count: 100_000, seed: 12)
        do {
            try store.put(id: SHA256.hash(bytes), bytes: bytes)
            Issue.record("put should be refused")
        } catch {
            #expect(error.code == .insufficientSpace)
            #expect(error.message.contains("reserve"))
        }
        #expect(try FileSystemCalls.directoryEntries(dir.path.appending("tmp")).isEmpty)
    }

    @Test func oversizedChunkIsRefused() throws {
        let dir = TestDirectory()
        var limits = ChunkLimits()
        limits.chunkBytesMax = 64 << 10
        let store = try open(dir, limits: limits)
        let bytes = testBytes(count: (64 << 10) + 1, seed: 13)
        do {
            try store.put(id: SHA256.hash(bytes), bytes: bytes)
            Issue.record("oversized put accepted")
        } catch {
            #expect(error.code == .tooLarge)
        }
    }

    @Test func refusesADirectoryThatIsNotAStore() throws {
        let dir = TestDirectory()
        let stray = try FileDescriptor.open(dir.path.appending("precious.txt"), .writeOnly, options: [.create], permissions: .ownerReadWrite)
        try stray.close()
        do {
            _ = try open(dir)
            Issue.record("opened a foreign directory")
        } catch {
            #expect(error.code == .invalidArgument)
        }
    }
}

@Suite struct BlockChecksumsTests {
    @Test func encodeDecodeRoundTrip() throws {
        let bytes = testBytes(count: 10_000, seed: 20)
        let sums = bytes.withUnsafeBytes { BlockChecksums(of: $0, blockBytes: 4096) }
        #expect(sums.checksums.count == 3)
        #expect(BlockChecksums(decoding: sums.encoded(), blockBytesMax: 1 << 22, chunkBytesMax: 1 << 22) == sums)
    }

    @Test func streamingEqualsOneShotAndEachBlocksOwnChecksum() {
        let bytes = testBytes(count: 40_000, seed: 21)
        // Each block checksummed on its own, the plain way.
        let expected = stride(from: 0, to: bytes.count, by: 4096).map { CRC32C.checksum(bytes[$0..<min($0 + 4096, bytes.count)]) }
        var builder = BlockChecksums.Builder(blockBytes: 4096)
        // Pieces within a block, across a boundary, and spanning several whole blocks (checksummed
        // three at a time) with a partial block on either side.
        for range in [0..<1, 1..<4095, 4095..<4097, 4097..<9000, 9000..<10_000, 10_000..<31_000, 31_000..<32_768, 32_768..<40_000] {
            bytes[range].withUnsafeBytes { builder.append($0) }
        }
        #expect(builder.finish().checksums == expected)
        #expect(bytes.withUnsafeBytes { BlockChecksums(of: $0, blockBytes: 4096) }.checksums == expected)
    }

    @Test func malformedFilesAreRejectedNotTrusted() {
        let good = testBytes(count: 9000, seed: 22).withUnsafeBytes { BlockChecksums(of: $0, blockBytes: 4096) }.encoded()
        #expect(BlockChecksums(decoding: [], blockBytesMax: 1 << 22, chunkBytesMax: 1 << 22) == nil)
        #expect(BlockChecksums(decoding: Array(good.dropLast()), blockBytesMax: 1 << 22, chunkBytesMax: 1 << 22) == nil)
        for i in 0..<good.count {
            var bad = good
            bad[i] ^= 0x01
            #expect(BlockChecksums(decoding: bad, blockBytesMax: 1 << 22, chunkBytesMax: 1 << 22) == nil, "byte \(i)")
        }
        var random = SplitMix(seed: 23)
        for _ in 0..<1000 {
            let junk = (0..<Int(random.next() % 80)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            #expect(BlockChecksums(decoding: junk, blockBytesMax: 1 << 22, chunkBytesMax: 1 << 22) == nil)
        }
    }
}
