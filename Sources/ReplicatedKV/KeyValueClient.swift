import CairnCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// A client of a replicated key-value group: finds the leader (following not-leader hints)
/// and retries through elections, within a bounded number of attempts.
public final class KeyValueClient: Sendable {
    public let servers: [HostPort]
    private let clients: [HostPort: Cairn_Kv_V1_KeyValue.Client<HTTP2ClientTransport.Posix>]
    private let leader: Mutex<HostPort?>
    /// Attempts per request before giving up (each after a short pause if no leader is known).
    public static let attemptsMax = 60
    public static let retryPause: Duration = .milliseconds(100)

    private init(servers: [HostPort], clients: [HostPort: Cairn_Kv_V1_KeyValue.Client<HTTP2ClientTransport.Posix>]) {
        self.servers = servers
        self.clients = clients
        leader = Mutex(servers.first)
    }

    /// Connects to every server for the duration of `body`.
    public static func with<T: Sendable>(servers: [HostPort], _ body: (KeyValueClient) async throws -> T) async throws -> T {
        var grpcClients: [HostPort: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
        for server in servers {
            grpcClients[server] = GRPCClient(transport: try .http2NIOPosix(
                target: .ipv4(address: server.host, port: server.port), transportSecurity: .plaintext))
        }
        let clients = grpcClients.mapValues { Cairn_Kv_V1_KeyValue.Client(wrapping: $0) }
        let frozen = grpcClients
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for client in frozen.values { group.addTask { try await client.runConnections() } }
            defer { for client in frozen.values { client.beginGracefulShutdown() } }
            return try await body(KeyValueClient(servers: servers, clients: clients))
        }
    }

    /// Writes `value` under `key`; returns the log index it was applied at.
    public func put(_ key: [UInt8], _ value: [UInt8]) async throws -> UInt64 {
        var request = Cairn_Kv_V1_PutRequest()
        request.key = Data(key)
        request.value = Data(value)
        return try await withLeader { try await $0.put(request).index }
    }

    /// Reads `key` linearizably.
    public func get(_ key: [UInt8]) async throws -> [UInt8]? {
        var request = Cairn_Kv_V1_GetRequest()
        request.key = Data(key)
        let response = try await withLeader { try await $0.get(request) }
        return response.found ? Array(response.value) : nil
    }

    /// Adds a voter or learner, or removes a member, through the leader.
    public func changeMembership(_ kind: Cairn_Kv_V1_MembershipRequest.Kind, node: UInt64, address: HostPort?) async throws -> Cairn_Kv_V1_MembershipResponse {
        var request = Cairn_Kv_V1_MembershipRequest()
        request.kind = kind
        request.node = node
        request.address = address?.description ?? ""
        return try await withLeader { try await $0.changeMembership(request) }
    }

    /// One server's own status.
    public func status(of server: HostPort) async throws -> Cairn_Kv_V1_StatusResponse {
        guard let client = clients[server] else { throw CairnError(.invalidArgument, "\(server) is not one of the servers") }
        var options = CallOptions.defaults
        options.timeout = .seconds(5)
        return try await client.status(Cairn_Kv_V1_StatusRequest(), options: options)
    }

    private func withLeader<T: Sendable>(_ call: (Cairn_Kv_V1_KeyValue.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        var lastError: (any Error)?
        for attempt in 0..<Self.attemptsMax {
            let target = leader.withLock { $0 } ?? servers[attempt % servers.count]
            guard let client = clients[target] else { break }
            do {
                return try await call(client)
            } catch let error as RPCError {
                lastError = error
                switch error.code {
                case .unavailable, .deadlineExceeded, .aborted, .resourceExhausted, .cancelled, .unknown:
                    let hint = error.metadata[stringValues: leaderMetadataKey].first(where: { _ in true }).flatMap { HostPort($0) }
                    leader.withLock { current in
                        if let hint, clients[hint] != nil {
                            current = hint
                        } else {
                            let index = servers.firstIndex(of: target) ?? 0
                            current = servers[(index + 1) % servers.count]
                        }
                    }
                    if hint == nil { try await Task.sleep(for: Self.retryPause) }
                default:
                    throw error
                }
            }
        }
        throw lastError ?? CairnError(.unavailable, "no server answered")
    }
}
