/// The checksums of the whole blocks a range read returned: the bytes start at chunk offset
/// `offset` (a block boundary) and block `i` of them has CRC-32C `checksums[i]` (the last may
/// be short, at the chunk's end). They travel with the bytes so a reader can check them too.
public struct VerifiedBlocks: Equatable, Sendable {
    public var offset: Int
    public var blockBytes: Int
    public var checksums: [UInt32]

    public init(offset: Int, blockBytes: Int, checksums: [UInt32]) {
        self.offset = offset
        self.blockBytes = blockBytes
        self.checksums = checksums
    }

    /// Whether `bytes` (starting at `offset`) match the checksums block by block.
    public func check(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard blockBytes > 0, bytes.count <= checksums.count * blockBytes, bytes.count > (checksums.count - 1) * blockBytes
        else { return checksums.isEmpty && bytes.isEmpty }
        return CRC32C.blocks(bytes, blockBytes: blockBytes) == checksums
    }
}
