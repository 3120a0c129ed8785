import ArgumentParser
import CairnCore
import Foundation
import MetaService

/// `cairn status`: the cluster at a glance — who leads, every replica's progress, every
/// chunkserver's capacity and liveness, the ring epoch.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the metadata replicas (leader, term, commit, lag) and the chunkservers (capacity, liveness, ring epoch).")

    @OptionGroup var meta: MetaServersOption
    @Flag(help: "Print JSON (top-level `leader` is the leader's HOST:PORT, `term` its term).") var json = false

    func run() async throws {
        let report = try await MetaClient.with(servers: meta.list, attemptsMax: 3) { client in
            var statuses: [(HostPort, Cairn_Meta_V1_StatusResponse?)] = []
            for server in client.servers { statuses.append((server, await client.status(of: server))) }
            return statuses
        }
        // The leader's own answer is the authority on lag and chunkserver liveness.
        let leaderStatus = report.compactMap(\.1).first { $0.role == "leader" }
            ?? report.compactMap(\.1).filter { !$0.leaderAddress.isEmpty }.max { $0.term < $1.term }
                .flatMap { hinted in report.first { $0.0.description == hinted.leaderAddress }?.1 }
        if json {
            printLine(Self.json(report, leader: leaderStatus))
        } else {
            printLine(Self.text(report, leader: leaderStatus))
        }
        if leaderStatus?.role != "leader" { throw ExitCode(2) }
    }

    static func text(_ report: [(HostPort, Cairn_Meta_V1_StatusResponse?)], leader: Cairn_Meta_V1_StatusResponse?) -> String {
        var lines: [String] = []
        if let leader, leader.role == "leader" {
            lines.append("leader \(leader.leaderAddress) (replica \(leader.id)), term \(leader.term), commit \(leader.commit), ring epoch \(leader.ringEpoch), \(leader.inodes) inodes, \(leader.sessions) sessions")
        } else {
            lines.append("no leader")
        }
        lines.append("replicas:")
        for (server, status) in report {
            guard let status else {
                lines.append("  \(server)  unreachable")
                continue
            }
            let lag = leader?.members.first { $0.id == status.id }.map { " lag \($0.lag)" } ?? ""
            lines.append("  \(server)  id \(status.id)  \(status.role)  term \(status.term)  commit \(status.commit)  applied \(status.applied)\(lag)  digest \(ChunkID(digest: status.stateDigest)?.hex.prefix(12) ?? "?")")
        }
        let servers = leader?.chunkservers ?? []
        lines.append("chunkservers: \(servers.count)")
        for server in servers {
            let capacity = server.capacityBytes == 0 ? "?" : "\(ByteCount.format(Int64(clamping: server.usedBytes))) used of \(ByteCount.format(Int64(clamping: server.capacityBytes))), \(server.chunks) chunks"
            lines.append("  \(server.id)  \(server.address)  \(server.state)  \(server.live ? "live" : "DOWN")  weight \(server.weight)\(server.failureDomain.isEmpty ? "" : "  domain \(server.failureDomain)")  \(capacity)\(server.badReplicasReported > 0 ? "  \(server.badReplicasReported) bad replicas reported" : "")")
        }
        return lines.joined(separator: "\n")
    }

    static func json(_ report: [(HostPort, Cairn_Meta_V1_StatusResponse?)], leader: Cairn_Meta_V1_StatusResponse?) -> String {
        var root: [String: Any] = [:]
        let leading = leader?.role == "leader" ? leader : nil
        root["leader"] = leading.map { $0.leaderAddress as Any } ?? NSNull()
        root["term"] = leading?.term ?? report.compactMap(\.1).map(\.term).max() ?? 0
        root["commit"] = leading?.commit ?? 0
        root["ringEpoch"] = leading?.ringEpoch ?? 0
        root["inodes"] = leading?.inodes ?? 0
        root["replicas"] = report.map { server, status -> [String: Any] in
            guard let status else { return ["address": server.description, "reachable": false] }
            var replica: [String: Any] = [
                "address": server.description, "reachable": true, "id": status.id, "role": status.role, "term": status.term,
                "commit": status.commit, "applied": status.applied,
                "stateDigest": ChunkID(digest: status.stateDigest)?.hex ?? "",
            ]
            if let member = leading?.members.first(where: { $0.id == status.id }) {
                replica["lag"] = member.lag
                replica["voter"] = member.voter
            }
            return replica
        }
        root["chunkservers"] = (leading?.chunkservers ?? []).map { server -> [String: Any] in
            ["id": server.id, "address": server.address, "state": server.state, "live": server.live, "weight": server.weight,
             "failureDomain": server.failureDomain, "capacityBytes": server.capacityBytes, "usedBytes": server.usedBytes,
             "chunks": server.chunks, "millisecondsSinceHeartbeat": server.millisecondsSinceHeartbeat,
             "badReplicasReported": server.badReplicasReported]
        }
        let data = (try? JSONSerialization.data(withJSONObject: root, options: [.prettyPrinted, .sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
