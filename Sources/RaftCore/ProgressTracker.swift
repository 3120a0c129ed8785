/// The leader's view of every member: replication progress, votes, activity. Iteration is always in node-id
/// order so that nothing depends on hashing.
struct ProgressTracker {
    private(set) var voters: MajorityConfig
    private(set) var learners: [NodeID]
    var progress: [NodeID: Progress] = [:]
    var votes: [NodeID: Bool] = [:]
    let inflightMessagesMax: Int
    let inflightBytesMax: Int

    init(inflightMessagesMax: Int, inflightBytesMax: Int) {
        voters = MajorityConfig([])
        learners = []
        self.inflightMessagesMax = inflightMessagesMax
        self.inflightBytesMax = inflightBytesMax
    }

    var confState: ConfState { ConfState(voters: voters.voters, learners: learners) }

    /// Every member, voters and learners, sorted.
    var memberIDs: [NodeID] { progress.keys.sorted() }

    /// Replaces the membership; progress of members that stay is kept, new members start probing at `nextIndex`.
    mutating func setMembership(_ conf: ConfState, nextIndex: UInt64) {
        voters = MajorityConfig(conf.voters)
        learners = conf.learners
        var newProgress: [NodeID: Progress] = [:]
        for id in conf.voters + conf.learners {
            var pr = progress[id]
                ?? Progress(next: nextIndex, inflightMessagesMax: inflightMessagesMax,
                            inflightBytesMax: inflightBytesMax, isLearner: false)
            if progress[id] == nil { pr.recentActive = true }
            pr.isLearner = conf.learners.contains(id)
            newProgress[id] = pr
        }
        progress = newProgress
    }

    func isVoter(_ id: NodeID) -> Bool { voters.voters.contains(id) }

    var isSingleton: Bool { voters.voters.count == 1 }

    func committedIndex() -> UInt64 { voters.committedIndex { progress[$0]?.match } }

    mutating func resetVotes() { votes = [:] }

    mutating func recordVote(_ id: NodeID, granted: Bool) {
        if votes[id] == nil { votes[id] = granted }
    }

    func tallyVotes() -> (granted: Int, rejected: Int, result: VoteResult) {
        var granted = 0
        var rejected = 0
        for id in voters.voters {
            if let v = votes[id] { if v { granted += 1 } else { rejected += 1 } }
        }
        return (granted, rejected, voters.voteResult(votes))
    }

    /// Whether a quorum of voters was active since the last check (`selfID` always counts as active).
    func quorumActive(selfID: NodeID) -> Bool {
        var active: [NodeID: Bool] = [:]
        for id in voters.voters { active[id] = id == selfID || (progress[id]?.recentActive ?? false) }
        return voters.voteResult(active) == .won
    }
}
