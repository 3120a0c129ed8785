import ArgumentParser
import CCairnLinux
import CairnCore
import ChunkProtocol
import NIOCore
import Foundation
import ReplicatedKV
import Synchronization

/// `cairn-bench`: the measuring half of `tools/bench` (the script runs the reference tools
/// — `openssl speed`, `dd` — in the same run and prints the ratios).
@main
struct CairnBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cairn-bench",
        abstract: "Cairn micro-benchmarks; see tools/bench.",
        subcommands: [SHA256Bench.self, ChunkBench.self, RaftBench.self, MetaBench.self, MetaMemoryBench.self]
    )

    /// The client side of a benchmark moves chunk-sized buffers as `cairn` does: same malloc settings.
    static func main() async {
        _ = cairn_malloc_keep_large_buffers()
        await main(nil)
    }
}

/// Median of a list of measurements.
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
}

struct SHA256Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sha256", abstract: "SHA-256 throughput through CairnCore.SHA256 (MB/s, median of runs).")

    @Option(help: "Buffer size in bytes.") var bytes: Int = 4 << 20
    @Option(help: "Seconds per run.") var seconds: Double = 2
    @Option(help: "Runs.") var runs: Int = 5

    func run() {
        let buffer = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761) }
        let hasher = SHA256()
        let clock = ContinuousClock()
        var rates: [Double] = []
        for _ in 0..<runs {
            let start = clock.now
            var hashed = 0
            while clock.now - start < .milliseconds(Int64(seconds * 1000)) {
                buffer.withUnsafeBytes { hasher.update($0) }
                _ = hasher.finalize()
                hashed += bytes
            }
            let elapsed = clock.now - start
            rates.append(Double(hashed) / 1e6 / (Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds)))
        }
        print("sha256 \(bytes) bytes: median \(Int(median(rates))) MB/s (runs: \(rates.map { Int($0) }))")
    }
}

struct ChunkBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chunks", abstract: "Put then get distinct chunks on one chunkserver (MB/s).")

    @Option(help: "Chunkserver data port.") var server: String
    @Option(help: "Concurrent streams (one connection each).") var streams: Int = 1
    @Option(help: "Chunk size in bytes.") var chunkBytes: Int = 4 << 20
    @Option(help: "Chunks per run.") var chunks: Int = 128
    @Option(help: "Seed that makes this run's chunks distinct from other runs'.") var seed: UInt64 = 1
    @Option(help: "Requests in flight per stream (pipelined on its connection); 1 waits for each answer before sending the next.")
    var pipeline: Int = 1
    @Flag(help: "Only get: the chunks of this --seed are already stored (an earlier run put them); for profiling the read path.")
    var getOnly = false

    func validate() throws {
        guard HostPort(server) != nil else { throw ValidationError("--server must be HOST:PORT") }
        guard streams > 0, chunks > 0, chunkBytes > 0, pipeline > 0 else { throw ValidationError("counts must be positive") }
    }

    func run() async throws {
        // Distinct chunks made before timing: each differs in its first 16 bytes.
        var base = (0..<chunkBytes).map { UInt8(truncatingIfNeeded: $0 &* 40_503 &+ Int(seed)) }
        var pool: [(ChunkID, ByteBuffer)] = []
        for i in 0..<chunks {
            withUnsafeBytes(of: (seed, UInt64(i))) { raw in for (k, b) in raw.enumerated() { base[k] = b } }
            pool.append((SHA256.hash(base), ByteBuffer(bytes: base)))
        }
        let address = HostPort(server)!
        let clients = try await (0..<streams).asyncMap { _ in
            try await ChunkClient.connect(to: address, requestsInflightMax: max(pipeline, ChunkClient.requestsInflightMaxDefault))
        }
        let work = pool
        let clock = ContinuousClock()

        let putStart = clock.now
        if !getOnly { try await withThrowingTaskGroup(of: Void.self) { group in
            for s in 0..<streams {
                group.addTask {
                    try await self.pipelined(Array(stride(from: s, to: work.count, by: self.streams))) { i in
                        let alreadyThere = try await clients[s].put(work[i].0, bytes: work[i].1)
                        precondition(!alreadyThere, "benchmark chunks must be new: use a fresh --seed")
                    }
                }
            }
            try await group.waitForAll()
        } }
        let putSeconds = (clock.now - putStart).seconds

        let getStart = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for s in 0..<streams {
                group.addTask {
                    try await self.pipelined(Array(stride(from: s, to: work.count, by: self.streams))) { i in
                        let bytes = try await clients[s].get(work[i].0)
                        precondition(bytes.readableBytes == self.chunkBytes)
                    }
                }
            }
            try await group.waitForAll()
        }
        let getSeconds = (clock.now - getStart).seconds
        for client in clients { await client.close() }
        let megabytes = Double(chunks * chunkBytes) / 1e6
        let put = getOnly ? "-" : "\(Int(megabytes / putSeconds))"
        print("chunks streams=\(streams) pipeline=\(pipeline) put \(put) MB/s get \(Int(megabytes / getSeconds)) MB/s")
    }
}

extension ChunkBench {
    /// Runs `operation` on each index in order, with at most `pipeline` of them in flight.
    func pipelined(_ indices: [Int], _ operation: @escaping @Sendable (Int) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            var inflight = 0
            for i in indices {
                if inflight == pipeline {
                    try await group.next()
                    inflight -= 1
                }
                group.addTask { try await operation(i) }
                inflight += 1
            }
            try await group.waitForAll()
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}

struct RaftBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "raft", abstract: "Replicated puts through `cairn kv` replicas: throughput and latency.")

    @Option(help: "Replicas, HOST:PORT,…") var servers: String
    @Option(help: "Concurrent proposers.") var proposers: Int = 1
    @Option(help: "Seconds to run.") var seconds: Double = 5
    @Option(help: "Value size in bytes.") var valueBytes: Int = 256
    @Flag(help: "Linearizable gets (ReadIndex, no fsync) of one key instead of puts: the read path's latency.")
    var reads = false

    func run() async throws {
        let list = servers.split(separator: ",").compactMap { HostPort(String($0)) }
        let value = [UInt8](repeating: 0x5A, count: valueBytes)
        let clock = ContinuousClock()
        let proposers = self.proposers
        let duration = Duration.milliseconds(Int64(seconds * 1000))
        let reads = self.reads
        let latencies = try await KeyValueClient.with(servers: list) { client in
            // Warm up: find the leader.
            _ = try await client.put(Array("warmup".utf8), value)
            let start = clock.now
            return try await withThrowingTaskGroup(of: [Double].self) { group in
                for p in 0..<proposers {
                    // On the client's thread, as the mount runs its metadata requests.
                    group.addTask(executorPreference: client.executor) {
                        var samples: [Double] = []
                        var i = 0
                        while clock.now - start < duration {
                            let t0 = clock.now
                            if reads {
                                let read = try await client.get(Array("warmup".utf8))
                                precondition(read == value, "the warm-up key must read back")
                            } else {
                                _ = try await client.put(Array("p\(p)-\(i)".utf8), value)
                            }
                            samples.append((clock.now - t0).seconds * 1000)
                            i += 1
                        }
                        return samples
                    }
                }
                var all: [Double] = []
                for try await samples in group { all += samples }
                return all
            }
        }
        let sorted = latencies.sorted()
        func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        let rate = Double(sorted.count) / seconds
        print(String(format: "raft proposers=%d \(reads ? "gets" : "puts")/s %.0f p50 %.3f ms p99 %.3f ms (n=%d)", proposers, rate, percentile(0.5), percentile(0.99), sorted.count))
    }
}
