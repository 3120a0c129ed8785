import CCairnLinux

/// CRC-32C (Castagnoli) through `cairn_crc32c` in CCairnLinux (SSE4.2 where present).
/// Used for per-block chunk checksums and Raft WAL records.
public enum CRC32C {
    /// Continues `crc` (0 to start) over `bytes`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return cairn_crc32c(crc, base, bytes.count)
    }

    public static func checksum<Bytes: Sequence>(_ bytes: Bytes, continuing crc: UInt32 = 0) -> UInt32
    where Bytes.Element == UInt8 {
        if let value = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: crc) }) {
            return value
        }
        return Array(bytes).withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// The checksum of each `blockBytes` block of `bytes` (the last may be shorter): the same
    /// values as `checksum` of each block, computed three blocks at a time (about 3x faster).
    public static func blocks(_ bytes: UnsafeRawBufferPointer, blockBytes: Int) -> [UInt32] {
        precondition(blockBytes > 0)
        guard let base = bytes.baseAddress, bytes.count > 0 else { return [] }
        let count = (bytes.count + blockBytes - 1) / blockBytes
        return [UInt32](unsafeUninitializedCapacity: count) { out, initialized in
            cairn_crc32c_blocks(base, bytes.count, blockBytes, out.baseAddress!)
            initialized = count
        }
    }

    public static var isHardwareAccelerated: Bool { cairn_crc32c_is_hardware() != 0 }
}
