import CairnCore
import Foundation
import GRPCCore
import Logging
import RaftCore
import RaftRuntime

/// The `KeyValue` gRPC service of one replica.
public struct KeyValueService: Cairn_Kv_V1_KeyValue.SimpleServiceProtocol {
    let node: RaftNode<KeyValueMachine>

    public init(node: RaftNode<KeyValueMachine>) { self.node = node }

    public func put(request: Cairn_Kv_V1_PutRequest, context: ServerContext) async throws -> Cairn_Kv_V1_PutResponse {
        guard request.key.count <= KeyValueMachine.keyBytesMax, request.value.count <= KeyValueMachine.valueBytesMax else {
            throw RPCError(code: .invalidArgument, message: "key or value too large")
        }
        do {
            let (_, index) = try await node.propose(KeyValueMachine.putCommand(key: Array(request.key), value: Array(request.value)))
            var response = Cairn_Kv_V1_PutResponse()
            response.index = index
            return response
        } catch {
            throw error.rpcError
        }
    }

    public func get(request: Cairn_Kv_V1_GetRequest, context: ServerContext) async throws -> Cairn_Kv_V1_GetResponse {
        let key = Array(request.key)
        do {
            let value = try await node.read { $0.values[key] }
            var response = Cairn_Kv_V1_GetResponse()
            response.found = value != nil
            response.value = Data(value ?? [])
            return response
        } catch {
            throw error.rpcError
        }
    }

    /// Unanswered calls one pipelined connection may have at once.
    public static let pipelineInflightMax = 1024
    /// The name a pipelined connection's hello carries.
    public static let pipelineServiceName = "cairn.kv.v1.KeyValue"
    /// The largest pipelined frame: a batch of about `PipelinedCalls.messageBytesMax`, or one
    /// call or answer with the largest key and value.
    public static let pipelineFrameBytesMax = PipelinedCalls.messageBytesMax + KeyValueMachine.keyBytesMax + KeyValueMachine.valueBytesMax + 4096
    /// The largest call a client sends (larger ones fail at the client, as the server would refuse them).
    public static let pipelineCallBytesMax = KeyValueMachine.keyBytesMax + KeyValueMachine.valueBytesMax + 64

    /// Serves this replica's pipelined puts and gets on `host:port` (0: any free port), on its
    /// event loop: put it in the replica's `ServiceGroup` after the node, and its `portService`
    /// on the replica's gRPC server.
    public static func pipelineServer(node: RaftNode<KeyValueMachine>, host: String, port: Int, eventLoop: SharedEventLoop,
                                      logger: Logger) async throws -> FramedPipelineServer<Cairn_Kv_V1_PipelineRequest, Cairn_Kv_V1_PipelineResponse> {
        try await FramedPipelineServer(service: pipelineServiceName, host: host, port: port, group: eventLoop.group,
                                       inflightMax: pipelineInflightMax, frameBytesMax: pipelineFrameBytesMax, logger: logger) { call, respond in
            handle(call, node: node, respond: respond)
        }
    }

    /// One pipelined call: a put proposed to Raft, or a linearizable get; `respond` is called once.
    static func handle(_ request: Cairn_Kv_V1_PipelineCall, node: RaftNode<KeyValueMachine>,
                       respond: @escaping @Sendable (Cairn_Kv_V1_PipelineAnswer) -> Void) {
        let id = request.id
        switch request.call {
        case .put(let put):
            guard put.key.count <= KeyValueMachine.keyBytesMax, put.value.count <= KeyValueMachine.valueBytesMax else {
                return respond(.init(id: id, error: RPCError(code: .invalidArgument, message: "key or value too large")))
            }
            node.propose(KeyValueMachine.putCommand(key: Array(put.key), value: Array(put.value))) { result in
                switch result {
                case .success((_, let index)):
                    var answer = Cairn_Kv_V1_PipelineAnswer()
                    answer.id = id
                    answer.put.index = index
                    respond(answer)
                case .failure(let error):
                    respond(.init(id: id, error: error.rpcError))
                }
            }
        case .get(let get):
            let key = Array(get.key)
            node.read({ $0.values[key] }) { result in
                switch result {
                case .success(let value):
                    var answer = Cairn_Kv_V1_PipelineAnswer()
                    answer.id = id
                    answer.get.found = value != nil
                    answer.get.value = Data(value ?? [])
                    respond(answer)
                case .failure(let error):
                    respond(.init(id: id, error: error.rpcError))
                }
            }
        case nil:
            respond(.init(id: id, error: RPCError(code: .invalidArgument, message: "a pipelined call needs a put or a get")))
        }
    }

    public func status(request: Cairn_Kv_V1_StatusRequest, context: ServerContext) async throws -> Cairn_Kv_V1_StatusResponse {
        do {
            let status = try await node.status()
            // A local look at the state (not a linearizable read): replicas compare digests once quiet.
            let (digest, keys) = try await node.localRead { ($0.digest, $0.values.count) }
            var response = Cairn_Kv_V1_StatusResponse()
            response.id = status.id
            response.term = status.term
            response.leader = status.leader
            response.role = "\(status.role)"
            response.commit = status.commit
            response.applied = status.applied
            response.leaderAddress = status.leaderAddress?.description ?? ""
            response.stateDigest = Data(digest.bytes)
            response.keys = UInt64(keys)
            return response
        } catch {
            throw error.rpcError
        }
    }
}

extension KeyValueService {
    public func changeMembership(request: Cairn_Kv_V1_MembershipRequest, context: ServerContext) async throws -> Cairn_Kv_V1_MembershipResponse {
        let kind: ConfChange.Kind
        switch request.kind {
        case .addVoter: kind = .addVoter
        case .addLearner: kind = .addLearner
        case .remove: kind = .removeNode
        case .UNRECOGNIZED(let value): throw RPCError(code: .invalidArgument, message: "unknown membership change \(value)")
        }
        let members = try await node.changeMembership(kind, node: request.node, address: request.address)
        var response = Cairn_Kv_V1_MembershipResponse()
        response.voters = members.voters
        response.learners = members.learners
        return response
    }
}

extension Cairn_Kv_V1_PipelineCall: PipelinedMessage {
    public var wireBytes: Int { put.key.count + put.value.count + self.get.key.count + 16 }
}

extension Cairn_Kv_V1_PipelineAnswer: PipelinedResponseWithError {
    public var wireBytes: Int { self.get.value.count + error.message.utf8.count + 32 }
}

extension Cairn_Kv_V1_CallError: PipelinedCallError {}

extension Cairn_Kv_V1_PipelineRequest: PipelinedBatch {}
extension Cairn_Kv_V1_PipelineResponse: PipelinedBatch {}
