import ArgumentParser
import RaftRuntime

/// `--tick-ms` and `--lease-fraction`, shared by the Raft daemons (`cairn meta`, `cairn kv`):
/// every replica of a group must run with the same values.
struct RaftTimingOptions: ParsableArguments {
    @Option(help: "Milliseconds per Raft tick (election timeout is 10 ticks). Every replica must use the same value: leader leases rely on it.")
    var tickMs: Int = 20
    @Option(help: "Lease reads: a leader answers reads without a heartbeat round for this fraction of the 9 ticks in which no other leader can be elected (the rest allows for clock drift between hosts); 0 turns them off.")
    var leaseFraction: Double = 0.8

    func validate() throws {
        guard tickMs > 0 else { throw ValidationError("--tick-ms must be positive") }
    }

    func apply(to configuration: inout RaftNodeConfiguration) {
        configuration.tickInterval = .milliseconds(tickMs)
        configuration.leaseFraction = leaseFraction
    }
}
