import RaftCore

/// Runs many seeds and collects the failures, each with the command that replays it.
public struct Sweep {
    public struct Failure: Sendable {
        public var seed: UInt64
        public var violation: Violation
        public var replayCommand: String
    }

    public struct Summary: Sendable {
        public var seeds: Int
        public var failures: [Failure]
        public var unknownLinearizability: Int
        public var coverage: [String: Int]
        public var events: Int

        /// Exactly "`N` seeds, 0 violations" when all passed.
        public var headline: String { "\(seeds) seeds, \(failures.count) violations" }
    }

    public var nodeCount: Int
    public var steps: Int
    public var plantedBugs: PlantedBugs

    public init(nodeCount: Int = 3, steps: Int = 4000, plantedBugs: PlantedBugs = []) {
        self.nodeCount = nodeCount
        self.steps = steps
        self.plantedBugs = plantedBugs
    }

    /// Runs `seeds`, calling `progress` after each; stops early after `failuresMax` failures.
    public func run(seeds: some Sequence<UInt64>, failuresMax: Int = Int.max,
                    progress: (SimulationReport) -> Void = { _ in }) -> Summary {
        var summary = Summary(seeds: 0, failures: [], unknownLinearizability: 0, coverage: [:], events: 0)
        for seed in seeds {
            let options = SimulationOptions(seed: seed, nodeCount: nodeCount, steps: steps, plantedBugs: plantedBugs)
            let report = Simulation(options: options).run()
            summary.seeds += 1
            summary.events += report.events
            for (k, v) in report.coverage { summary.coverage[k, default: 0] += v }
            if case .unknown = report.linearizability { summary.unknownLinearizability += 1 }
            if let v = report.violation {
                summary.failures.append(Failure(seed: seed, violation: v, replayCommand: options.replayCommand))
            }
            progress(report)
            if summary.failures.count >= failuresMax { break }
        }
        return summary
    }
}
