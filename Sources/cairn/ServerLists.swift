import ArgumentParser
import CairnCore
import RaftCore

/// Parses `HOST:PORT,HOST:PORT,…` (at least one, every item valid) for the option named `option`.
func parseServerList(_ text: String, option: String) throws -> [HostPort] {
    let items = text.split(separator: ",")
    let servers = items.compactMap { HostPort(String($0)) }
    guard !servers.isEmpty, servers.count == items.count else {
        throw ValidationError("\(option) must be HOST:PORT,… (got '\(text)')")
    }
    return servers
}

/// `--meta HOST:PORT,…`: the metadata replicas to talk to.
struct MetaServersOption: ParsableArguments {
    @Option(help: "Metadata replicas, HOST:PORT,HOST:PORT,…") var meta: String
    var list: [HostPort] { (try? parseServerList(meta, option: "--meta")) ?? [] }
    func validate() throws { _ = try parseServerList(meta, option: "--meta") }
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
func parsePeers(_ text: String) throws -> [NodeID: HostPort] {
    var peers: [NodeID: HostPort] = [:]
    for item in text.split(separator: ",") {
        let parts = item.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let id = UInt64(parts[0]), id > 0, let address = HostPort(String(parts[1])) else {
            throw ValidationError("bad peer '\(item)': expected ID=HOST:PORT")
        }
        guard peers[id] == nil else { throw ValidationError("peer \(id) named twice") }
        peers[id] = address
    }
    guard !peers.isEmpty else { throw ValidationError("--peers is empty") }
    return peers
}
