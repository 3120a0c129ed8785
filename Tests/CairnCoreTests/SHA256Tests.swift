import Testing
@testable import CairnCore

/// FIPS 180-4 / NIST CAVS example vectors for SHA-256.
@Suite struct SHA256Tests {
    @Test func emptyMessage() {
        #expect(SHA256.hash([UInt8]()).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func abc() {
        #expect(SHA256.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func message448Bits() {
        let message = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(message.count * 8 == 448)
        #expect(SHA256.hash(message).hex == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func oneMillionA() {
        #expect(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)).hex
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// Incremental hashing: the same digest whatever the split points, including empty updates.
    @Test(arguments: [1, 3, 63, 64, 65, 1000, 4096])
    func incrementalMatchesOneShot(step: Int) {
        let message = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let hasher = SHA256()
        var offset = 0
        while offset < message.count {
            let end = min(offset + step, message.count)
            hasher.update(message[offset..<end])
            hasher.update([UInt8]())
            offset = end
        }
        #expect(hasher.finalize() == SHA256.hash(message))
        // finalize resets: the hasher is reusable.
        hasher.update(Array("abc".utf8))
        #expect(hasher.finalize().hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

@Suite struct ChunkIDTests {
    @Test func hexRoundTrip() throws {
        let id = SHA256.hash(Array("abc".utf8))
        #expect(ChunkID(hex: id.hex) == id)
        #expect(ChunkID(hex: id.hex.uppercased()) == id)
        #expect(ChunkID(digest: id.bytes) == id)
    }

    @Test(arguments: ["", "abc", String(repeating: "0", count: 63), String(repeating: "0", count: 65),
                      String(repeating: "g", count: 64), String(repeating: "é", count: 32)])
    func rejectsMalformedHex(text: String) {
        #expect(ChunkID(hex: text) == nil)
    }

    @Test func rejectsWrongDigestLength() {
        #expect(ChunkID(digest: [UInt8](repeating: 0, count: 31)) == nil)
        #expect(ChunkID(digest: [UInt8](repeating: 0, count: 33)) == nil)
    }

    @Test func orderIsBytewise() {
        var a = [UInt8](repeating: 0, count: 32)
        var b = a
        a[31] = 1
        b[0] = 1
        #expect(ChunkID(digest: a)! < ChunkID(digest: b)!)
        #expect(ChunkID(digest: a)!.hex < ChunkID(digest: b)!.hex)
    }
}

@Suite struct CRC32CTests {
    @Test func checkValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    /// RFC 3720 (iSCSI) appendix B.4 vectors.
    @Test func iscsiVectors() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    }

    /// `blocks` (three blocks at a time) gives each block's own checksum, whatever the block
    /// size (odd ones leave bytes past the last 8-byte word) and however many blocks there are.
    @Test func blocksEqualEachBlocksOwnChecksum() {
        let bytes = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        for blockBytes in [1, 7, 8, 4096, 4097, 10_000] {
            for length in [0, 1, blockBytes - 1, blockBytes, 2 * blockBytes + 1, 3 * blockBytes, 3 * blockBytes + 5, 7 * blockBytes - 3]
            where length >= 0 && length <= bytes.count {
                let part = Array(bytes[..<length])
                let expected = stride(from: 0, to: length, by: blockBytes).map { CRC32C.checksum(part[$0..<min($0 + blockBytes, length)]) }
                #expect(part.withUnsafeBytes { CRC32C.blocks($0, blockBytes: blockBytes) } == expected, "block \(blockBytes) length \(length)")
            }
        }
    }

    @Test func continuationEqualsOneShot() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let split = CRC32C.checksum(bytes[500...], continuing: CRC32C.checksum(bytes[..<500]))
        #expect(split == CRC32C.checksum(bytes))
    }
}

@Suite struct HostPortTests {
    @Test func parses() {
        #expect(HostPort("127.0.0.1:7000") == HostPort(host: "127.0.0.1", port: 7000))
        #expect(HostPort("[::1]:80") == HostPort(host: "::1", port: 80))
        #expect(HostPort("[::1]:80")?.description == "[::1]:80")
        #expect(HostPort("nohost") == nil)
        #expect(HostPort(":80") == nil)
        #expect(HostPort("h:99999") == nil)
        #expect(HostPort("h:x") == nil)
    }

    @Test func limitsValidate() throws {
        try ChunkLimits().validate()
        var bad = ChunkLimits()
        bad.chunkBytesMax = 0
        #expect(throws: CairnError.self) { try bad.validate() }
    }
}

@Suite struct VerifiedBlocksTests {
    @Test func blocksPassOnlyWithTheirChecksumsAndLength() {
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let blockBytes = 4096
        let sums = stride(from: 0, to: bytes.count, by: blockBytes).map { CRC32C.checksum(Array(bytes[$0..<min($0 + blockBytes, bytes.count)])) }
        let blocks = VerifiedBlocks(offset: 8192, blockBytes: blockBytes, checksums: sums)
        #expect(bytes.withUnsafeBytes { blocks.check($0) })
        var flipped = bytes
        flipped[9_999] ^= 1
        #expect(!flipped.withUnsafeBytes { blocks.check($0) })
        // Too short (a block missing) or too long (bytes beyond the last block) fails too.
        #expect(!Array(bytes[..<8192]).withUnsafeBytes { blocks.check($0) })
        #expect(!(bytes + [0]).withUnsafeBytes { VerifiedBlocks(offset: 0, blockBytes: 5000, checksums: [sums[0]]).check($0) })
        #expect([UInt8]().withUnsafeBytes { VerifiedBlocks(offset: 0, blockBytes: 4096, checksums: []).check($0) })
    }
}
