import RaftCore

/// Everything that defines one simulation run. The run is a pure function of these values.
public struct SimulationOptions: Sendable, Equatable {
    /// The one seed from which every random choice derives.
    public var seed: UInt64
    /// Founding voters (3 or 5); one more node starts outside the group and joins through conf changes.
    public var nodeCount: Int = 3
    /// Events processed while faults are injected; then the faults stop and liveness is checked.
    public var steps: Int = 4000
    public var plantedBugs: PlantedBugs = []
    /// Concurrent clients (each has at most one operation outstanding).
    public var clientCount: Int = 3
    /// Distinct keys the clients use (histories are checked per key).
    public var keyCount: Int = 3
    /// Virtual time after the faults stop within which a leader must be elected and every client must complete
    /// an operation.
    public var livenessMicrosMax: UInt64 = 30_000_000
    /// Virtual time between two ticks of a node.
    public var tickMicros: UInt64 = 10_000
    /// How long a client waits for an answer before giving up on an attempt.
    public var clientTimeoutMicros: UInt64 = 400_000

    public init(seed: UInt64, nodeCount: Int = 3, steps: Int = 4000, plantedBugs: PlantedBugs = []) {
        self.seed = seed
        self.nodeCount = nodeCount
        self.steps = steps
        self.plantedBugs = plantedBugs
    }

    /// The one-line command that replays this run.
    public var replayCommand: String {
        var command = "tools/simulate --seed \(seed) --nodes \(nodeCount) --steps \(steps)"
        for (name, bug) in PlantedBugs.named where plantedBugs.contains(bug) { command += " --plant-bug \(name)" }
        return command
    }
}

/// A broken safety or liveness property.
public struct Violation: Error, Sendable, Equatable, CustomStringConvertible {
    public var property: String
    public var detail: String
    /// Virtual time (µs) at which it was detected.
    public var time: UInt64

    public var description: String { "\(property) at t=\(time)µs: \(detail)" }
}

/// What one run did and found.
public struct SimulationReport: Sendable {
    public var options: SimulationOptions
    public var violation: Violation?
    public var events: Int
    public var virtualMicros: UInt64
    public var operationsCompleted: Int
    public var operationsIndeterminate: Int
    public var linearizability: LinearizabilityResult
    /// How often rare paths were reached (FoundationDB's code probes): proof that the faults do something.
    public var coverage: [String: Int]
}
