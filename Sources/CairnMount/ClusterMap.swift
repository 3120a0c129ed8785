import CairnCore
import Logging
import MetaService
import Placement
import ServiceLifecycle
import Synchronization

/// The client's picture of the chunkservers: the ring (current and previous epochs) and who
/// is live, refreshed from the metadata leader every `refreshInterval`. Placement is computed
/// from it locally (there is no per-chunk location table).
public final class ClusterMap: Service, Sendable {
    let client: MetaClient
    let replicas: Int
    public let refreshInterval: Duration
    private let view: Mutex<ClusterView>
    let logger: Logger

    /// Loads the first view.
    /// - Throws: `CairnError` when the metadata service does not answer.
    public init(client: MetaClient, replicas: Int, refreshInterval: Duration = .seconds(2), logger: Logger) async throws(CairnError) {
        self.client = client
        self.replicas = replicas
        self.refreshInterval = refreshInterval
        self.logger = logger
        view = Mutex(try await client.cluster())
    }

    public var current: ClusterView { view.withLock { $0 } }

    public func refresh() async {
        do {
            let fresh = try await client.cluster()
            let old = view.withLock { old in
                defer { old = fresh }
                return old
            }
            if old.ring.current.epoch != fresh.ring.current.epoch {
                logger.info("ring changed", metadata: ["epoch": "\(fresh.ring.current.epoch)", "servers": "\(fresh.ring.current.members.count)"])
            }
        } catch {
            logger.warning("cannot refresh the cluster map", metadata: ["error": "\(error)"])
        }
    }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: self.refreshInterval)
                await self.refresh()
            }
        }
    }

    /// Where to store a new chunk: its owners first (live ones), then the next servers clockwise
    /// (so a down owner's replica goes to the next distinct server), active servers only; and how
    /// many replicas to demand — R, never more than the live active servers.
    public func uploadPlan(_ id: ChunkID) -> (candidates: [HostPort], replicas: Int) {
        let view = current
        let active = view.ring.current.candidates(of: id).filter { $0.state == .active }
        let live = active.filter { view.live.contains($0.id) }
        let down = active.filter { !view.live.contains($0.id) }
        let candidates = (live + down).map(\.address)
        return (candidates, max(1, min(replicas, live.count)))
    }

    /// Where to look for a chunk: owners in ring order, then owners under the previous epochs
    /// (chunks not yet rebalanced), then every other server; live ones before down ones.
    public func readCandidates(_ id: ChunkID) -> [HostPort] {
        let view = current
        var order = view.ring.current.owners(of: id, replicas: replicas)
        for previous in view.ring.previous { order += previous.owners(of: id, replicas: replicas) }
        order += view.ring.current.candidates(of: id)
        var seen = Set<ChunkserverID>()
        let distinct = order.filter { seen.insert($0.id).inserted }
        let live = distinct.filter { view.live.contains($0.id) }
        let down = distinct.filter { !view.live.contains($0.id) }
        return (live + down).map(\.address)
    }
}
