import CairnCore
import Foundation
import GRPCCore
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
