/// Why decoding failed. Bad input is an operating error (a corrupt WAL record, a hostile peer), never a crash.
public struct RaftDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The input ended inside a field.
        case truncated
        /// A field holds a value outside its domain (unknown enum tag, over-long varint, length beyond a bound).
        case invalidValue
        /// Bytes were left over after a complete value.
        case trailingBytes
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "RaftDecodingError(\(code)): \(message)" }
}

/// Appends fields in Cairn's compact Raft encoding: LEB128 varints for integers, a varint length before byte
/// strings and arrays. No padding, no versions inside values (the WAL and the wire put a version in their headers).
struct ByteWriter {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func write(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }
    mutating func write(byte value: UInt8) { bytes.append(value) }

    mutating func write(_ value: [UInt8]) {
        write(UInt64(value.count))
        bytes.append(contentsOf: value)
    }
}

/// Reads what `ByteWriter` wrote, checking every bound: it never reads past the end and never allocates more than
/// the input could describe.
struct ByteReader {
    private let bytes: [UInt8]
    private var position: Int = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }

    /// The longest LEB128 encoding of a UInt64.
    private static let varintBytesMax = 10

    mutating func readUInt64() throws(RaftDecodingError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        for i in 0..<Self.varintBytesMax {
            guard position < bytes.count else { throw RaftDecodingError(.truncated, "varint truncated") }
            let byte = bytes[position]
            position += 1
            if i == Self.varintBytesMax - 1 && byte > 1 {
                throw RaftDecodingError(.invalidValue, "varint overflows 64 bits")
            }
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
        throw RaftDecodingError(.invalidValue, "varint longer than \(Self.varintBytesMax) bytes")
    }

    mutating func readByte() throws(RaftDecodingError) -> UInt8 {
        guard position < bytes.count else { throw RaftDecodingError(.truncated, "byte truncated") }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func readBool() throws(RaftDecodingError) -> Bool {
        switch try readByte() {
        case 0: return false
        case 1: return true
        case let b: throw RaftDecodingError(.invalidValue, "bool byte \(b)")
        }
    }

    mutating func readBytes() throws(RaftDecodingError) -> [UInt8] {
        let count = try readCount(elementBytesMin: 1)
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    /// Reads an element count and rejects one that the remaining input cannot possibly hold, so a corrupt
    /// length never turns into a huge allocation.
    mutating func readCount(elementBytesMin: Int) throws(RaftDecodingError) -> Int {
        let count = try readUInt64()
        guard count <= UInt64(remaining / max(elementBytesMin, 1)) else {
            throw RaftDecodingError(.truncated, "length \(count) exceeds the \(remaining) bytes left")
        }
        return Int(count)
    }

    func finish() throws(RaftDecodingError) {
        guard remaining == 0 else { throw RaftDecodingError(.trailingBytes, "\(remaining) trailing bytes") }
    }
}

/// A value with Cairn's compact binary encoding (for the WAL and the wire).
public protocol RaftEncodable {
    func encode() -> [UInt8]
    /// Decodes a value that `encode()` produced; throws on truncated, trailing or invalid input.
    init(decoding bytes: [UInt8]) throws(RaftDecodingError)
}

/// Internal field-level coding shared by nested values.
protocol RaftFieldCodable {
    func write(to writer: inout ByteWriter)
    init(from reader: inout ByteReader) throws(RaftDecodingError)
}

extension RaftFieldCodable {
    public func encode() -> [UInt8] {
        var writer = ByteWriter()
        write(to: &writer)
        return writer.bytes
    }

    public init(decoding bytes: [UInt8]) throws(RaftDecodingError) {
        var reader = ByteReader(bytes)
        self = try Self(from: &reader)
        try reader.finish()
    }
}

extension HardState: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(term)
        writer.write(vote)
        writer.write(commit)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        self.init(term: try reader.readUInt64(), vote: try reader.readUInt64(), commit: try reader.readUInt64())
    }
}

extension Entry: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(term)
        writer.write(index)
        writer.write(byte: kind.rawValue)
        writer.write(data)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        let term = try reader.readUInt64()
        let index = try reader.readUInt64()
        let tag = try reader.readByte()
        guard let kind = Kind(rawValue: tag) else { throw RaftDecodingError(.invalidValue, "entry kind \(tag)") }
        self.init(term: term, index: index, kind: kind, data: try reader.readBytes())
    }
}

extension ConfState: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(UInt64(voters.count))
        for v in voters { writer.write(v) }
        writer.write(UInt64(learners.count))
        for l in learners { writer.write(l) }
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        var voters: [NodeID] = []
        for _ in 0..<(try reader.readCount(elementBytesMin: 1)) { voters.append(try reader.readUInt64()) }
        var learners: [NodeID] = []
        for _ in 0..<(try reader.readCount(elementBytesMin: 1)) { learners.append(try reader.readUInt64()) }
        guard Set(voters).count == voters.count, Set(learners).count == learners.count,
            Set(voters).isDisjoint(with: learners)
        else { throw RaftDecodingError(.invalidValue, "duplicate member in conf state") }
        self.init(voters: voters, learners: learners)
    }
}

extension ConfChange: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(byte: kind.rawValue)
        writer.write(nodeID)
        writer.write(context)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        let tag = try reader.readByte()
        guard let kind = Kind(rawValue: tag) else { throw RaftDecodingError(.invalidValue, "conf change kind \(tag)") }
        self.init(kind: kind, nodeID: try reader.readUInt64(), context: try reader.readBytes())
    }
}

extension SnapshotMetadata: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(index)
        writer.write(term)
        confState.write(to: &writer)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        self.init(index: try reader.readUInt64(), term: try reader.readUInt64(), confState: try ConfState(from: &reader))
    }
}

extension Snapshot: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        metadata.write(to: &writer)
        writer.write(data)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        self.init(metadata: try SnapshotMetadata(from: &reader), data: try reader.readBytes())
    }
}

extension Message: RaftEncodable, RaftFieldCodable {
    func write(to writer: inout ByteWriter) {
        writer.write(byte: kind.rawValue)
        writer.write(from)
        writer.write(to)
        writer.write(term)
        writer.write(logTerm)
        writer.write(index)
        writer.write(UInt64(entries.count))
        for e in entries { e.write(to: &writer) }
        writer.write(commit)
        writer.write(reject)
        writer.write(rejectHint)
        writer.write(context)
        writer.write(snapshot != nil)
        if let snapshot { snapshot.write(to: &writer) }
        writer.write(snapshotOffset)
        writer.write(snapshotBytes)
        writer.write(snapshotChunk)
    }

    init(from reader: inout ByteReader) throws(RaftDecodingError) {
        let tag = try reader.readByte()
        guard let kind = MessageKind(rawValue: tag) else { throw RaftDecodingError(.invalidValue, "message kind \(tag)") }
        self.init(kind: kind)
        from = try reader.readUInt64()
        to = try reader.readUInt64()
        term = try reader.readUInt64()
        logTerm = try reader.readUInt64()
        index = try reader.readUInt64()
        // An encoded entry takes at least 4 bytes (term, index, kind, length).
        let count = try reader.readCount(elementBytesMin: 4)
        entries.reserveCapacity(count)
        for _ in 0..<count { entries.append(try Entry(from: &reader)) }
        commit = try reader.readUInt64()
        reject = try reader.readBool()
        rejectHint = try reader.readUInt64()
        context = try reader.readBytes()
        if try reader.readBool() { snapshot = try SnapshotMetadata(from: &reader) }
        snapshotOffset = try reader.readUInt64()
        snapshotBytes = try reader.readUInt64()
        snapshotChunk = try reader.readBytes()
    }
}
