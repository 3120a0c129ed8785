import CairnCore
import GRPCCore
import Synchronization

/// gRPC metadata key carrying the leader's `HOST:PORT` on a not-leader error.
public let leaderMetadataKey = "cairn-leader"

extension RaftNodeError {
    /// The gRPC status a client sees: `unavailable` with the leader's address for not-leader
    /// (clients redirect), `deadlineExceeded` for an unknown outcome, `aborted` for a proposal
    /// that definitely did not commit, `resourceExhausted` for back-pressure.
    public var rpcError: RPCError {
        switch code {
        case .notLeader:
            var metadata = Metadata()
            if let leaderAddress { metadata.addString(leaderAddress.description, forKey: leaderMetadataKey) }
            return RPCError(code: .unavailable, message: "not the leader: \(self)", metadata: metadata)
        case .timedOut: return RPCError(code: .deadlineExceeded, message: "\(self)")
        case .dropped: return RPCError(code: .aborted, message: "\(self)")
        case .busy: return RPCError(code: .resourceExhausted, message: "\(self)")
        case .stopped: return RPCError(code: .unavailable, message: "\(self)")
        case .rejected: return RPCError(code: .failedPrecondition, message: "\(self)")
        }
    }
}

/// Sends calls of a Raft group's clients to the leader: follows the not-leader hints the
/// replicas put in `cairn-leader`, moves on to the next replica when one is down, and retries
/// through elections — within a bounded number of attempts.
///
/// A retried call may have been applied already (its answer was lost): callers that mutate
/// carry an idempotency key (the metadata service's session and sequence) or accept that.
public final class LeaderFollower<Client: Sendable>: Sendable {
    public let servers: [HostPort]
    private let clients: [HostPort: Client]
    private let leader: Mutex<HostPort?>
    /// Attempts per call before giving up.
    public let attemptsMax: Int
    /// Pause before the next attempt when no leader hint came back.
    public let retryPause: Duration

    public init(servers: [HostPort], clients: [HostPort: Client], attemptsMax: Int = 100, retryPause: Duration = .milliseconds(100)) {
        precondition(!servers.isEmpty && attemptsMax > 0)
        self.servers = servers
        self.clients = clients
        self.attemptsMax = attemptsMax
        self.retryPause = retryPause
        leader = Mutex(servers.first)
    }

    /// The client of one named server.
    public func client(_ server: HostPort) -> Client? { clients[server] }

    /// The replica currently believed to lead.
    public var currentLeader: HostPort? { leader.withLock { $0 } }

    /// Runs `call` against the leader, retrying on `unavailable`, `deadlineExceeded`,
    /// `aborted`, `resourceExhausted`, `cancelled` and `unknown`. Other errors are thrown at once.
    public func call<T: Sendable>(_ call: (Client) async throws -> T) async throws -> T {
        var lastError: (any Error)?
        for attempt in 0..<attemptsMax {
            try Task.checkCancellation()
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
                        if let hint, clients[hint] != nil, hint != target {
                            current = hint
                        } else {
                            let index = servers.firstIndex(of: target) ?? 0
                            current = servers[(index + 1) % servers.count]
                        }
                    }
                    if hint == nil || hint == target { try await Task.sleep(for: retryPause) }
                default:
                    throw error
                }
            }
        }
        throw lastError ?? CairnError(.unavailable, "no server of \(servers) answered")
    }
}
