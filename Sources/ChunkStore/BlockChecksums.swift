import CairnCore

/// Per-block CRC-32C checksums of one chunk, kept beside it so that a range read verifies only
/// the blocks it touches instead of re-hashing the whole chunk.
///
/// On disk (little-endian): magic `CSUM`, format 1, block size, chunk length, block count, the
/// checksums, then a CRC-32C of everything before it. A file that fails any check is treated as
/// missing: the chunk is then verified whole and the file rewritten.
public struct BlockChecksums: Equatable, Sendable {
    public static let magic: UInt32 = 0x4D55_5343  // "CSUM"
    public static let format: UInt32 = 1

    public var blockBytes: Int
    public var chunkLength: Int
    public var checksums: [UInt32]

    public init(blockBytes: Int, chunkLength: Int, checksums: [UInt32]) {
        precondition(blockBytes > 0)
        precondition(checksums.count == Self.blockCount(chunkLength: chunkLength, blockBytes: blockBytes))
        self.blockBytes = blockBytes
        self.chunkLength = chunkLength
        self.checksums = checksums
    }

    public static func blockCount(chunkLength: Int, blockBytes: Int) -> Int {
        (chunkLength + blockBytes - 1) / blockBytes
    }

    /// Computes the checksums of a whole chunk held in memory.
    public init(of bytes: UnsafeRawBufferPointer, blockBytes: Int) {
        var builder = Builder(blockBytes: blockBytes)
        builder.append(bytes)
        self = builder.finish()
    }

    /// The indices of the blocks that hold bytes `range`.
    public func blocks(covering range: Range<Int>) -> Range<Int> {
        guard !range.isEmpty else { return 0..<0 }
        return (range.lowerBound / blockBytes)..<((range.upperBound - 1) / blockBytes + 1)
    }

    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(28 + 4 * checksums.count + 4)
        func put32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func put64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put32(Self.magic)
        put32(Self.format)
        put32(UInt32(blockBytes))
        put64(UInt64(chunkLength))
        put32(UInt32(checksums.count))
        for c in checksums { put32(c) }
        put32(CRC32C.checksum(out))
        return out
    }

    /// Decodes a checksum file; nil for anything malformed or inconsistent.
    public init?(decoding bytes: [UInt8], blockBytesMax: Int, chunkBytesMax: Int) {
        guard bytes.count >= 28 else { return nil }
        func get32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        func get64(_ at: Int) -> UInt64 { UInt64(get32(at)) | UInt64(get32(at + 4)) << 32 }
        guard get32(0) == Self.magic, get32(4) == Self.format else { return nil }
        let blockBytes = Int(get32(8))
        let length = get64(12)
        let count = Int(get32(20))
        guard blockBytes > 0, blockBytes <= blockBytesMax, length <= UInt64(chunkBytesMax),
              count == Self.blockCount(chunkLength: Int(length), blockBytes: blockBytes),
              bytes.count == 24 + 4 * count + 4 else { return nil }
        guard get32(bytes.count - 4) == CRC32C.checksum(bytes[..<(bytes.count - 4)]) else { return nil }
        self.init(blockBytes: blockBytes, chunkLength: Int(length),
                  checksums: (0..<count).map { get32(24 + 4 * $0) })
    }

    /// Accumulates checksums as bytes stream in, block by block.
    public struct Builder {
        public let blockBytes: Int
        private var checksums: [UInt32] = []
        private var current: UInt32 = 0
        private var currentBytes = 0
        private var total = 0

        public init(blockBytes: Int) {
            precondition(blockBytes > 0)
            self.blockBytes = blockBytes
        }

        public mutating func append(_ bytes: UnsafeRawBufferPointer) {
            var offset = 0
            // Complete the block in progress, then every whole block at once (`CRC32C.blocks`),
            // then start the next with what is left.
            if currentBytes > 0 {
                offset = min(blockBytes - currentBytes, bytes.count)
                current = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[..<offset]), continuing: current)
                currentBytes += offset
                if currentBytes == blockBytes {
                    checksums.append(current)
                    current = 0
                    currentBytes = 0
                }
            }
            let whole = (bytes.count - offset) / blockBytes * blockBytes
            if whole > 0 {
                checksums += CRC32C.blocks(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + whole)]), blockBytes: blockBytes)
                offset += whole
            }
            if offset < bytes.count {
                current = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[offset...]), continuing: current)
                currentBytes += bytes.count - offset
            }
            total += bytes.count
        }

        public func finish() -> BlockChecksums {
            var all = checksums
            if currentBytes > 0 { all.append(current) }
            return BlockChecksums(blockBytes: blockBytes, chunkLength: total, checksums: all)
        }
    }
}
