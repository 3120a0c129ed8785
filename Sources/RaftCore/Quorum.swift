/// Majority arithmetic over a sorted voter list (etcd's quorum package, for a single majority configuration).
enum VoteResult: Equatable {
    case pending
    case lost
    case won
}

struct MajorityConfig: Equatable {
    /// Sorted, distinct voters.
    let voters: [NodeID]

    init(_ voters: [NodeID]) { self.voters = Array(Set(voters)).sorted() }

    var quorum: Int { voters.count / 2 + 1 }

    /// The largest index acknowledged by a quorum, given each voter's match index (missing voters count as 0).
    func committedIndex(_ match: (NodeID) -> UInt64?) -> UInt64 {
        guard !voters.isEmpty else { return UInt64.max }  // no voters: commit nothing by quorum (caller guards)
        let sorted = voters.map { match($0) ?? 0 }.sorted(by: >)
        return sorted[quorum - 1]
    }

    /// The outcome of an election, given the votes received so far (true: granted, false: rejected).
    func voteResult(_ votes: [NodeID: Bool]) -> VoteResult {
        guard !voters.isEmpty else { return .won }
        var granted = 0
        var missing = 0
        for v in voters {
            switch votes[v] {
            case true?: granted += 1
            case false?: break
            case nil: missing += 1
            }
        }
        if granted >= quorum { return .won }
        if granted + missing >= quorum { return .pending }
        return .lost
    }
}
