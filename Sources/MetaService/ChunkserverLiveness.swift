import CairnCore
import MetaState
import Placement
import Synchronization

/// What the leader knows of each chunkserver beyond the ring: when it last heartbeated and
/// what it reported. Kept beside the ring, not in it (DESIGN: a server down for a minute does
/// not reshuffle placement), and only in the leader's memory: a new leader learns it again
/// within one heartbeat interval.
final class ChunkserverLiveness: Sendable {
    struct Report: Sendable {
        var lastSeen: ContinuousClock.Instant
        var capacityBytes: UInt64
        var usedBytes: UInt64
        var chunks: UInt64
        var quarantined: UInt64
        var badReplicasReported: UInt64 = 0
    }

    /// What a heartbeat last registered, so that unchanged heartbeats do not touch the log.
    struct Registration: Sendable, Equatable {
        var address: String
        var weight: UInt32
        var failureDomain: String
    }

    /// A server is live while its last heartbeat is younger than this.
    let liveFor: Duration
    /// Servers tracked at most (bounded like the registry itself).
    let serversMax: Int
    private let state = Mutex<(reports: [ChunkserverID: Report], registered: [[UInt8]: (ChunkserverID, Registration)])>(([:], [:]))

    init(liveFor: Duration, serversMax: Int) {
        self.liveFor = liveFor
        self.serversMax = serversMax
    }

    /// The id a heartbeat's identity was registered under with exactly these details, if so.
    func registered(_ identity: [UInt8], _ registration: Registration) -> ChunkserverID? {
        state.withLock { state in
            guard let (id, known) = state.registered[identity], known == registration else { return nil }
            return id
        }
    }

    func record(_ identity: [UInt8], id: ChunkserverID, registration: Registration, report: Report) {
        state.withLock { state in
            if state.registered[identity] == nil, state.registered.count >= serversMax { return }
            state.registered[identity] = (id, registration)
            var report = report
            report.badReplicasReported = state.reports[id]?.badReplicasReported ?? 0
            state.reports[id] = report
        }
    }

    func countBadReplica(_ id: ChunkserverID) {
        state.withLock { $0.reports[id]?.badReplicasReported += 1 }
    }

    func report(_ id: ChunkserverID) -> Report? { state.withLock { $0.reports[id] } }

    func isLive(_ report: Report, now: ContinuousClock.Instant = .now) -> Bool { now - report.lastSeen < liveFor }

    /// The ids heard from within `liveFor`, sorted.
    func liveIDs(now: ContinuousClock.Instant = .now) -> [ChunkserverID] {
        state.withLock { $0.reports.filter { isLive($0.value, now: now) }.keys.sorted() }
    }

    /// Forgets everything (on losing leadership: a later leadership starts from fresh reports).
    func reset() { state.withLock { $0 = ([:], [:]) } }
}
