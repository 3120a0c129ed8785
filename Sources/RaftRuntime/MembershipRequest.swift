import CairnCore
import GRPCCore
import RaftCore

extension RaftNode {
    /// A membership change as a replica's gRPC service receives it: checks the request (a real
    /// node id; an address for an addition), proposes the change, and returns the members after it.
    ///
    /// - Throws: `RPCError` — `invalidArgument` for a bad request, otherwise the node error's
    ///   `rpcError` (not-leader with the leader's address, timed out, …).
    public func changeMembership(_ kind: ConfChange.Kind, node id: NodeID, address text: String) async throws(RPCError)
        -> (voters: [NodeID], learners: [NodeID]) {
        guard id != 0 else { throw RPCError(code: .invalidArgument, message: "replica id 0 is not a valid id") }
        let address = text.isEmpty ? nil : HostPort(text)
        if kind != .removeNode && address == nil {
            throw RPCError(code: .invalidArgument, message: "adding a replica needs its HOST:PORT")
        }
        do {
            try await changeMembership(kind, node: id, address: address)
            let status = try await status()
            return (status.voters, status.learners)
        } catch {
            throw error.rpcError
        }
    }
}
