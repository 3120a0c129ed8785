import CairnCore
import Logging
import MetaState
import RaftCore
import RaftRuntime
import ServiceLifecycle

/// The leader's periodic duties: ends client sessions that stopped heartbeating (releasing
/// their open-but-unlinked files), and forgets chunkserver liveness when it stops leading.
public struct MetaMaintenance: Service {
    let service: MetaService
    /// How often the leader proposes `expireSessions`.
    public var sessionExpiryInterval: Duration

    public init(service: MetaService, sessionExpiryInterval: Duration = .seconds(2)) {
        self.service = service
        self.sessionExpiryInterval = sessionExpiryInterval
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.expireSessionsWhileLeading() }
    }

    private func expireSessionsWhileLeading() async {
        var wasLeader = false
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: sessionExpiryInterval)
            } catch {
                return
            }
            guard let status = try? await service.node.status() else { continue }
            let isLeader = status.role == .leader
            if wasLeader && !isLeader { service.liveness.reset() }
            wasLeader = isLeader
            guard isLeader else { continue }
            do {
                let (bytes, _) = try await service.propose(MetaCommand(now: service.clock.now(), operation: .expireSessions))
                if case .expired(let sessions, let released) = try? MetaReply(decoding: bytes), !sessions.isEmpty {
                    service.logger.info("client sessions expired", metadata: [
                        "sessions": "\(sessions)", "chunks released": "\(released.count)"])
                }
            } catch {
                service.logger.debug("session expiry not proposed", metadata: ["error": "\(error)"])
            }
        }
    }
}
