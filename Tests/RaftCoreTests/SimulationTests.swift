import Foundation
import RaftCore
@testable import RaftSimulation
import Testing

/// The deterministic simulator as a test: a sweep of seeds that must show no violation, proof that it is
/// deterministic, and proof that its checks fail on planted bugs. CAIRN_SIM_SEEDS enlarges the sweep.
@Suite(.serialized) struct SimulationTests {
    static var sweepSeeds: Int {
        ProcessInfo.processInfo.environment["CAIRN_SIM_SEEDS"].flatMap(Int.init) ?? 400
    }

    @Test(arguments: [3, 5])
    func sweepFindsNoViolation(nodes: Int) {
        let seeds = nodes == 3 ? Self.sweepSeeds : Self.sweepSeeds / 2
        let summary = Sweep(nodeCount: nodes, steps: 4000).run(seeds: (1...UInt64(seeds)).map { $0 })
        for failure in summary.failures {
            Issue.record("seed \(failure.seed): \(failure.violation) — replay: \(failure.replayCommand)")
        }
        #expect(summary.headline == "\(seeds) seeds, 0 violations")
        #expect(summary.unknownLinearizability == 0)
        // The faults must actually happen (code probes): otherwise a clean sweep proves nothing.
        for probe in ["crash", "crash lost unsynced writes", "partition", "leader isolated", "snapshot installed",
                      "conf change applied", "read served", "message duplicated", "log compacted",
                      "leader transfer requested", "write indeterminate", "clock drift", "read by lease"] {
            #expect((summary.coverage[probe] ?? 0) > 0, "probe \(probe) never reached")
        }
    }

    @Test func runsAreDeterministic() {
        let a = Simulation(options: SimulationOptions(seed: 77)).run()
        let b = Simulation(options: SimulationOptions(seed: 77)).run()
        #expect(a.events == b.events)
        #expect(a.virtualMicros == b.virtualMicros)
        #expect(a.coverage == b.coverage)
        #expect(a.operationsCompleted == b.operationsCompleted)
    }

    /// A candidate of an old term may still win with a vote delivered late, after a newer term
    /// committed an entry it lacks: legal Raft — leader completeness binds the leaders of later
    /// terms only, and the stale leader can neither commit nor serve (every peer is past its
    /// term). Seed 155627 does exactly this (a vote for term 12 arrives after term 13 committed
    /// index 15); the checker once reported it as a violation.
    @Test func aLeaderOfAnOlderTermNeedNotHoldANewerTermsEntries() {
        let result = Simulation(options: SimulationOptions(seed: 155_627, nodeCount: 3, steps: 4000)).run()
        #expect(result.violation == nil, "\(result.violation.map { "\($0)" } ?? "")")
        #expect((result.coverage["stale leader coexists with a newer one"] ?? 0) > 0)
    }

    /// For each planted bug, the simulator must find a violation within the CI budget of seeds.
    @Test(arguments: [
        ("unpersisted-vote", 3, 20),
        ("no-uptodate-check", 3, 200),
        ("stale-local-read", 3, 400),
        ("unbounded-lease", 3, 600),
        ("figure8-commit", 3, 2400),
    ])
    func plantedBugIsFound(name: String, nodes: Int, seedsMax: Int) throws {
        let bug = try #require(PlantedBugs(name: name))
        let summary = Sweep(nodeCount: nodes, steps: 4000, plantedBugs: bug)
            .run(seeds: (1...UInt64(seedsMax)).map { $0 }, failuresMax: 1)
        let failure = try #require(summary.failures.first, "\(name) not found in \(seedsMax) seeds")
        #expect(failure.replayCommand.contains("--plant-bug \(name)"))
        // The replay command reproduces it exactly.
        let replay = Simulation(options: SimulationOptions(seed: failure.seed, nodeCount: nodes, steps: 4000,
                                                           plantedBugs: bug)).run()
        #expect(replay.violation == failure.violation)
    }
}

@Suite struct LinearizabilityCheckerTests {
    func op(_ client: Int, _ o: KVOperation, _ call: UInt64, _ ret: UInt64?, _ out: String? = nil) -> HistoryOperation {
        HistoryOperation(client: client, operation: o, invoked: call, returned: ret, output: out)
    }

    @Test func acceptsAConcurrentHistory() {
        let h = [
            op(0, .put(key: "k", value: "a"), 0, 10),
            op(1, .put(key: "k", value: "b"), 5, 15),
            op(2, .get(key: "k"), 12, 20, "a"),  // b then a: both overlap the read's start
            op(2, .get(key: "k"), 21, 22, "a"),
        ]
        #expect(LinearizabilityChecker().check(h) == .linearizable)
    }

    @Test func rejectsAStaleRead() {
        let h = [
            op(0, .put(key: "k", value: "a"), 0, 10),
            op(1, .put(key: "k", value: "b"), 11, 15),
            op(2, .get(key: "k"), 16, 20, "a"),
        ]
        #expect(LinearizabilityChecker().check(h) == .violation(key: "k", operations: 3))
    }

    @Test func indeterminateWriteMayOrMayNotHaveHappened() {
        let happened = [
            op(0, .append(key: "k", value: "x"), 0, nil),
            op(1, .get(key: "k"), 50, 60, "x"),
        ]
        #expect(LinearizabilityChecker().check(happened) == .linearizable)
        let never = [
            op(0, .append(key: "k", value: "x"), 0, nil),
            op(1, .get(key: "k"), 50, 60, ""),
        ]
        #expect(LinearizabilityChecker().check(never) == .linearizable)
        // But it cannot take effect before it was invoked.
        let early = [
            op(1, .get(key: "k"), 0, 10, "x"),
            op(0, .append(key: "k", value: "x"), 20, nil),
        ]
        #expect(LinearizabilityChecker().check(early) == .violation(key: "k", operations: 2))
    }

    @Test func appendsComposeInOneOrder() {
        let h = [
            op(0, .append(key: "k", value: "1"), 0, 10),
            op(1, .append(key: "k", value: "2"), 0, 10),
            op(2, .get(key: "k"), 11, 12, "21"),
            op(2, .get(key: "k"), 13, 14, "12"),
        ]
        #expect(LinearizabilityChecker().check(h) == .violation(key: "k", operations: 4))
    }

    @Test func keysAreIndependent() {
        let h = [
            op(0, .put(key: "a", value: "1"), 0, 10),
            op(1, .get(key: "b"), 11, 12, ""),
            op(1, .get(key: "a"), 13, 14, "1"),
        ]
        #expect(LinearizabilityChecker().check(h) == .linearizable)
    }
}
