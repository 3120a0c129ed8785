import CairnCore
import RaftRuntime

/// A replicated key-value map: the smallest real state machine, used to exercise the Raft
/// runtime with real processes (tests and `tools/bench raft`).
///
/// Commands: `u8 1 (put) | u32 key length | key | value`. Replies: empty on success, or
/// `u8 0xFF | message` for a command it cannot decode (never a crash: the log is input).
public final class KeyValueMachine: ReplicatedStateMachine {
    public private(set) var values: [[UInt8]: [UInt8]] = [:]
    public static let keyBytesMax = 4096
    public static let valueBytesMax = 1 << 20

    public init() {}

    public static func putCommand(key: [UInt8], value: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [1]
        withUnsafeBytes(of: UInt32(key.count).littleEndian) { out += $0 }
        return out + key + value
    }

    public func apply(_ command: [UInt8], at index: UInt64) -> [UInt8] {
        guard command.count >= 5, command[0] == 1 else { return [0xFF] + Array("unknown command".utf8) }
        let keyLength = Int(UInt32(command[1]) | UInt32(command[2]) << 8 | UInt32(command[3]) << 16 | UInt32(command[4]) << 24)
        guard keyLength <= Self.keyBytesMax, command.count >= 5 + keyLength else {
            return [0xFF] + Array("malformed put".utf8)
        }
        values[Array(command[5..<(5 + keyLength)])] = Array(command[(5 + keyLength)...])
        return []
    }

    /// Sorted `u32 key length | key | u32 value length | value` records.
    public func snapshot() -> [UInt8] {
        var out: [UInt8] = []
        for key in values.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            let value = values[key]!
            withUnsafeBytes(of: UInt32(key.count).littleEndian) { out += $0 }
            out += key
            withUnsafeBytes(of: UInt32(value.count).littleEndian) { out += $0 }
            out += value
        }
        return out
    }

    public func restore(_ snapshot: [UInt8]) throws(CairnError) {
        var restored: [[UInt8]: [UInt8]] = [:]
        var position = 0
        func length() throws(CairnError) -> Int {
            guard snapshot.count - position >= 4 else { throw CairnError(.corrupt, "key-value snapshot truncated") }
            defer { position += 4 }
            return Int(UInt32(snapshot[position]) | UInt32(snapshot[position + 1]) << 8 | UInt32(snapshot[position + 2]) << 16
                       | UInt32(snapshot[position + 3]) << 24)
        }
        while position < snapshot.count {
            let keyLength = try length()
            guard snapshot.count - position >= keyLength else { throw CairnError(.corrupt, "key-value snapshot truncated") }
            let key = Array(snapshot[position..<(position + keyLength)])
            position += keyLength
            let valueLength = try length()
            guard snapshot.count - position >= valueLength else { throw CairnError(.corrupt, "key-value snapshot truncated") }
            restored[key] = Array(snapshot[position..<(position + valueLength)])
            position += valueLength
        }
        values = restored
    }

    /// SHA-256 of the snapshot encoding: equal states have equal digests.
    public var digest: ChunkID { SHA256.hash(snapshot()) }
}
