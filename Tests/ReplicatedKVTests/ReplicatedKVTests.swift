import CairnCore
import CairnTestSupport
import GRPCCore
import GRPCNIOTransportHTTP2
import RaftRuntime
import ReplicatedKV
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct KeyValueMachineTests {
    @Test func snapshotRestoreRoundTrip() throws {
        let machine = KeyValueMachine()
        var rng = SplitMix(seed: 1)
        for i in 0..<200 {
            let key = testBytes(count: Int(rng.next() % 20), seed: UInt64(i))
            _ = machine.apply(KeyValueMachine.putCommand(key: key, value: testBytes(count: Int(rng.next() % 100), seed: rng.next())), at: UInt64(i + 1))
        }
        let copy = KeyValueMachine()
        try copy.restore(machine.snapshot())
        #expect(copy.values == machine.values)
        #expect(copy.digest == machine.digest)
    }

    @Test func malformedCommandsAreAnsweredNotApplied() throws {
        let machine = KeyValueMachine()
        for bad in [[], [1], [2, 0, 0, 0, 0], [1, 255, 255, 0, 0, 1]] as [[UInt8]] {
            #expect(machine.apply(bad, at: 1).first == 0xFF)
        }
        #expect(machine.values.isEmpty)
        #expect(throws: CairnError.self) { try machine.restore([1, 0, 0, 0]) }
    }
}

/// Three real `cairn kv serve` processes on loopback.
final class KVCluster: @unchecked Sendable {
    let logs = TestDirectory("kvlogs")
    let data = TestDirectory("kvdata")
    let ports: [Int]
    var daemons: [Int: DaemonProcess] = [:]
    var generation = 0

    init(size: Int = 3) throws {
        ports = try freeLoopbackPorts(size)
    }

    /// The founding members' peer list (ids 1…3).
    var peers: String { peerList(1...3) }
    func peerList(_ ids: ClosedRange<Int>) -> String { ids.map { "\($0)=127.0.0.1:\(ports[$0 - 1])" }.joined(separator: ",") }
    var servers: [HostPort] { ports.map { HostPort(host: "127.0.0.1", port: $0) } }
    func address(_ id: Int) -> HostPort { HostPort(host: "127.0.0.1", port: ports[id - 1]) }

    /// Starts replica `id`: a founding member (bootstrap on first start) or, with `joining`, an
    /// empty replica that waits to be added.
    func start(_ id: Int, joining: Bool = false, raftPort: Int? = nil) async throws {
        generation += 1
        var arguments = ["kv", "serve", "--id", "\(id)", "--data", data.path.appending("n\(id)").string, "--listen", "127.0.0.1:\(ports[id - 1])",
                         "--snapshot-entries", "100", "--entries-behind-snapshot", "10"]
        if let raftPort { arguments += ["--raft-port", "\(raftPort)"] }
        arguments += joining ? ["--peers", peerList(1...ports.count)] : ["--peers", peers, "--bootstrap"]
        let daemon = try DaemonProcess(arguments, logDirectory: logs.path, name: "n\(id)-\(generation)")
        _ = try await daemon.waitForAddress()
        daemons[id] = daemon
    }

    func startAll() async throws {
        for id in 1...3 { try await start(id) }
    }

    func kill(_ id: Int, signal: Int32 = SIGKILL) async {
        await daemons[id]?.stop(signal: signal)
        daemons[id] = nil
    }

    func leader(_ client: KeyValueClient) async -> Int? {
        for (i, server) in servers.enumerated() where daemons[i + 1] != nil {
            if let status = try? await client.status(of: server), status.role.contains("Leader") { return i + 1 }
        }
        return nil
    }

    deinit {
        for daemon in daemons.values { Glibc.kill(daemon.pid, SIGKILL) }
    }
}

final class StopFlag: Sendable {
    let value = Mutex(false)
}

final class AckedWrites: Sendable {
    let values = Mutex<[String: String]>([:])
}

@Suite(.serialized) struct ReplicatedKVProcessTests {
    @Test func killingTheLeaderRepeatedlyLosesNoAcknowledgedWrite() async throws {
        let cluster = try KVCluster()
        try await cluster.startAll()
        let acked = AckedWrites()
        try await KeyValueClient.with(servers: cluster.servers) { client in
            try await withThrowingTaskGroup(of: Void.self) { group in
                let stop = StopFlag()
                for writer in 0..<4 {
                    group.addTask {
                        var i = 0
                        while !stop.value.withLock({ $0 }) {
                            let key = "w\(writer)-\(i)"
                            let value = "v\(i)-\(writer)"
                            if (try? await client.put(Array(key.utf8), Array(value.utf8))) != nil {
                                acked.values.withLock { $0[key] = value }
                            }
                            i += 1
                        }
                    }
                }
                // Kill whoever leads, twice, restarting it each time; wait for progress between
                // kills (a loaded machine is slow, not wrong).
                for _ in 0..<2 {
                    let before = acked.values.withLock { $0.count }
                    #expect(await eventually(timeout: .seconds(30)) { acked.values.withLock { $0.count } >= before + 20 })
                    var leader: Int?
                    _ = await eventually(timeout: .seconds(20)) {
                        leader = await cluster.leader(client)
                        return leader != nil
                    }
                    guard let leader else {
                        Issue.record("no leader")
                        break
                    }
                    await cluster.kill(leader)
                    let during = acked.values.withLock { $0.count }
                    // The survivors elect a new leader and writes go on without the dead one.
                    #expect(await eventually(timeout: .seconds(30)) { acked.values.withLock { $0.count } >= during + 10 })
                    try await cluster.start(leader)
                }
                try await Task.sleep(for: .milliseconds(500))
                stop.value.withLock { $0 = true }
                try await group.waitForAll()
            }
            let written = acked.values.withLock { $0 }
            #expect(written.count > 50)
            for (key, value) in written.sorted(by: { $0.key < $1.key }) {
                let read = try await client.get(Array(key.utf8))
                #expect(read == Array(value.utf8), "\(key)")
            }
            // Every replica converges on the same state.
            let converged = await eventually(timeout: .seconds(20)) {
                var digests: Set<[UInt8]> = []
                var applied: Set<UInt64> = []
                for server in cluster.servers {
                    guard let status = try? await client.status(of: server) else { return false }
                    digests.insert(Array(status.stateDigest))
                    applied.insert(status.applied)
                }
                return digests.count == 1 && applied.count == 1
            }
            #expect(converged)
        }
    }

    @Test func garbageOnTheRaftOrPipelinePortClosesThatConnectionAndNothingElse() async throws {
        let cluster = try KVCluster()
        // Node 1's Raft port is fixed (as behind a firewall), the others pick free ones.
        let fixedRaftPort = try freeLoopbackPorts(1)[0]
        try await cluster.start(1, raftPort: fixedRaftPort)
        try await cluster.start(2)
        try await cluster.start(3)
        let target = cluster.address(1)
        // Where node 1 takes Raft traffic; asking it as if it were another node is refused.
        let port = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: target.host, port: target.port),
                                                                      transportSecurity: .plaintext)) { client in
            let peer = Cairn_Raft_V1_RaftPeer.Client(wrapping: client)
            var wrong = Cairn_Raft_V1_EndpointRequest()
            wrong.from = 2
            wrong.to = 3
            await #expect(throws: RPCError.self) { _ = try await peer.endpoint(wrong) }
            var request = Cairn_Raft_V1_EndpointRequest()
            request.from = 2
            request.to = 1
            return Int(try await peer.endpoint(request).port)
        }
        #expect(port == fixedRaftPort)
        func hello(to: UInt64) -> [UInt8] {
            var bytes: [UInt8] = [0x43, 0x52, 0x46, 0x54, 1]
            for value in [UInt64(2), to] { bytes += withUnsafeBytes(of: value.bigEndian) { Array($0) } }
            return bytes
        }
        let attacks: [(String, [UInt8])] = [
            ("random bytes", testBytes(count: 64, seed: 7)),
            ("a hello for another node", hello(to: 9)),
            ("an oversized frame", hello(to: 1) + [0xFF, 0xFF, 0xFF, 0xFF] + testBytes(count: 32, seed: 8)),
            ("an undecodable message", hello(to: 1) + [0, 0, 0, 12] + testBytes(count: 12, seed: 9)),
        ]
        // The control: a proper hello alone is kept open.
        #expect(try !closedAfterSending(hello(to: 1), to: port))
        for (name, bytes) in attacks {
            #expect(try closedAfterSending(bytes, to: port), "\(name): the connection stayed open")
        }
        try await KeyValueClient.with(servers: cluster.servers) { client in
            // The same for node 1's pipeline port (clients' puts and gets), told by its PipelinePorts service.
            let pipelinePort = try await withGRPCClient(transport: .http2NIOPosix(target: .ipv4(address: target.host, port: target.port),
                                                                                 transportSecurity: .plaintext)) { grpc in
                let ports = Cairn_Raft_V1_PipelinePorts.Client(wrapping: grpc)
                var unknown = Cairn_Raft_V1_PipelinePortRequest()
                unknown.service = "cairn.meta.v1.Meta"
                await #expect(throws: RPCError.self) { _ = try await ports.port(unknown) }
                var request = Cairn_Raft_V1_PipelinePortRequest()
                request.service = KeyValueService.pipelineServiceName
                return Int(try await ports.port(request).port)
            }
            #expect(pipelinePort > 0 && pipelinePort != port)
            let hello = pipelineHello(KeyValueService.pipelineServiceName)
            #expect(try !closedAfterSending(hello, to: pipelinePort))
            for (name, bytes) in [("random bytes", testBytes(count: 64, seed: 10)),
                                  ("an oversized frame", hello + [0xFF, 0xFF, 0xFF, 0xFF] + testBytes(count: 32, seed: 11)),
                                  ("an undecodable request", hello + lengthPrefixed([0xFF, 0xFF, 0xFF]))] {
                #expect(try closedAfterSending(bytes, to: pipelinePort), "pipeline port, \(name): the connection stayed open")
            }
            // The group is unaffected: writes commit and read back.
            for i in 0..<20 { _ = try await client.put(Array("k\(i)".utf8), Array("v\(i)".utf8)) }
            #expect(try await client.get(Array("k19".utf8)) == Array("v19".utf8))
        }
    }

    @Test func restartingEveryReplicaAtOnceKeepsTheState() async throws {
        let cluster = try KVCluster()
        try await cluster.startAll()
        try await KeyValueClient.with(servers: cluster.servers) { client in
            // More than --snapshot-entries writes, so recovery goes through a snapshot and the WAL.
            for i in 0..<300 { _ = try await client.put(Array("k\(i)".utf8), Array("v\(i)".utf8)) }
        }
        for id in 1...3 { await cluster.kill(id, signal: SIGKILL) }
        try await cluster.startAll()
        try await KeyValueClient.with(servers: cluster.servers) { client in
            for i in stride(from: 0, to: 300, by: 7) {
                #expect(try await client.get(Array("k\(i)".utf8)) == Array("v\(i)".utf8))
            }
            _ = try await client.put(Array("after".utf8), Array("restart".utf8))
            #expect(try await client.get(Array("after".utf8)) == Array("restart".utf8))
        }
        // A graceful stop of every replica exits 0.
        for id in 1...3 {
            let daemon = cluster.daemons[id]!
            #expect(await daemon.stop(signal: SIGTERM) == 0, "stderr: \(daemon.stderr)")
            cluster.daemons[id] = nil
        }
    }
}

extension ReplicatedKVProcessTests {
    @Test func aNewReplicaJoinsBySnapshotAndReplacesAFailedOne() async throws {
        let cluster = try KVCluster(size: 4)
        try await cluster.startAll()
        let founders = Array(cluster.servers.prefix(3))
        try await KeyValueClient.with(servers: founders) { client in
            // Enough writes that the log behind the snapshot is gone: the newcomer needs InstallSnapshot.
            for i in 0..<300 { _ = try await client.put(Array("k\(i)".utf8), Array("v\(i)".utf8)) }
        }
        try await cluster.start(4, joining: true)
        try await KeyValueClient.with(servers: cluster.servers) { client in
            let asLearner = try await client.changeMembership(.addLearner, node: 4, address: cluster.address(4))
            #expect(asLearner.learners == [4])
            // The learner catches up to the same state.
            let caughtUp = await eventually(timeout: .seconds(30)) {
                guard let four = try? await client.status(of: cluster.address(4)),
                      let one = try? await client.status(of: cluster.address(1)) else { return false }
                return four.keys == 300 && four.stateDigest == one.stateDigest
            }
            #expect(caughtUp)
            let promoted = try await client.changeMembership(.addVoter, node: 4, address: cluster.address(4))
            #expect(promoted.voters == [1, 2, 3, 4])
            // Replace a failed founder: kill it, remove it, and the group of 2, 3, 4 goes on.
            var leader: Int?
            _ = await eventually { leader = await cluster.leader(client); return leader != nil }
            let victim = leader == 1 ? 2 : 1
            await cluster.kill(victim)
            let shrunk = try await client.changeMembership(.remove, node: UInt64(victim), address: nil)
            #expect(shrunk.voters == [1, 2, 3, 4].filter { $0 != victim }.map(UInt64.init))
            _ = try await client.put(Array("after".utf8), Array("replacement".utf8))
            #expect(try await client.get(Array("after".utf8)) == Array("replacement".utf8))
            let converged = await eventually(timeout: .seconds(20)) {
                guard let four = try? await client.status(of: cluster.address(4)) else { return false }
                return four.keys == 301
            }
            #expect(converged)
        }
        let log = cluster.daemons[4]!.stderr
        #expect(!log.contains("critical"))
    }
}

/// Connects to 127.0.0.1:`port`, sends `bytes`, and reports whether the other side closes
/// the connection within two seconds.
func closedAfterSending(_ bytes: [UInt8], to port: Int) throws -> Bool {
    let fd = try connectLoopback(port)
    defer { close(fd) }
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var buffer = [UInt8](repeating: 0, count: 256)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
        if n < 0 { return false }  // timed out: still open
    }
}

/// A blocking TCP socket connected to 127.0.0.1:`port` (the caller closes it).
func connectLoopback(_ port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CairnError(.io, "socket failed") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else {
        close(fd)
        throw CairnError(.io, "connect to \(port) failed")
    }
    return fd
}
