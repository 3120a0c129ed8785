import RaftCore

/// One node of the simulated cluster: the Raft core, its storages, its state machine, and the client requests it
/// is serving. Everything in memory is lost on a crash; `disk.durable` survives.
final class SimulatedNode {
    let id: NodeID
    var up = true
    /// Bumped on every restart so that events scheduled for an earlier life are ignored.
    var incarnation = 0
    var raw: RawNode
    var storage: MemoryStorage
    var disk: SimulatedDisk
    var store = KeyValueStore()
    /// Index of the last entry applied to `store`.
    var appliedIndex: UInt64 = 0
    /// A Ready whose writes wait for fsync; messages and applies wait with it.
    var awaitingSync: Ready?
    /// Writes proposed here, by (client, sequence), to answer when applied.
    var pendingWrites: [ClientKey: ClientRequest] = [:]
    /// Reads waiting for their ReadState, then for the state machine to reach it; in arrival order.
    var pendingReads: [PendingRead] = []

    struct ClientKey: Hashable {
        var client: Int
        var sequence: Int
    }

    struct PendingRead {
        var context: [UInt8]
        var request: ClientRequest
        var readIndex: UInt64?
    }

    init(id: NodeID, disk: SimulatedDisk, config: Config) {
        self.id = id
        self.disk = disk
        storage = disk.durable.makeStorage()
        do { raw = try RawNode(config: config, storage: storage) } catch {
            preconditionFailure("simulation config invalid: \(error)")
        }
        restoreStateMachine()
    }

    /// Rebuilds everything volatile from the durable disk (a restart).
    func restart(config: Config) {
        incarnation += 1
        up = true
        storage = disk.durable.makeStorage()
        var cfg = config
        cfg.applied = disk.durable.snapshot.metadata.index
        do { raw = try RawNode(config: cfg, storage: storage) } catch {
            preconditionFailure("simulation config invalid: \(error)")
        }
        awaitingSync = nil
        pendingWrites = [:]
        pendingReads = []
        restoreStateMachine()
    }

    private func restoreStateMachine() {
        let snapshot = disk.durable.snapshot
        guard let restored = KeyValueStore(decoding: snapshot.data) else {
            preconditionFailure("undecodable snapshot on node \(id)")
        }
        store = restored
        appliedIndex = snapshot.metadata.index
    }
}

/// A client request as it travels to a node.
struct ClientRequest {
    var client: Int
    var sequence: Int
    var attempt: Int
    var operation: KVOperation
}

/// A node's answer.
struct ClientReply {
    enum Result {
        case ok(String?)
        case notLeader(NodeID)
    }

    var client: Int
    var sequence: Int
    var attempt: Int
    var result: Result
}
