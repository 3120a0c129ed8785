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
        if let text = try? String(decoding: FileSystemCalls.readFile(path, bytesMax: 1 << 20), as: UTF8.self) {
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
        do {
            try FileSystemCalls.writeFileAtomically(path, bytes: Array(text.utf8))
        } catch {
            throw CairnError(.io, "cannot write \(path)", cause: error)
        }
    }
}
