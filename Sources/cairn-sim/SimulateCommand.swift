import ArgumentParser
#if canImport(Glibc)
@preconcurrency import Glibc
#endif
import RaftCore
import RaftSimulation

/// `cairn-sim`: runs the deterministic Raft simulator over a range of seeds (or one seed, to replay a failure).
@main
struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cairn-sim",
        abstract: "Deterministic simulation of a Raft group under faults; prints failing seeds with replay commands.")

    @Option(help: "Number of seeds to run.")
    var seeds: Int = 100

    @Option(help: "First seed of the sweep.")
    var firstSeed: UInt64 = 1

    @Option(help: "Run exactly this seed (replay).")
    var seed: UInt64?

    @Option(help: "Founding voters: 3 or 5.")
    var nodes: Int = 3

    @Option(help: "Events per seed while faults are injected.")
    var steps: Int = 4000

    @Option(help: "Plant a known bug to show the simulator finds it: \(PlantedBugs.named.map(\.name).joined(separator: ", ")).")
    var plantBug: [String] = []

    @Flag(help: "Print one line per seed.")
    var verbose = false

    @Flag(help: "With --seed: print every event and the state of every node after it.")
    var trace = false

    func validate() throws {
        guard nodes == 3 || nodes == 5 else { throw ValidationError("--nodes must be 3 or 5") }
        guard seeds > 0 else { throw ValidationError("--seeds must be positive") }
        guard steps > 0 else { throw ValidationError("--steps must be positive") }
        for name in plantBug where PlantedBugs(name: name) == nil {
            throw ValidationError("unknown bug \(name); known: \(PlantedBugs.named.map(\.name).joined(separator: ", "))")
        }
    }

    func run() throws {
        #if canImport(Glibc)
        // Progress lines must reach a log file as they happen, not when the buffer fills.
        setvbuf(stdout, nil, _IOLBF, 0)
        #endif
        var bugs: PlantedBugs = []
        for name in plantBug { bugs.insert(PlantedBugs(name: name)!) }
        let range: [UInt64] = seed.map { [$0] } ?? (0..<UInt64(seeds)).map { firstSeed &+ $0 }
        let total = range.count
        let sweep = Sweep(nodeCount: nodes, steps: steps, plantedBugs: bugs)
        if trace, let seed {
            let simulation = Simulation(options: SimulationOptions(seed: seed, nodeCount: nodes, steps: steps, plantedBugs: bugs))
            simulation.trace = { print($0) }
            let report = simulation.run()
            print(report.violation.map { "VIOLATION \($0)" } ?? "ok")
            if report.violation != nil { throw ExitCode(1) }
            return
        }
        var done = 0
        let progressEvery = max(1, total / 20)
        let summary = sweep.run(seeds: range) { report in
            done += 1
            if let v = report.violation {
                print("seed \(report.options.seed): VIOLATION \(v)")
                print("  replay: \(report.options.replayCommand)")
            } else if verbose || total == 1 {
                print("seed \(report.options.seed): ok, \(report.events) events, \(report.virtualMicros / 1000) ms virtual, "
                    + "\(report.operationsCompleted) ops completed, \(report.operationsIndeterminate) indeterminate")
            }
            if done % progressEvery == 0 && total > 1 { print("progress: \(done)/\(total) seeds") }
        }
        if total == 1 || verbose {
            let probes = summary.coverage.keys.sorted().map { "\($0)=\(summary.coverage[$0]!)" }.joined(separator: ", ")
            print("coverage: \(probes)")
        }
        if summary.unknownLinearizability > 0 {
            print("note: \(summary.unknownLinearizability) histories exceeded the linearizability search bound")
        }
        print(summary.headline)
        if !summary.failures.isEmpty {
            print("failing seeds:")
            for f in summary.failures { print("  \(f.seed): \(f.violation.property) — \(f.replayCommand)") }
            throw ExitCode(1)
        }
    }
}
