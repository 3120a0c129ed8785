import RaftCore

/// A client operation on the simulated key-value store.
public enum KVOperation: Sendable, Equatable, Hashable, CustomStringConvertible {
    case put(key: String, value: String)
    case append(key: String, value: String)
    case get(key: String)

    public var key: String {
        switch self {
        case .put(let k, _), .append(let k, _), .get(let k): k
        }
    }

    public var isRead: Bool { if case .get = self { true } else { false } }

    public var description: String {
        switch self {
        case .put(let k, let v): "put(\(k), \(v))"
        case .append(let k, let v): "append(\(k), \(v))"
        case .get(let k): "get(\(k))"
        }
    }
}

/// A write as it travels in a Raft entry: who asked (so the proposing node can answer) and what.
struct KVCommand: Equatable {
    var client: Int
    var sequence: Int
    var operation: KVOperation

    func encode() -> [UInt8] {
        var out: [UInt8] = []
        func putInt(_ v: Int) { withUnsafeBytes(of: UInt64(v).littleEndian) { out.append(contentsOf: $0) } }
        func putString(_ s: String) {
            let b = Array(s.utf8)
            putInt(b.count)
            out.append(contentsOf: b)
        }
        switch operation {
        case .put(let k, let v):
            out.append(1)
            putInt(client); putInt(sequence); putString(k); putString(v)
        case .append(let k, let v):
            out.append(2)
            putInt(client); putInt(sequence); putString(k); putString(v)
        case .get:
            preconditionFailure("reads are not logged")
        }
        return out
    }

    /// Decodes what `encode` wrote; nil on anything else (an empty no-op entry, for instance).
    init?(decoding bytes: [UInt8]) {
        var pos = 0
        func getInt() -> Int? {
            guard pos + 8 <= bytes.count else { return nil }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
            pos += 8
            return v <= UInt64(Int.max) ? Int(v) : nil
        }
        func getString() -> String? {
            guard let n = getInt(), n <= bytes.count - pos else { return nil }
            defer { pos += n }
            return String(decoding: bytes[pos..<(pos + n)], as: UTF8.self)
        }
        guard !bytes.isEmpty else { return nil }
        let tag = bytes[0]
        pos = 1
        guard let c = getInt(), let s = getInt(), let k = getString(), let v = getString(), pos == bytes.count
        else { return nil }
        client = c
        sequence = s
        switch tag {
        case 1: operation = .put(key: k, value: v)
        case 2: operation = .append(key: k, value: v)
        default: return nil
        }
    }

    init(client: Int, sequence: Int, operation: KVOperation) {
        self.client = client
        self.sequence = sequence
        self.operation = operation
    }
}

/// The replicated state machine: a map from keys to strings. Pure and deterministic; snapshots encode keys in
/// sorted order so equal states have equal bytes.
struct KeyValueStore: Equatable {
    private(set) var values: [String: String] = [:]

    func get(_ key: String) -> String { values[key] ?? "" }

    mutating func apply(_ command: KVCommand) {
        switch command.operation {
        case .put(let k, let v): values[k] = v
        case .append(let k, let v): values[k, default: ""] += v
        case .get: break
        }
    }

    func encode() -> [UInt8] {
        var out: [UInt8] = []
        for key in values.keys.sorted() {
            let k = Array(key.utf8)
            let v = Array(values[key]!.utf8)
            out.append(contentsOf: withUnsafeBytes(of: UInt32(k.count).littleEndian, Array.init))
            out.append(contentsOf: k)
            out.append(contentsOf: withUnsafeBytes(of: UInt32(v.count).littleEndian, Array.init))
            out.append(contentsOf: v)
        }
        return out
    }

    init() {}

    init?(decoding bytes: [UInt8]) {
        var pos = 0
        func getLength() -> Int? {
            guard pos + 4 <= bytes.count else { return nil }
            var v: UInt32 = 0
            for i in 0..<4 { v |= UInt32(bytes[pos + i]) << (8 * UInt32(i)) }
            pos += 4
            return Int(v) <= bytes.count - pos ? Int(v) : nil
        }
        while pos < bytes.count {
            guard let kn = getLength() else { return nil }
            let k = String(decoding: bytes[pos..<(pos + kn)], as: UTF8.self)
            pos += kn
            guard let vn = getLength() else { return nil }
            let v = String(decoding: bytes[pos..<(pos + vn)], as: UTF8.self)
            pos += vn
            values[k] = v
        }
    }

    /// A cheap fingerprint of the whole state (FNV-1a over the encoding).
    var digest: UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in encode() { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}
