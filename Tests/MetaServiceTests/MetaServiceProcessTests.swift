import CairnCore
import CairnTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MetaService
import MetaState
import Synchronization
import Testing

/// Helpers shared by the process tests.
extension MetaClient {
    /// The id of the replica that says it leads, if any.
    func leaderID(_ cluster: LocalCluster) async -> Int? {
        for (id, _) in cluster.replicas {
            if let status = await status(of: cluster.metaAddress(id), timeout: .seconds(1)), status.role == "leader" { return id }
        }
        return nil
    }

    /// Waits until every running replica has applied the same index and holds the same state.
    func converged(_ cluster: LocalCluster, timeout: Duration = .seconds(30)) async -> Bool {
        await eventually(timeout: timeout) {
            var digests: Set<Data> = []
            var applied: Set<UInt64> = []
            for id in cluster.replicas.keys {
                guard let status = await self.status(of: cluster.metaAddress(id)) else { return false }
                digests.insert(status.stateDigest)
                applied.insert(status.applied)
            }
            return digests.count == 1 && applied.count == 1
        }
    }
}

let root = Credentials.root
let rootInode: InodeNumber = 1

func name(_ text: String) -> [UInt8] { Array(text.utf8) }

/// The names in a directory, read page by page.
func listing(_ session: MetaSession, _ directory: InodeNumber) async throws -> [String] {
    var names: [String] = []
    var cookie: UInt64 = 0
    while true {
        guard case .page(let page) = try await session.perform(.readdir(directory, after: cookie, count: 500), as: root) else {
            Issue.record("readdir failed")
            return names
        }
        for entry in page.entries where entry.name != name(".") && entry.name != name("..") {
            names.append(String(decoding: entry.name, as: UTF8.self))
        }
        guard let last = page.entries.last, !page.end else { return names.sorted() }
        cookie = last.cookie
    }
}

/// What one writer had acknowledged.
final class Acknowledged: Sendable {
    let steps = Mutex<[Int: Set<Int>]>([:])
    let anomalies = Mutex<[String]>([])
    let attempted = Mutex<[Int: Int]>([:])
    let stop = Atomic<Bool>(false)
    func ack(_ writer: Int, _ step: Int) { _ = steps.withLock { $0[writer, default: []].insert(step) } }
    func anomaly(_ text: String) { anomalies.withLock { $0.append(text) } }
}

@Suite(.serialized) struct MetaServiceProcessTests {
    /// Writers run mkdir, create and rename (each retried through elections by the client,
    /// deduplicated by session and sequence) while the leader is killed and restarted three
    /// times. Afterwards every acknowledged step is in the namespace exactly as acknowledged,
    /// no step is half done, and the replicas' state digests are equal.
    @Test func killingTheLeaderRepeatedlyLosesNoAcknowledgedOperationAndAppliesNoneTwice() async throws {
        let cluster = try LocalCluster(replicas: 3)
        try await cluster.startFounders()
        let acked = Acknowledged()
        let writers = 3
        try await MetaClient.with(servers: cluster.metaServers) { client in
            let session = try await MetaSession.open(client, ttl: .seconds(120))
            var directories: [InodeNumber] = []
            for w in 0..<writers {
                guard case .attributes(let a) = try await session.perform(.mkdir(parent: rootInode, name: name("w\(w)"), mode: 0o755), as: root) else {
                    Issue.record("mkdir w\(w) failed")
                    return
                }
                directories.append(a.inode)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<writers {
                    let directory = directories[w]
                    group.addTask {
                        var step = 0
                        while !acked.stop.load(ordering: .relaxed) {
                            acked.attempted.withLock { $0[w] = step }
                            do {
                                // One step: mkdir d<step>, create f<step>, close it, rename it to r<step>.
                                let made = try await session.perform(.mkdir(parent: directory, name: name("d\(step)"), mode: 0o755), as: root)
                                guard case .attributes = made else { acked.anomaly("w\(w) mkdir d\(step): \(made)"); break }
                                let created = try await session.perform(
                                    .create(parent: directory, name: name("f\(step)"), flags: [.write, .create, .exclusive], mode: 0o644), as: root)
                                guard case .opened(let opened, _) = created else { acked.anomaly("w\(w) create f\(step): \(created)"); break }
                                let closed = try await session.perform(.close(opened.handle), as: root)
                                guard case .released = closed else { acked.anomaly("w\(w) close f\(step): \(closed)"); break }
                                let renamed = try await session.perform(
                                    .rename(oldParent: directory, oldName: name("f\(step)"), newParent: directory, newName: name("r\(step)"), flags: []), as: root)
                                guard case .released = renamed else { acked.anomaly("w\(w) rename f\(step): \(renamed)"); break }
                                acked.ack(w, step)
                            } catch {
                                // The client gave up (no leader for too long): the step's outcome is unknown.
                                acked.anomaly("w\(w) step \(step) gave up: \(error)")
                                break
                            }
                            step += 1
                        }
                    }
                }
                for round in 0..<3 {
                    let before = acked.steps.withLock { $0.values.map(\.count).reduce(0, +) }
                    #expect(await eventually(timeout: .seconds(30)) { acked.steps.withLock { $0.values.map(\.count).reduce(0, +) } >= before + 15 },
                            "round \(round): no progress")
                    var leader: Int?
                    _ = await eventually(timeout: .seconds(20)) {
                        leader = await client.leaderID(cluster)
                        return leader != nil
                    }
                    guard let leader else { Issue.record("no leader"); break }
                    await cluster.killReplica(leader)
                    let during = acked.steps.withLock { $0.values.map(\.count).reduce(0, +) }
                    #expect(await eventually(timeout: .seconds(30)) { acked.steps.withLock { $0.values.map(\.count).reduce(0, +) } >= during + 10 },
                            "round \(round): no progress without the old leader")
                    try await cluster.startReplica(leader)
                }
                acked.stop.store(true, ordering: .relaxed)
                try await group.waitForAll()
            }
            #expect(acked.anomalies.withLock { $0 } == [])
            let steps = acked.steps.withLock { $0 }
            let last = acked.attempted.withLock { $0 }
            #expect(steps.values.map(\.count).reduce(0, +) > 60)
            for w in 0..<writers {
                let names = Set(try await listing(session, directories[w]))
                let done = steps[w] ?? []
                for step in done {
                    #expect(names.contains("d\(step)") && names.contains("r\(step)") && !names.contains("f\(step)"), "w\(w) step \(step): \(names.sorted())")
                }
                // Only the last step may be unacknowledged, and nothing beyond it exists.
                let expected = Set(done.flatMap { ["d\($0)", "r\($0)"] })
                let extra = names.subtracting(expected)
                let lastStep = last[w] ?? 0
                #expect(extra.isSubset(of: ["d\(lastStep)", "f\(lastStep)", "r\(lastStep)"]), "w\(w): unexpected \(extra.sorted())")
            }
            #expect(await client.converged(cluster), "replicas hold different states")
            await session.close()
        }
    }

    @Test func restartingEveryReplicaAtOnceKeepsTheNamespace() async throws {
        let cluster = try LocalCluster(replicas: 3)
        try await cluster.startFounders()
        var expected: [String] = []
        try await MetaClient.with(servers: cluster.metaServers) { client in
            let session = try await MetaSession.open(client)
            // More entries than --snapshot-entries: recovery goes through a snapshot and the log.
            for i in 0..<250 {
                let reply = try await session.perform(.mkdir(parent: rootInode, name: name("dir\(i)"), mode: 0o700), as: root)
                guard case .attributes = reply else { Issue.record("mkdir \(i): \(reply)"); return }
                expected.append("dir\(i)")
            }
        }
        for id in 1...3 { await cluster.killReplica(id, signal: SIGKILL) }
        try await cluster.startFounders()
        try await MetaClient.with(servers: cluster.metaServers) { client in
            let session = try await MetaSession.open(client)
            #expect(try await listing(session, rootInode) == expected.sorted())
            guard case .attributes = try await session.perform(.mkdir(parent: rootInode, name: name("after"), mode: 0o700), as: root) else {
                Issue.record("mkdir after restart failed")
                return
            }
            #expect(await client.converged(cluster))
        }
        for id in 1...3 {
            let stderr = cluster.replicas[id]?.stderr ?? ""
            #expect(await cluster.killReplica(id, signal: SIGTERM) == 0, "stderr: \(stderr)")
        }
    }
}
