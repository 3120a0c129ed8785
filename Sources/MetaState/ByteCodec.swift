import CairnCore

/// The compact binary encoding of commands, replies and snapshots: LEB128 varints, zigzag for
/// signed values, byte strings as a varint length then the bytes. Writing is total; reading
/// checks every length against what is left, so hostile input fails with `EBADMSG` and never
/// allocates more than its own size.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func varint(_ value: UInt32) { varint(UInt64(value)) }
    mutating func varint(_ value: Int) { varint(UInt64(value)) }
    mutating func signed(_ value: Int64) { varint(UInt64(bitPattern: (value << 1) ^ (value >> 63))) }
    mutating func byte(_ value: UInt8) { bytes.append(value) }
    mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    mutating func data(_ value: [UInt8]) {
        varint(value.count)
        bytes.append(contentsOf: value)
    }

    mutating func timestamp(_ t: Timestamp) {
        signed(t.seconds)
        varint(t.nanoseconds)
    }

    mutating func chunkID(_ id: ChunkID) { bytes.append(contentsOf: id.bytes) }

    mutating func extent(_ e: Extent) {
        varint(e.fileOffset)
        varint(e.length)
        chunkID(e.chunkID)
        varint(e.chunkOffset)
    }

    mutating func credentials(_ c: Credentials) {
        varint(c.uid)
        varint(c.gid)
        varint(c.groups.count)
        for g in c.groups { varint(g) }
    }

    mutating func attributes(_ a: Attributes) {
        varint(a.inode)
        byte(a.type.rawValue)
        varint(a.mode)
        varint(a.uid)
        varint(a.gid)
        varint(a.nlink)
        varint(a.size)
        timestamp(a.atime)
        timestamp(a.mtime)
        timestamp(a.ctime)
        varint(a.rdev)
    }

    mutating func chunkIDs(_ ids: [ChunkID]) {
        varint(ids.count)
        for id in ids { chunkID(id) }
    }
}

struct ByteReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var atEnd: Bool { offset == bytes.count }

    mutating func byte() throws(FileSystemError) -> UInt8 {
        guard offset < bytes.count else { throw .EBADMSG }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func varint() throws(FileSystemError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            if shift == 63, b > 1 { throw .EBADMSG }
            result |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 {
                // Reject non-minimal encodings, so one value has one encoding (digests compare bytes).
                if b == 0, shift > 0 { throw .EBADMSG }
                return result
            }
            shift += 7
            if shift > 63 { throw .EBADMSG }
        }
    }

    mutating func uint32() throws(FileSystemError) -> UInt32 {
        let v = try varint()
        guard v <= UInt64(UInt32.max) else { throw .EBADMSG }
        return UInt32(v)
    }

    /// A count of items each at least `itemBytesMin` long: never more than the bytes left allow.
    mutating func count(itemBytesMin: Int) throws(FileSystemError) -> Int {
        let v = try varint()
        guard v <= UInt64(remaining / max(1, itemBytesMin)) else { throw .EBADMSG }
        return Int(v)
    }

    mutating func signed() throws(FileSystemError) -> Int64 {
        let v = try varint()
        return Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1)
    }

    mutating func bool() throws(FileSystemError) -> Bool {
        switch try byte() {
        case 0: return false
        case 1: return true
        default: throw .EBADMSG
        }
    }

    mutating func data() throws(FileSystemError) -> [UInt8] {
        let n = try count(itemBytesMin: 1)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    mutating func timestamp() throws(FileSystemError) -> Timestamp {
        let seconds = try signed()
        let nanoseconds = try uint32()
        guard nanoseconds < 1_000_000_000 else { throw .EBADMSG }
        return Timestamp(seconds: seconds, nanoseconds: nanoseconds)
    }

    mutating func chunkID() throws(FileSystemError) -> ChunkID {
        guard remaining >= ChunkID.byteCount else { throw .EBADMSG }
        defer { offset += ChunkID.byteCount }
        return ChunkID(digest: bytes[offset..<offset + ChunkID.byteCount])!
    }

    mutating func extent() throws(FileSystemError) -> Extent {
        Extent(fileOffset: try varint(), length: try varint(), chunkID: try chunkID(), chunkOffset: try varint())
    }

    mutating func fileType() throws(FileSystemError) -> FileType {
        guard let type = FileType(rawValue: try byte()) else { throw .EBADMSG }
        return type
    }

    mutating func credentials() throws(FileSystemError) -> Credentials {
        let uid = try uint32(), gid = try uint32()
        let n = try count(itemBytesMin: 1)
        var groups: [UInt32] = []
        groups.reserveCapacity(n)
        for _ in 0..<n { groups.append(try uint32()) }
        return Credentials(uid: uid, gid: gid, groups: groups)
    }

    mutating func attributes() throws(FileSystemError) -> Attributes {
        Attributes(inode: try varint(), type: try fileType(), mode: try uint32(), uid: try uint32(), gid: try uint32(),
                   nlink: try uint32(), size: try varint(), atime: try timestamp(), mtime: try timestamp(),
                   ctime: try timestamp(), rdev: try varint())
    }

    mutating func chunkIDs() throws(FileSystemError) -> [ChunkID] {
        let n = try count(itemBytesMin: ChunkID.byteCount)
        var out: [ChunkID] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try chunkID()) }
        return out
    }
}
