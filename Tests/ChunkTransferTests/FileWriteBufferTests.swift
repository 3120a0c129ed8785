import CairnCore
import CairnTestSupport
import ChunkTransfer
import MetaState
import Testing

@Suite struct FileWriteBufferTests {
    @Test func aFullySequentiallyWrittenChunkIsSealableAndNeedsNoBase() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 16, dirtyBytesMax: 64)
        let data = testBytes(count: 20, seed: 1)
        for start in stride(from: 0, to: 20, by: 4) { try buffer.write(offset: UInt64(start), bytes: data[start..<start + 4]) }
        #expect(buffer.fileSize == 20)
        #expect(buffer.dirtyBytes == 20)
        #expect(buffer.dirtyChunkIndexes == [0, 1])
        #expect(buffer.sealableChunkIndexes == [0])
        #expect(buffer.dirtyRanges(0) == [0..<16])
        #expect(!buffer.needsBase(0))
        // Chunk 1 holds 4 bytes up to the end of the file: no base needed either.
        #expect(!buffer.needsBase(1))
        let sealed = buffer.seal(0, base: nil)
        #expect(sealed.bytes == Array(data[0..<16]))
        #expect(sealed.fileOffset == 0)
        #expect(sealed.extent(chunkID: sealed.id) == Extent(fileOffset: 0, length: 16, chunkID: SHA256.hash(Array(data[0..<16])), chunkOffset: 0))
        #expect(buffer.dirtyBytes == 4)
        let tail = buffer.seal(1, base: nil)
        #expect(tail.bytes == Array(data[16..<20]))
        #expect(tail.extent(chunkID: tail.id).fileOffset == 16 && tail.extent(chunkID: tail.id).length == 4)
        #expect(buffer.isClean && buffer.dirtyBytes == 0)
    }

    @Test func aPartialOverwriteIsReadModifyWriteOfTheOldChunk() throws {
        let old = testBytes(count: 1000, seed: 2)
        var buffer = FileWriteBuffer(fileSize: 1000, chunkBytes: 1024, dirtyBytesMax: 4096)
        try buffer.write(offset: 100, bytes: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        #expect(buffer.fileSize == 1000)
        #expect(buffer.needsBase(0))
        #expect(buffer.sealableChunkIndexes.isEmpty)
        let sealed = buffer.seal(0, base: old)
        var expected = old
        expected.replaceSubrange(100..<110, with: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        #expect(sealed.bytes == expected)
    }

    @Test func aWritePastTheOldContentLeavesZerosInTheGap() throws {
        let old = testBytes(count: 100, seed: 3)
        var buffer = FileWriteBuffer(fileSize: 100, chunkBytes: 1024, dirtyBytesMax: 4096)
        try buffer.write(offset: 150, bytes: [7, 7, 7, 7, 7, 7, 7, 7, 7, 7])
        #expect(buffer.fileSize == 160)
        let sealed = buffer.seal(0, base: old)
        #expect(sealed.bytes == old + [UInt8](repeating: 0, count: 50) + [UInt8](repeating: 7, count: 10))
    }

    @Test func aWriteSpanningChunkBoundariesSplitsAtThem() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 16, dirtyBytesMax: 64)
        let data = testBytes(count: 40, seed: 4)
        try buffer.write(offset: 10, bytes: data)
        #expect(buffer.fileSize == 50)
        #expect(buffer.dirtyChunkIndexes == [0, 1, 2, 3])
        #expect(buffer.dirtyRanges(0) == [10..<16])
        #expect(buffer.dirtyRanges(1) == [0..<16])
        #expect(buffer.dirtyRanges(2) == [0..<16])
        #expect(buffer.dirtyRanges(3) == [0..<2])
        #expect(buffer.sealableChunkIndexes == [1, 2])
        #expect(buffer.seal(0, base: nil).bytes == [UInt8](repeating: 0, count: 10) + data[0..<6])
        #expect(buffer.seal(1, base: nil).bytes == Array(data[6..<22]))
        let last = buffer.seal(3, base: nil)
        #expect(last.bytes == Array(data[38..<40]) && last.fileOffset == 48)
    }

    @Test func aSparseWriteDirtiesOnlyItsChunkAndLeavesHoles() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 16, dirtyBytesMax: 64)
        try buffer.write(offset: 1000, bytes: [1, 2, 3])
        #expect(buffer.fileSize == 1003)
        #expect(buffer.dirtyChunkIndexes == [62])
        #expect(buffer.dirtyBytes == 3)
        let sealed = buffer.seal(62, base: nil)
        #expect(sealed.fileOffset == 992)
        #expect(sealed.bytes == [UInt8](repeating: 0, count: 8) + [1, 2, 3])
    }

    @Test func writesInAnyOrderMergeIntoOneRange() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 64, dirtyBytesMax: 64)
        try buffer.write(offset: 20, bytes: [UInt8](repeating: 3, count: 10))
        try buffer.write(offset: 0, bytes: [UInt8](repeating: 1, count: 10))
        #expect(buffer.dirtyRanges(0) == [0..<10, 20..<30])
        try buffer.write(offset: 40, bytes: [UInt8](repeating: 5, count: 5))
        // Covers the gap, overlaps both neighbours, touches the third.
        try buffer.write(offset: 5, bytes: [UInt8](repeating: 2, count: 35))
        #expect(buffer.dirtyRanges(0) == [0..<45])
        #expect(buffer.dirtyBytes == 45)
        let sealed = buffer.seal(0, base: nil)
        #expect(sealed.bytes == [UInt8](repeating: 1, count: 5) + [UInt8](repeating: 2, count: 35) + [UInt8](repeating: 5, count: 5))
    }

    @Test func truncateDropsDirtyBytesPastTheNewSize() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 16, dirtyBytesMax: 64)
        try buffer.write(offset: 0, bytes: testBytes(count: 40, seed: 5))
        buffer.truncate(to: 20)
        #expect(buffer.fileSize == 20)
        #expect(buffer.dirtyChunkIndexes == [0, 1])
        #expect(buffer.dirtyRanges(1) == [0..<4])
        #expect(buffer.dirtyBytes == 20)
        buffer.truncate(to: 16)
        #expect(buffer.dirtyChunkIndexes == [0])
        #expect(buffer.dirtyBytes == 16)
        // Extending leaves a hole: nothing dirty, the size grows.
        buffer.truncate(to: 100)
        #expect(buffer.fileSize == 100 && buffer.dirtyBytes == 16)
        // The old content of a chunk is cut at the end of the file.
        var shrunk = FileWriteBuffer(fileSize: 30, chunkBytes: 64, dirtyBytesMax: 64)
        try shrunk.write(offset: 2, bytes: [9])
        shrunk.truncate(to: 10)
        #expect(shrunk.seal(0, base: testBytes(count: 30, seed: 6)).bytes.count == 10)
    }

    @Test func theDirtyBoundRefusesNewBytesButNotOverwrites() throws {
        var buffer = FileWriteBuffer(fileSize: 0, chunkBytes: 16, dirtyBytesMax: 32)
        try buffer.write(offset: 0, bytes: [UInt8](repeating: 1, count: 30))
        #expect(!buffer.isFull)
        #expect(throws: CairnError.self) { try buffer.write(offset: 40, bytes: [UInt8](repeating: 2, count: 3)) }
        #expect(buffer.dirtyBytes == 30 && buffer.fileSize == 30 && buffer.dirtyChunkIndexes == [0, 1])
        // Overwriting dirty bytes adds none; growing by two fills the buffer.
        try buffer.write(offset: 0, bytes: [UInt8](repeating: 3, count: 32))
        #expect(buffer.isFull && buffer.dirtyBytes == 32)
        do throws(CairnError) {
            try buffer.write(offset: 32, bytes: [4])
            Issue.record("a full buffer accepted a new byte")
        } catch {
            #expect(error.code == .busy)
        }
        _ = buffer.seal(0, base: nil)
        #expect(!buffer.isFull)
        try buffer.write(offset: 32, bytes: [4])
        #expect(throws: CairnError.self) { try buffer.write(offset: UInt64(Int.max) - 1, bytes: [1, 2]) }
    }

    /// Random writes and truncates against a byte-array model of the file: sealing every dirty
    /// chunk over the committed content gives exactly the model.
    @Test(arguments: 0..<40) func matchesAByteArrayModel(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        let chunkBytes = [7, 16, 64][Int(seed % 3)]
        let initial = testBytes(count: Int.random(in: 0...200, using: &rng), seed: seed &+ 1000)
        var buffer = FileWriteBuffer(fileSize: UInt64(initial.count), chunkBytes: chunkBytes, dirtyBytesMax: 1 << 20)
        var model = initial
        // What the metadata service holds: the initial content with every truncation applied.
        var committed = initial
        for step in 0..<Int.random(in: 1...30, using: &rng) {
            if Int.random(in: 0..<6, using: &rng) == 0 {
                let size = Int.random(in: 0...260, using: &rng)
                buffer.truncate(to: UInt64(size))
                model = size <= model.count ? Array(model.prefix(size)) : model + [UInt8](repeating: 0, count: size - model.count)
                committed = Array(committed.prefix(size))
            } else {
                let offset = Int.random(in: 0...250, using: &rng)
                let data = testBytes(count: Int.random(in: 1...40, using: &rng), seed: seed &* 100 &+ UInt64(step))
                try buffer.write(offset: UInt64(offset), bytes: data)
                if model.count < offset + data.count { model += [UInt8](repeating: 0, count: offset + data.count - model.count) }
                model.replaceSubrange(offset..<offset + data.count, with: data)
            }
            #expect(buffer.fileSize == UInt64(model.count))
        }
        var file = [UInt8](repeating: 0, count: model.count)
        file.replaceSubrange(0..<min(committed.count, file.count), with: committed.prefix(file.count))
        for index in buffer.dirtyChunkIndexes {
            let start = index * chunkBytes
            let base = start < committed.count ? Array(committed[start..<min(start + chunkBytes, committed.count)]) : nil
            let sealed = buffer.seal(index, base: base)
            #expect(!sealed.bytes.isEmpty && sealed.bytes.count <= chunkBytes)
            #expect(sealed.fileOffset == UInt64(start))
            file.replaceSubrange(start..<start + sealed.bytes.count, with: sealed.bytes)
        }
        #expect(buffer.isClean && buffer.dirtyBytes == 0)
        #expect(file == model, "seed \(seed)")
    }
}
