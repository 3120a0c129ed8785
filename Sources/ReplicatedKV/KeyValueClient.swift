import CairnCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import RaftRuntime

/// A client of a replicated key-value group: finds the leader (following not-leader hints)
/// and retries through elections, within a bounded number of attempts.
public final class KeyValueClient: Sendable {
    typealias Stub = Cairn_Kv_V1_KeyValue.Client<HTTP2ClientTransport.Posix>
    /// One server: its stub, and the pipelined stream that puts and gets travel on.
    struct Endpoint: Sendable {
        let stub: Stub
        let pipeline: PipelinedClient<Cairn_Kv_V1_PipelineCall, Cairn_Kv_V1_PipelineAnswer>
    }

    public let servers: [HostPort]
    /// The executor of the thread the connections run on: a caller that runs its requests here (a task
    /// with this executor preference) saves a thread hand-off each way.
    public let executor: any TaskExecutor
    private let leader: LeaderFollower<Endpoint>
    /// Puts and gets waiting for their answers at once, per server.
    public static let inflightMax = 1024

    private init(servers: [HostPort], endpoints: [HostPort: Endpoint], executor: any TaskExecutor) {
        self.servers = servers
        self.executor = executor
        leader = LeaderFollower(servers: servers, clients: endpoints, attemptsMax: 60)
    }

    /// Connects to every server for the duration of `body`.
    public static func with<T: Sendable>(servers: [HostPort], _ body: (KeyValueClient) async throws -> T) async throws -> T {
        // The connections and the tasks that write and read their streams share one thread.
        try await SharedEventLoop.with { eventLoop in try await with(servers: servers, eventLoop: eventLoop, body) }
    }

    private static func with<T: Sendable>(servers: [HostPort], eventLoop: SharedEventLoop,
                                          _ body: (KeyValueClient) async throws -> T) async throws -> T {
        var grpcClients: [HostPort: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
        for server in servers {
            grpcClients[server] = GRPCClient(transport: try .http2NIOPosix(
                target: .ipv4(address: server.host, port: server.port), transportSecurity: .plaintext,
                config: .defaults { $0.connection.flushCoalescing = nil }, eventLoopGroup: eventLoop.group))
        }
        let endpoints = Dictionary(uniqueKeysWithValues: grpcClients.map { server, client in
            let stub = Stub(wrapping: client)
            // Each stream asks the server where its pipeline port is (it may have restarted since).
            let pipeline = PipelinedClient<Cairn_Kv_V1_PipelineCall, Cairn_Kv_V1_PipelineAnswer>(
                inflightMax: inflightMax, callTimeout: .seconds(10), callBytesMax: KeyValueService.pipelineCallBytesMax, executor: eventLoop.executor
            ) { requests, received in
                try await FramedPipeline.open(service: KeyValueService.pipelineServiceName, at: server, portsVia: client, group: eventLoop.group,
                                              frameBytesMax: KeyValueService.pipelineFrameBytesMax, requests: requests, received: received,
                                              as: (Cairn_Kv_V1_PipelineRequest.self, Cairn_Kv_V1_PipelineResponse.self))
            }
            return (server, Endpoint(stub: stub, pipeline: pipeline))
        })
        let frozen = grpcClients
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for client in frozen.values { group.addTask(executorPreference: eventLoop.executor) { try await client.runConnections() } }
            defer {
                for endpoint in endpoints.values { endpoint.pipeline.close() }
                for client in frozen.values { client.beginGracefulShutdown() }
            }
            return try await body(KeyValueClient(servers: servers, endpoints: endpoints, executor: eventLoop.executor))
        }
    }

    /// Writes `value` under `key`; returns the log index it was applied at.
    public func put(_ key: [UInt8], _ value: [UInt8]) async throws -> UInt64 {
        var request = Cairn_Kv_V1_PipelineCall()
        request.put.key = Data(key)
        request.put.value = Data(value)
        return try await leader.call { try await $0.pipeline.call(request).put.index }
    }

    /// Reads `key` linearizably.
    public func get(_ key: [UInt8]) async throws -> [UInt8]? {
        var request = Cairn_Kv_V1_PipelineCall()
        request.get.key = Data(key)
        let response = try await leader.call { try await $0.pipeline.call(request).get }
        return response.found ? Array(response.value) : nil
    }

    /// Adds a voter or learner, or removes a member, through the leader.
    public func changeMembership(_ kind: Cairn_Kv_V1_MembershipRequest.Kind, node: UInt64, address: HostPort?) async throws -> Cairn_Kv_V1_MembershipResponse {
        var request = Cairn_Kv_V1_MembershipRequest()
        request.kind = kind
        request.node = node
        request.address = address?.description ?? ""
        return try await leader.call { try await $0.stub.changeMembership(request) }
    }

    /// One server's own status.
    public func status(of server: HostPort) async throws -> Cairn_Kv_V1_StatusResponse {
        guard let endpoint = leader.client(server) else { throw CairnError(.invalidArgument, "\(server) is not one of the servers") }
        var options = CallOptions.defaults
        options.timeout = .seconds(5)
        return try await endpoint.stub.status(Cairn_Kv_V1_StatusRequest(), options: options)
    }
}
