import CairnCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MetaState
import Placement
import RaftRuntime

/// A client of the metadata service: sends each call to the leader (following not-leader
/// hints, retrying through elections within `LeaderFollower`'s bounds) and decodes replies.
///
/// Mutations are only safe to retry inside a `MetaSession`, whose `(session, sequence)` makes
/// the state machine apply each at most once.
public final class MetaClient: Sendable {
    typealias Stub = Cairn_Meta_V1_Meta.Client<HTTP2ClientTransport.Posix>
    /// One replica: its stub, and the pipelined connection that namespace operations travel on.
    struct Endpoint: Sendable {
        let stub: Stub
        let stream: PipelinedClient<Cairn_Meta_V1_ExecuteCall, Cairn_Meta_V1_ExecuteAnswer>
    }

    public let servers: [HostPort]
    let leader: LeaderFollower<Endpoint>
    /// Namespace operations waiting for their answers at once, per replica.
    public static let inflightMax = 1024
    /// Largest reply accepted (a readdir page or extent list stays far below it).
    public static let replyBytesMax = 16 << 20
    /// Deadline of one attempt of one call.
    public let callTimeout: Duration
    /// The thread of this client's connections: a task that runs there and calls this client
    /// saves a thread hand-off each way (the mount runs its metadata requests there).
    public let executor: any TaskExecutor

    private init(servers: [HostPort], endpoints: [HostPort: Endpoint], attemptsMax: Int, callTimeout: Duration, executor: any TaskExecutor) {
        self.servers = servers
        self.executor = executor
        self.callTimeout = callTimeout
        leader = LeaderFollower(servers: servers, clients: endpoints, attemptsMax: attemptsMax)
    }

    /// Connects to every replica for the duration of `body`.
    /// - Parameter attemptsMax: attempts per call (100 ms apart when no leader is known).
    public static func with<T: Sendable>(servers: [HostPort], attemptsMax: Int = 300, callTimeout: Duration = .seconds(10),
                                         _ body: (MetaClient) async throws -> T) async throws -> T {
        precondition(!servers.isEmpty)
        // The connections and the tasks that write and read their streams share one thread.
        return try await SharedEventLoop.with { eventLoop in
            try await with(servers: servers, eventLoop: eventLoop, attemptsMax: attemptsMax, callTimeout: callTimeout, body)
        }
    }

    private static func with<T: Sendable>(servers: [HostPort], eventLoop: SharedEventLoop, attemptsMax: Int, callTimeout: Duration,
                                          _ body: (MetaClient) async throws -> T) async throws -> T {
        var grpcClients: [HostPort: GRPCClient<HTTP2ClientTransport.Posix>] = [:]
        for server in servers where grpcClients[server] == nil {
            grpcClients[server] = GRPCClient(transport: try .http2NIOPosix(
                target: .ipv4(address: server.host, port: server.port), transportSecurity: .plaintext,
                config: .defaults {
                    $0.http2.targetWindowSize = 8 << 20
                    $0.connection.flushCoalescing = nil
                    // A replica that stops answering (hung, partitioned) ends the stream.
                    $0.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: false)
                },
                serviceConfig: ServiceConfig(), eventLoopGroup: eventLoop.group))
        }
        let endpoints = Dictionary(uniqueKeysWithValues: grpcClients.map { server, client in
            // Each stream asks the replica where its pipeline port is (it may have restarted since).
            let stream = PipelinedClient<Cairn_Meta_V1_ExecuteCall, Cairn_Meta_V1_ExecuteAnswer>(
                inflightMax: inflightMax, callTimeout: callTimeout, callBytesMax: MetaService.pipelineCallBytesMax, executor: eventLoop.executor
            ) { requests, received in
                try await FramedPipeline.open(service: MetaService.pipelineServiceName, at: server, portsVia: client, group: eventLoop.group,
                                              frameBytesMax: MetaService.pipelineFrameBytesMax, requests: requests, received: received,
                                              as: (Cairn_Meta_V1_ExecuteStreamRequest.self, Cairn_Meta_V1_ExecuteStreamResponse.self))
            }
            return (server, Endpoint(stub: Stub(wrapping: client), stream: stream))
        })
        let frozen = grpcClients
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for client in frozen.values { group.addTask(executorPreference: eventLoop.executor) { try await client.runConnections() } }
            defer {
                for endpoint in endpoints.values { endpoint.stream.close() }
                for client in frozen.values { client.beginGracefulShutdown() }
            }
            return try await body(MetaClient(servers: servers, endpoints: endpoints, attemptsMax: attemptsMax, callTimeout: callTimeout,
                                        executor: eventLoop.executor))
        }
    }

    var callOptions: CallOptions {
        var options = CallOptions.defaults
        options.timeout = callTimeout
        options.maxResponseMessageBytes = Self.replyBytesMax
        return options
    }

    /// Executes one command on the leader and returns its reply. Namespace errors are
    /// `.failure(errno)` replies, not throws.
    ///
    /// - Throws: `CairnError` `.unavailable` when no leader answered within the attempts,
    ///   `.invalidArgument` when the service refused the request, `.protocolViolation` for an
    ///   undecodable reply.
    public func execute(_ command: MetaCommand) async throws(CairnError) -> MetaReply {
        try await executeReportingDirectories(command).reply
    }

    /// `execute`, plus for a mutation that adds or removes directory entries the attributes of
    /// the directories it changed, as they stood right after it (see `MetaOperation.changedDirectories`).
    public func executeReportingDirectories(_ command: MetaCommand) async throws(CairnError) -> (reply: MetaReply, directories: [Attributes]) {
        var request = Cairn_Meta_V1_ExecuteCall()
        request.command = Data(command.encoded())
        let response = try await call { try await $0.stream.call(request) }
        do {
            let reply = try MetaReply(decoding: Array(response.reply))
            let directories = try response.directories.map { (bytes) throws -> Attributes in
                guard case .attributes(let attributes) = try MetaReply(decoding: Array(bytes)) else {
                    throw CairnError(.protocolViolation, "a directory's attributes were not attributes")
                }
                return attributes
            }
            return (reply, directories)
        } catch {
            throw CairnError(.protocolViolation, "undecodable reply from the metadata service", cause: error)
        }
    }

    /// Runs a read-only operation (linearizable) as `credentials`.
    public func read(_ operation: MetaOperation, as credentials: Credentials = .root) async throws(CairnError) -> MetaReply {
        precondition(!operation.isMutation, "mutations go through a MetaSession")
        return try await execute(MetaCommand(credentials: credentials, now: .zero, operation: operation))
    }

    /// The ring (current and previous epochs), the live chunkservers and their capacity.
    public func cluster() async throws(CairnError) -> ClusterView {
        let response = try await call { try await $0.stub.cluster(Cairn_Meta_V1_ClusterRequest(), options: callOptions) }
        guard case .ring(let ring)? = try? MetaReply(decoding: Array(response.ring)) else {
            throw CairnError(.protocolViolation, "the metadata service sent no ring")
        }
        return ClusterView(ring: ring, live: Set(response.live.map({ ChunkserverID($0) })),
                           capacityBytes: response.capacityBytes, usedBytes: response.usedBytes)
    }

    /// A chunkserver's heartbeat (registers it on first contact or when its details change).
    public func heartbeat(_ request: Cairn_Meta_V1_ChunkserverHeartbeatRequest) async throws(CairnError) -> Cairn_Meta_V1_ChunkserverHeartbeatResponse {
        try await call { try await $0.stub.chunkserverHeartbeat(request, options: callOptions) }
    }

    /// Tells the leader a replica was found missing or corrupt.
    public func reportBadReplica(chunk: ChunkID, server: HostPort, reason: String) async throws(CairnError) {
        var request = Cairn_Meta_V1_BadReplicaRequest()
        request.chunk = Data(chunk.bytes)
        request.server = server.description
        request.reason = String(reason.prefix(1000))
        _ = try await call { try await $0.stub.reportBadReplica(request, options: callOptions) }
    }

    /// Adds a replica (learner or voter) or removes one, through the leader.
    public func changeMembership(_ kind: Cairn_Meta_V1_MembershipRequest.Kind, node: UInt64, address: HostPort?) async throws(CairnError) -> Cairn_Meta_V1_MembershipResponse {
        var request = Cairn_Meta_V1_MembershipRequest()
        request.kind = kind
        request.node = node
        request.address = address?.description ?? ""
        return try await call { try await $0.stub.changeMembership(request, options: callOptions) }
    }

    /// One replica's own status (not redirected); `nil` if it does not answer in time.
    public func status(of server: HostPort, timeout: Duration = .seconds(3)) async -> Cairn_Meta_V1_StatusResponse? {
        guard let endpoint = leader.client(server) else { return nil }
        var options = callOptions
        options.timeout = timeout
        return try? await endpoint.stub.status(Cairn_Meta_V1_StatusRequest(), options: options)
    }

    private func call<T: Sendable>(_ body: (Endpoint) async throws -> T) async throws(CairnError) -> T {
        do {
            return try await leader.call(body)
        } catch let error as CairnError {
            throw error
        } catch let error as RPCError {
            let code: CairnError.Code = switch error.code {
            case .invalidArgument, .outOfRange: .invalidArgument
            case .failedPrecondition, .permissionDenied: .invalidArgument
            case .resourceExhausted: .busy
            case .internalError, .dataLoss: .internal
            default: .unavailable
            }
            throw CairnError(code, "metadata service (\(servers.map(\.description).joined(separator: ","))): \(error.message)", cause: error)
        } catch {
            throw CairnError(.unavailable, "metadata service call failed", cause: error)
        }
    }
}

/// What a client needs to place and find chunks.
public struct ClusterView: Sendable, Equatable {
    public var ring: RingState
    public var live: Set<ChunkserverID>
    public var capacityBytes: UInt64
    public var usedBytes: UInt64
}

extension MetaClient {
    /// The replica this client currently sends calls to (the last known leader).
    public var leaderAddress: HostPort? { leader.currentLeader }
}
