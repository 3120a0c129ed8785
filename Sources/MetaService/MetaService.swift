import CairnCore
import Foundation
import GRPCCore
import Logging
import MetaState
import Placement
import RaftCore
import RaftRuntime

/// The `Meta` gRPC service of one replica (see Protos/meta.proto).
///
/// Mutations are proposed to Raft with the leader's time stamped in; reads wait for a
/// ReadIndex and are answered from the applied state. Not-leader answers carry the leader's
/// address for the client to follow.
public struct MetaService: Cairn_Meta_V1_Meta.SimpleServiceProtocol {
    let node: RaftNode<MetaMachine>
    let limits: MetaLimits
    let liveness: ChunkserverLiveness
    let clock = CommandClock()
    let logger: Logger

    /// - Parameter chunkserverLiveFor: a chunkserver is live while its last heartbeat is this recent.
    public init(node: RaftNode<MetaMachine>, limits: MetaLimits = MetaLimits(), chunkserverLiveFor: Duration = .seconds(10),
                logger: Logger) {
        self.node = node
        self.limits = limits
        self.logger = logger
        liveness = ChunkserverLiveness(liveFor: chunkserverLiveFor, serversMax: limits.chunkserversMax)
    }

    // MARK: Namespace

    public func execute(request: Cairn_Meta_V1_ExecuteRequest, context: ServerContext) async throws -> Cairn_Meta_V1_ExecuteResponse {
        let executed = try await withCheckedContinuation { continuation in
            execute(request.command) { continuation.resume(returning: $0) }
        }.get()
        var response = Cairn_Meta_V1_ExecuteResponse()
        response.reply = Data(executed.reply)
        response.index = executed.index
        response.directories = executed.directories
        return response
    }

    /// Unanswered operations one pipelined connection may have at once.
    public static let streamInflightMax = 1024
    /// The name a pipelined connection's hello carries.
    public static let pipelineServiceName = "cairn.meta.v1.Meta"
    /// The largest pipelined frame: the largest reply (`MetaClient.replyBytesMax`) or a batch
    /// of about `PipelinedCalls.messageBytesMax`, with room to spare.
    public static let pipelineFrameBytesMax = MetaClient.replyBytesMax + PipelinedCalls.messageBytesMax
    /// The largest call a client sends: one that fits a frame (the service refuses commands past
    /// `MetaLimits.commandBytesMax` itself, with invalid argument, as the unary Execute does).
    public static let pipelineCallBytesMax = pipelineFrameBytesMax - (64 << 10)

    /// Serves this replica's pipelined operations on `host:port` (0: any free port), on its
    /// event loop: put it in the replica's `ServiceGroup` after the node, and its `portService`
    /// on the replica's gRPC server.
    public func pipelineServer(host: String, port: Int, eventLoop: SharedEventLoop) async throws
        -> FramedPipelineServer<Cairn_Meta_V1_ExecuteStreamRequest, Cairn_Meta_V1_ExecuteStreamResponse> {
        try await FramedPipelineServer(service: Self.pipelineServiceName, host: host, port: port, group: eventLoop.group,
                                       inflightMax: Self.streamInflightMax, frameBytesMax: Self.pipelineFrameBytesMax,
                                       logger: logger) { call, respond in
            let id = call.id
            execute(call.command) { result in
                switch result {
                case .success(let executed):
                    var answer = Cairn_Meta_V1_ExecuteAnswer()
                    answer.id = id
                    answer.reply = Data(executed.reply)
                    answer.index = executed.index
                    answer.directories = executed.directories
                    respond(answer)
                case .failure(let error):
                    respond(.init(id: id, error: error))
                }
            }
        }
    }

    /// What one namespace operation answered: the encoded reply, the log index (0 for a read),
    /// and for a mutation the attributes of the directories it changed, right after it.
    struct Executed: Sendable {
        var reply: [UInt8]
        var index: UInt64
        var directories: [Data] = []
    }

    /// One namespace operation, encoded: a mutation is proposed with the leader's time stamped
    /// in, a read waits for a ReadIndex. `completion` runs once, on the Raft thread or here.
    func execute(_ encoded: Data, completion: @escaping @Sendable (Result<Executed, RPCError>) -> Void) {
        guard encoded.count <= limits.commandBytesMax else {
            return completion(.failure(RPCError(code: .invalidArgument,
                                                message: "command of \(encoded.count) bytes exceeds \(limits.commandBytesMax)")))
        }
        var command: MetaCommand
        do {
            command = try MetaCommand(decoding: Array(encoded))
        } catch {
            return completion(.failure(RPCError(code: .invalidArgument, message: "malformed command: \(error)")))
        }
        if command.operation.isMutation {
            command.now = clock.now()
            let directories = command.operation.changedDirectories
            node.propose(command.encoded(), afterApply: { machine, reply, index in
                // On the Raft thread, right after this command: the directories as it left them.
                Executed(reply: reply, index: index, directories: directories.compactMap { inode in
                    guard case .success(let attributes) = machine.state.namespace.getattr(inode) else { return nil }
                    return Data(MetaReply.attributes(attributes).encoded())
                })
            }) { completion($0.mapError(\.rpcError)) }
        } else {
            let frozen = command
            node.read({ $0.read(frozen).encoded() }) { completion($0.map { Executed(reply: $0, index: 0) }.mapError(\.rpcError)) }
        }
    }

    /// Proposes a command and returns its encoded reply and log index.
    func propose(_ command: MetaCommand) async throws(RPCError) -> ([UInt8], UInt64) {
        do {
            return try await node.propose(command.encoded())
        } catch {
            throw error.rpcError
        }
    }

    /// Reads a reply linearizably.
    func read(_ operation: MetaOperation) async throws(RPCError) -> MetaReply {
        let command = MetaCommand(now: .zero, operation: operation)
        do {
            return try await node.read { $0.read(command) }
        } catch {
            throw error.rpcError
        }
    }

    // MARK: Group

    public func status(request: Cairn_Meta_V1_StatusRequest, context: ServerContext) async throws -> Cairn_Meta_V1_StatusResponse {
        do {
            let status = try await node.status()
            // A local look (not linearizable): replicas compare digests once quiet.
            let (digest, statistics, sessions, ringReply) = try await node.localRead { machine in
                (machine.state.digest, machine.state.namespace.statistics(), machine.state.namespace.sessionIDs.count,
                 machine.read(MetaCommand(now: .zero, operation: .ring)))
            }
            var response = Cairn_Meta_V1_StatusResponse()
            response.id = status.id
            response.role = status.role.name
            response.term = status.term
            response.leader = status.leader
            response.leaderAddress = status.leaderAddress?.description ?? ""
            response.commit = status.commit
            response.applied = status.applied
            response.lastIndex = status.lastIndex
            for id in (status.voters + status.learners).sorted() {
                var member = Cairn_Meta_V1_Member()
                member.id = id
                member.address = status.addresses[id]?.description ?? ""
                member.voter = status.voters.contains(id)
                if let match = status.match[id] { member.lag = status.lastIndex - min(match, status.lastIndex) }
                response.members.append(member)
            }
            response.stateDigest = Data(digest.bytes)
            response.inodes = statistics.inodesUsed
            response.sessions = UInt64(sessions)
            if case .ring(let ring) = ringReply {
                response.ringEpoch = ring.current.epoch
                let isLeader = status.role == .leader
                let now = ContinuousClock.now
                for member in ring.current.members {
                    var server = Cairn_Meta_V1_Chunkserver()
                    server.id = member.id.rawValue
                    server.address = member.address.description
                    server.weight = member.weight
                    server.failureDomain = member.failureDomain
                    server.state = "\(member.state)"
                    if isLeader, let report = liveness.report(member.id) {
                        server.live = liveness.isLive(report, now: now)
                        server.capacityBytes = report.capacityBytes
                        server.usedBytes = report.usedBytes
                        server.chunks = report.chunks
                        server.millisecondsSinceHeartbeat = UInt64((now - report.lastSeen).wholeNanoseconds / 1_000_000)
                        server.badReplicasReported = report.badReplicasReported
                    }
                    response.chunkservers.append(server)
                }
            }
            return response
        } catch {
            throw error.rpcError
        }
    }

    public func changeMembership(request: Cairn_Meta_V1_MembershipRequest, context: ServerContext) async throws -> Cairn_Meta_V1_MembershipResponse {
        let kind: ConfChange.Kind
        switch request.kind {
        case .addVoter: kind = .addVoter
        case .addLearner: kind = .addLearner
        case .remove: kind = .removeNode
        case .UNRECOGNIZED(let value): throw RPCError(code: .invalidArgument, message: "unknown membership change \(value)")
        }
        let members = try await node.changeMembership(kind, node: request.node, address: request.address)
        var response = Cairn_Meta_V1_MembershipResponse()
        response.voters = members.voters
        response.learners = members.learners
        return response
    }

    // MARK: Chunkservers

    /// Largest identity token a chunkserver may present.
    public static let chunkserverIdentityBytesMax = 64

    public func chunkserverHeartbeat(request: Cairn_Meta_V1_ChunkserverHeartbeatRequest, context: ServerContext) async throws -> Cairn_Meta_V1_ChunkserverHeartbeatResponse {
        let identity = Array(request.identity)
        guard (1...Self.chunkserverIdentityBytesMax).contains(identity.count) else {
            throw RPCError(code: .invalidArgument, message: "chunkserver identity must be 1...\(Self.chunkserverIdentityBytesMax) bytes")
        }
        guard HostPort(request.address) != nil else { throw RPCError(code: .invalidArgument, message: "bad chunkserver address '\(request.address)'") }
        try await requireLeader()
        let registration = ChunkserverLiveness.Registration(address: request.address, weight: request.weight, failureDomain: request.failureDomain)
        var response = Cairn_Meta_V1_ChunkserverHeartbeatResponse()
        let id: ChunkserverID
        if let known = liveness.registered(identity, registration) {
            id = known
        } else {
            let command = MetaCommand(now: clock.now(), operation: .registerChunkserver(
                identity: identity, address: request.address, weight: request.weight, failureDomain: request.failureDomain))
            let (bytes, _) = try await propose(command)
            switch try? MetaReply(decoding: bytes) {
            case .chunkserver(let registered, _):
                id = registered
                logger.info("chunkserver registered", metadata: ["id": "\(registered)", "address": "\(request.address)"])
            case .failure(let error):
                throw RPCError(code: .failedPrecondition, message: "chunkserver at \(request.address) refused: \(error)")
            default:
                throw RPCError(code: .internalError, message: "unexpected reply to a chunkserver registration")
            }
        }
        liveness.record(identity, id: id, registration: registration, report: .init(
            lastSeen: .now, capacityBytes: request.capacityBytes, usedBytes: request.usedBytes, chunks: request.chunks,
            quarantined: request.quarantined))
        response.id = id.rawValue
        if case .ring(let ring) = try await appliedRing() { response.ringEpoch = ring.current.epoch }
        return response
    }

    public func cluster(request: Cairn_Meta_V1_ClusterRequest, context: ServerContext) async throws -> Cairn_Meta_V1_ClusterResponse {
        try await requireLeader()
        let reply = try await read(.ring)
        var response = Cairn_Meta_V1_ClusterResponse()
        response.ring = Data(reply.encoded())
        let live = liveness.liveIDs()
        response.live = live.map(\.rawValue)
        for id in live {
            guard let report = liveness.report(id) else { continue }
            response.capacityBytes &+= report.capacityBytes
            response.usedBytes &+= report.usedBytes
        }
        return response
    }

    public func reportBadReplica(request: Cairn_Meta_V1_BadReplicaRequest, context: ServerContext) async throws -> Cairn_Meta_V1_BadReplicaResponse {
        guard let chunk = ChunkID(digest: request.chunk) else { throw RPCError(code: .invalidArgument, message: "chunk must be a 32-byte SHA-256") }
        try await requireLeader()
        if case .ring(let ring) = try await appliedRing(),
           let member = ring.current.members.first(where: { $0.address.description == request.server }) {
            liveness.countBadReplica(member.id)
        }
        logger.warning("bad replica reported", metadata: [
            "chunk": "\(chunk.hex)", "server": "\(request.server)", "reason": "\(request.reason.prefix(200))"])
        return Cairn_Meta_V1_BadReplicaResponse()
    }

    /// The ring as this replica has applied it, without a ReadIndex round: for what is only
    /// informational (the epoch a heartbeat is told, the id behind a reported address), so that
    /// every chunkserver heartbeat does not cost a quorum round trip.
    func appliedRing() async throws(RPCError) -> MetaReply {
        let command = MetaCommand(now: .zero, operation: .ring)
        do {
            return try await node.localRead { $0.read(command) }
        } catch {
            throw error.rpcError
        }
    }

    /// Throws the not-leader error (with the leader's address) unless this replica leads:
    /// chunkserver liveness lives in the leader's memory only.
    func requireLeader() async throws(RPCError) {
        let status: RaftNodeStatus
        do { status = try await node.status() } catch { throw error.rpcError }
        guard status.role == .leader else {
            throw RaftNodeError(.notLeader, "replica \(status.id) is not the leader", leader: status.leader,
                                leaderAddress: status.leaderAddress).rpcError
        }
    }
}

extension RaftRole {
    /// The role as `cairn status` shows it: leader, follower, candidate, precandidate.
    var name: String {
        switch self {
        case .leader: "leader"
        case .follower: "follower"
        case .candidate: "candidate"
        case .preCandidate: "precandidate"
        }
    }
}

extension Cairn_Meta_V1_ExecuteCall: PipelinedMessage {
    public var wireBytes: Int { command.count + 16 }
}

extension Cairn_Meta_V1_ExecuteAnswer: PipelinedResponseWithError {
    public var wireBytes: Int { reply.count + directories.reduce(0) { $0 + $1.count + 8 } + error.message.utf8.count + 32 }
}

extension Cairn_Meta_V1_CallError: PipelinedCallError {}

extension Cairn_Meta_V1_ExecuteStreamRequest: PipelinedBatch {}
extension Cairn_Meta_V1_ExecuteStreamResponse: PipelinedBatch {}
