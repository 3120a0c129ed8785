import CairnCore
import Logging
import RaftCore
import SystemPackage

/// State-machine snapshots on disk, one file each, written atomically.
///
/// `DIR/SSSSSSSSSSSSSSSS-TTTTTTTTTTTTTTTT.snap` (hex index, hex term), holding
/// `u32 magic "CSNP" | u32 format 1 | u32 CRC-32C of the rest | the encoded Snapshot`.
/// A file is written under a `.tmp` name, fsynced, renamed, and the directory fsynced, so a
/// crash leaves either the old set of snapshots or the new one. The newest `keep` are kept.
public struct SnapshotFiles {
    public static let magic: UInt32 = 0x434E_5350  // "CSNP"
    public let directory: FilePath
    /// Snapshots kept (the newest); older ones are deleted after a new one is saved.
    public let keep: Int
    private let logger: Logger

    public init(directory: FilePath, keep: Int = 2, logger: Logger) throws(CairnError) {
        precondition(keep >= 1)
        self.directory = directory
        self.keep = keep
        self.logger = logger
        do {
            try FileSystemCalls.mkdir(directory)
            for name in try FileSystemCalls.directoryEntries(directory) where name.hasSuffix(".tmp") {
                try FileSystemCalls.unlink(directory.appending(name))
            }
        } catch {
            throw CairnError(.io, "cannot set up snapshot directory \(directory)", cause: error)
        }
    }

    static func name(index: UInt64, term: UInt64) -> String {
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return "\(hex(index))-\(hex(term)).snap"
    }

    /// The (index, term) of every snapshot file, newest first.
    public func list() throws(CairnError) -> [(index: UInt64, term: UInt64)] {
        let names: [String]
        do {
            names = try FileSystemCalls.directoryEntries(directory)
        } catch {
            throw CairnError(.io, "cannot list \(directory)", cause: error)
        }
        var found: [(index: UInt64, term: UInt64)] = []
        for name in names where name.hasSuffix(".snap") && name.count == 38 {
            let parts = name.dropLast(5).split(separator: "-")
            if parts.count == 2, let index = UInt64(parts[0], radix: 16), let term = UInt64(parts[1], radix: 16) {
                found.append((index, term))
            }
        }
        return found.sorted { $0.index > $1.index }
    }

    /// Saves a snapshot durably, then deletes all but the newest `keep`.
    public func save(_ snapshot: Snapshot) throws(CairnError) {
        let body = snapshot.encode()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(body.count + 12)
        appendUInt32(&bytes, Self.magic)
        appendUInt32(&bytes, 1)
        appendUInt32(&bytes, CRC32C.checksum(body))
        bytes.append(contentsOf: body)
        let final = directory.appending(Self.name(index: snapshot.metadata.index, term: snapshot.metadata.term))
        do {
            try FileSystemCalls.writeFileAtomically(final, bytes: bytes)
        } catch {
            throw WriteAheadLog.ioError("cannot save snapshot \(final)", error)
        }
        for old in try list().dropFirst(keep) {
            _ = try? FileSystemCalls.unlink(directory.appending(Self.name(index: old.index, term: old.term)))
        }
    }

    /// Loads the snapshot at exactly `index`/`term`.
    /// - Throws: `.notFound` if there is no such file; `.corrupt` if it fails its checksum.
    public func load(index: UInt64, term: UInt64) throws(CairnError) -> Snapshot {
        let path = directory.appending(Self.name(index: index, term: term))
        let bytes: [UInt8]
        do {
            guard try FileSystemCalls.status(path) != nil else {
                throw CairnError(.notFound, "snapshot \(path) is missing")
            }
            bytes = try FileSystemCalls.readFile(path, bytesMax: .max)
        } catch let error as CairnError {
            throw error
        } catch {
            throw CairnError(.io, "cannot read snapshot \(path)", cause: error)
        }
        guard bytes.count >= 12, readUInt32(bytes, 0) == Self.magic, readUInt32(bytes, 4) == 1 else {
            throw CairnError(.corrupt, "snapshot \(path) has a bad header")
        }
        let body = Array(bytes[12...])
        guard CRC32C.checksum(body) == readUInt32(bytes, 8) else {
            throw CairnError(.corrupt, "snapshot \(path) fails its checksum")
        }
        do {
            let snapshot = try Snapshot(decoding: body)
            guard snapshot.metadata.index == index, snapshot.metadata.term == term else {
                throw CairnError(.corrupt, "snapshot \(path) holds index \(snapshot.metadata.index) term \(snapshot.metadata.term)")
            }
            return snapshot
        } catch let error as CairnError {
            throw error
        } catch {
            throw CairnError(.corrupt, "snapshot \(path) does not decode", cause: error)
        }
    }
}
