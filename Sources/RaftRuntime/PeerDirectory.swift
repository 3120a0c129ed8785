import CairnCore
import RaftCore
import SystemPackage

/// Where each member listens, kept in `DIR/peers` (one `ID HOST:PORT` per line) so that members
/// added at run time are still known after a restart. Written atomically.
final class PeerDirectory {
    private(set) var addresses: [NodeID: HostPort]
    private let path: FilePath

    init(directory: FilePath, initial: [NodeID: HostPort]) throws(CairnError) {
        path = directory.appending("peers")
        do {
            try FileSystemCalls.mkdir(directory)
        } catch {
            throw CairnError(.io, "cannot create \(directory)", cause: error)
        }
        var known: [NodeID: HostPort] = [:]
        if let text = try? String(decoding: readSmallFile(path), as: UTF8.self) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ")
                guard parts.count == 2, let id = UInt64(parts[0]), let address = HostPort(String(parts[1])) else {
                    throw CairnError(.corrupt, "\(path): malformed line '\(line)'")
                }
                known[id] = address
            }
        }
        // Addresses given at start-up win: an operator may have moved a member.
        for (id, address) in initial { known[id] = address }
        addresses = known
        try save()
    }

    func set(_ id: NodeID, _ address: HostPort?) throws(CairnError) {
        addresses[id] = address
        try save()
    }

    private func save() throws(CairnError) {
        let text = addresses.keys.sorted().map { "\($0) \(addresses[$0]!)" }.joined(separator: "\n") + "\n"
        let temp = FilePath(path.string + ".tmp")
        do {
            let fd = try FileDescriptor.open(temp, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead])
            _ = try fd.writeAll(Array(text.utf8))
            try FileSystemCalls.fsync(fd)
            try fd.close()
            try FileSystemCalls.rename(temp, path)
            try FileSystemCalls.fsyncDirectory(path.removingLastComponent())
        } catch {
            throw CairnError(.io, "cannot write \(path)", cause: error)
        }
    }
}

func readSmallFile(_ path: FilePath, bytesMax: Int = 1 << 20) throws -> [UInt8] {
    let fd = try FileDescriptor.open(path, .readOnly)
    defer { try? fd.close() }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
        if n == 0 { return out }
        out += buffer[..<n]
        if out.count > bytesMax { throw CairnError(.tooLarge, "\(path) is larger than \(bytesMax) bytes") }
    }
}
