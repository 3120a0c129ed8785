/// How the leader replicates to one follower (etcd's tracker.Progress).
struct Progress: Equatable {
    enum State: UInt8, Equatable, CustomStringConvertible {
        /// Unknown follower log: one append at a time, waiting for the answer before the next (probe).
        case probe
        /// Follower known to match up to `match`: appends are pipelined, bounded by `inflights`.
        case replicate
        /// Follower needs a snapshot: appends stop while snapshot chunks flow.
        case snapshot

        var description: String {
            switch self {
            case .probe: "StateProbe"
            case .replicate: "StateReplicate"
            case .snapshot: "StateSnapshot"
            }
        }
    }

    var match: UInt64 = 0
    var next: UInt64
    var state: State = .probe
    /// In snapshot state: the index of the snapshot being sent.
    var pendingSnapshot: UInt64 = 0
    /// In snapshot state: snapshot bytes the follower has acknowledged so far.
    var snapshotOffsetAcked: UInt64 = 0
    /// Heard from since the last check-quorum round.
    var recentActive: Bool = false
    /// In probe state: an append was sent and not answered yet (so send no more).
    var probeSent: Bool = false
    var inflights: Inflights
    var isLearner: Bool

    init(next: UInt64, inflightMessagesMax: Int, inflightBytesMax: Int, isLearner: Bool) {
        self.next = next
        self.inflights = Inflights(messagesMax: inflightMessagesMax, bytesMax: inflightBytesMax)
        self.isLearner = isLearner
    }

    private mutating func resetState(_ newState: State) {
        probeSent = false
        pendingSnapshot = 0
        snapshotOffsetAcked = 0
        state = newState
        inflights.reset()
    }

    mutating func becomeProbe() {
        // Coming back from a snapshot: resume after it (or after match, whichever is further).
        if state == .snapshot {
            let pending = pendingSnapshot
            resetState(.probe)
            next = max(match + 1, pending + 1)
        } else {
            resetState(.probe)
            next = match + 1
        }
    }

    mutating func becomeReplicate() {
        resetState(.replicate)
        next = match + 1
    }

    mutating func becomeSnapshot(index: UInt64) {
        resetState(.snapshot)
        pendingSnapshot = index
    }

    /// Whether the leader should hold back appends to this follower (flow control).
    var isPaused: Bool {
        switch state {
        case .probe: probeSent
        case .replicate: inflights.isFull
        case .snapshot: true
        }
    }

    /// Records an append of `count` entries (`bytes` in total) ending at `lastIndex`.
    mutating func sentEntries(count: Int, bytes: Int, lastIndex: UInt64) {
        switch state {
        case .replicate:
            if count > 0 {
                next = lastIndex + 1
                inflights.add(index: lastIndex, bytes: bytes)
            }
        case .probe:
            probeSent = true
        case .snapshot:
            preconditionFailure("sending entries in snapshot state")
        }
    }

    /// An acknowledgement up to `index`: returns false if it was stale.
    mutating func maybeUpdate(_ index: UInt64) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            probeSent = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// A rejection of the append at `rejected`; `matchHint` is where the follower suggests to resume.
    /// Returns false if the rejection is stale.
    mutating func maybeDecrease(rejected: UInt64, matchHint: UInt64) -> Bool {
        if state == .replicate {
            // Stale unless it rejects something after what we know matches.
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        // Probe: only the answer to the probe we sent (next - 1) counts.
        if next - 1 != rejected { return false }
        next = max(min(rejected, matchHint + 1), match + 1)
        probeSent = false
        return true
    }
}
