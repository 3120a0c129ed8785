import CairnCore
import CairnTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MetaService
import MetaState
import RaftRuntime
import Testing

/// Bad input, followers, sessions, chunkserver registration, status and membership changes,
/// against one real three-replica cluster.
@Suite(.serialized) struct MetaServiceRequestTests {
    /// Calls one replica directly (no leader following), as a misbehaving client would.
    func withStub<T: Sendable>(_ server: HostPort, _ body: (Cairn_Meta_V1_Meta.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        let client = GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: server.host, port: server.port), transportSecurity: .plaintext))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.runConnections() }
            defer { client.beginGracefulShutdown() }
            return try await body(Cairn_Meta_V1_Meta.Client(wrapping: client))
        }
    }

    typealias Pipeline = PipelinedClient<Cairn_Meta_V1_ExecuteCall, Cairn_Meta_V1_ExecuteAnswer>

    /// Pipelined operations to one replica directly (its pipeline port, no leader following).
    func withPipeline<T: Sendable>(_ server: HostPort, _ body: (Pipeline) async throws -> T) async throws -> T {
        try await SharedEventLoop.with { eventLoop in
            let client = GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: server.host, port: server.port),
                                                                 transportSecurity: .plaintext, eventLoopGroup: eventLoop.group))
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.runConnections() }
                let pipeline = Pipeline(inflightMax: 16, callTimeout: .seconds(30), executor: eventLoop.executor) { requests, received in
                    try await FramedPipeline.open(service: MetaService.pipelineServiceName, at: server, portsVia: client, group: eventLoop.group,
                                                  frameBytesMax: MetaService.pipelineFrameBytesMax, requests: requests, received: received,
                                                  as: (Cairn_Meta_V1_ExecuteStreamRequest.self, Cairn_Meta_V1_ExecuteStreamResponse.self))
                }
                defer {
                    pipeline.close()
                    client.beginGracefulShutdown()
                }
                return try await body(pipeline)
            }
        }
    }

    func rpcCode(_ body: () async throws -> Void) async -> RPCError.Code? {
        do {
            try await body()
            return nil
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }

    @Test func badRequestsGetClearErrorsAndTheServiceGoesOn() async throws {
        let cluster = try LocalCluster(replicas: 3)
        try await cluster.startFounders()
        try await MetaClient.with(servers: cluster.metaServers) { client in
            let session = try await MetaSession.open(client)
            let leaderID = try #require(await eventuallyValue { await client.leaderID(cluster) })
            let leader = cluster.metaAddress(leaderID)
            let follower = cluster.metaAddress(leaderID == 1 ? 2 : 1)
            try await withStub(leader) { stub in
                // Garbage, truncated and oversized commands: invalid argument, nothing applied.
                var garbage = Cairn_Meta_V1_ExecuteRequest()
                garbage.command = Data([0xFF, 0x00, 0x13, 0x37])
                #expect(await rpcCode { _ = try await stub.execute(garbage) } == .invalidArgument)
                var truncated = Cairn_Meta_V1_ExecuteRequest()
                truncated.command = Data(MetaCommand(now: .zero, operation: .mkdir(parent: 1, name: name("x"), mode: 0o755)).encoded().dropLast(2))
                #expect(await rpcCode { _ = try await stub.execute(truncated) } == .invalidArgument)
                var huge = Cairn_Meta_V1_ExecuteRequest()
                huge.command = Data(MetaCommand(now: .zero, operation: .symlink(parent: 1, name: name("big"), target: [UInt8](repeating: 0x61, count: 5 << 20))).encoded())
                let hugeCode = await rpcCode { _ = try await stub.execute(huge) }
                #expect(hugeCode == .invalidArgument || hugeCode == .resourceExhausted, "\(String(describing: hugeCode))")
                // A heartbeat from a chunkserver with no identity or a bad address.
                var heartbeat = Cairn_Meta_V1_ChunkserverHeartbeatRequest()
                heartbeat.address = "127.0.0.1:1"
                #expect(await rpcCode { _ = try await stub.chunkserverHeartbeat(heartbeat) } == .invalidArgument)
                heartbeat.identity = Data([1, 2, 3])
                heartbeat.address = "not an address"
                #expect(await rpcCode { _ = try await stub.chunkserverHeartbeat(heartbeat) } == .invalidArgument)
                var report = Cairn_Meta_V1_BadReplicaRequest()
                report.chunk = Data([1, 2])
                #expect(await rpcCode { _ = try await stub.reportBadReplica(report) } == .invalidArgument)
            }
            // The same on the pipelined connection: each bad operation gets its own error answer,
            // and the connection goes on serving the good one sent with them.
            try await withPipeline(leader) { pipeline in
                let commands: [[UInt8]] = [[0xFF, 0x00, 0x13, 0x37],
                                           Array(MetaCommand(now: .zero, operation: .mkdir(parent: 1, name: name("x"), mode: 0o755)).encoded().dropLast(2)),
                                           [UInt8](repeating: 0x61, count: 5 << 20),
                                           MetaCommand(now: .zero, operation: .getattr(rootInode)).encoded()]
                let answers = await withTaskGroup(of: (Int, Result<Cairn_Meta_V1_ExecuteAnswer, RPCError>).self) { group in
                    for (i, command) in commands.enumerated() {
                        group.addTask {
                            var call = Cairn_Meta_V1_ExecuteCall()
                            call.command = Data(command)
                            do {
                                return (i, .success(try await pipeline.call(call)))
                            } catch let error as RPCError {
                                return (i, .failure(error))
                            } catch {
                                return (i, .failure(RPCError(code: .unknown, message: "\(error)")))
                            }
                        }
                    }
                    var answers: [Int: Result<Cairn_Meta_V1_ExecuteAnswer, RPCError>] = [:]
                    for await (i, answer) in group { answers[i] = answer }
                    return answers
                }
                for i in 0..<3 {
                    guard case .failure(let error) = answers[i] else {
                        Issue.record("bad command \(i) answered: \(String(describing: answers[i]))")
                        continue
                    }
                    #expect(error.code == .invalidArgument, "answer \(i): \(error)")
                }
                guard case .success(let good) = answers[3], case .attributes = try MetaReply(decoding: Array(good.reply)) else {
                    Issue.record("getattr of the root on the pipelined connection: \(String(describing: answers[3]))")
                    return
                }
            }
            // A follower does not apply mutations: it answers unavailable with the leader's address.
            try await withStub(follower) { stub in
                var request = Cairn_Meta_V1_ExecuteRequest()
                request.command = Data(MetaCommand(now: .zero, operation: .mkdir(parent: 1, name: name("via-follower"), mode: 0o755)).encoded())
                do {
                    _ = try await stub.execute(request)
                    Issue.record("a follower accepted a mutation")
                } catch let error as RPCError {
                    #expect(error.code == .unavailable)
                    #expect(error.metadata[stringValues: "cairn-leader"].first(where: { _ in true }) == leader.description)
                }
                try await withPipeline(follower) { pipeline in
                    do {
                        _ = try await pipeline.call(Cairn_Meta_V1_ExecuteCall.with { $0.command = request.command })
                        Issue.record("a follower accepted a pipelined mutation")
                    } catch let error as RPCError {
                        #expect(error.code == .unavailable)
                        #expect(error.metadata[stringValues: "cairn-leader"].first(where: { _ in true }) == leader.description)
                    }
                }
            }
            // Namespace errors are errno replies: unknown inodes, impossible names.
            #expect(try await session.perform(.getattr(987_654), as: root) == .failure(.ENOENT))
            #expect(try await session.perform(.mkdir(parent: 987_654, name: name("x"), mode: 0o755), as: root) == .failure(.ENOENT))
            for bad in [[], name("."), name(".."), name("a/b"), [0x61, 0x00, 0x62], [UInt8](repeating: 0x61, count: 256)] {
                let reply = try await session.perform(.mkdir(parent: rootInode, name: bad, mode: 0o755), as: root)
                guard case .failure = reply else {
                    Issue.record("mkdir \(bad.prefix(8)) succeeded: \(reply)")
                    continue
                }
            }
            // A stale session: mutations under a session the service does not know are refused.
            let stale = MetaCommand(session: 424_242, sequence: 1, now: .zero, operation: .mkdir(parent: 1, name: name("stale"), mode: 0o755))
            #expect(try await client.execute(stale) == .failure(.ESTALE))
            // Reads are linearizable on a follower too, and the service still works.
            guard case .attributes = try await session.perform(.mkdir(parent: rootInode, name: name("ok"), mode: 0o755), as: root) else {
                Issue.record("mkdir after bad input failed")
                return
            }
            #expect(try await listing(session, rootInode) == ["ok"])
            #expect(await client.converged(cluster))

            // A mutation answers with the directories it changed, as they stood right after it
            // (what the mount answers the kernel's next getattr with); a read with none.
            func now(_ inode: InodeNumber) async throws -> [Attributes] {
                guard case .attributes(let attributes) = try await session.perform(.getattr(inode), as: root) else { return [] }
                return [attributes]
            }
            let (madeA, afterA) = try await session.performReportingDirectories(.mkdir(parent: rootInode, name: name("da"), mode: 0o755), as: root)
            #expect(try await afterA == now(rootInode))
            #expect(afterA.first?.nlink == 4, "root holds ok and da")
            let (madeB, _) = try await session.performReportingDirectories(.mkdir(parent: rootInode, name: name("db"), mode: 0o755), as: root)
            guard case .attributes(let a) = madeA, case .attributes(let b) = madeB else {
                Issue.record("mkdir failed: \(madeA) \(madeB)")
                return
            }
            let (_, afterCreate) = try await session.performReportingDirectories(
                .create(parent: a.inode, name: name("f"), flags: [.write, .create], mode: 0o644), as: root)
            #expect(try await afterCreate == now(a.inode))
            #expect(afterCreate.first.map { $0.mtime > a.mtime } == true)
            let (_, afterRename) = try await session.performReportingDirectories(
                .rename(oldParent: a.inode, oldName: name("f"), newParent: b.inode, newName: name("g"), flags: []), as: root)
            #expect(try await afterRename == now(a.inode) + now(b.inode))
            let (failed, afterFailure) = try await session.performReportingDirectories(.unlink(parent: a.inode, name: name("none")), as: root)
            #expect(failed == .failure(.ENOENT))
            #expect(try await afterFailure == now(a.inode))
            #expect(try await session.performReportingDirectories(.getattr(a.inode), as: root).directories.isEmpty)
        }
    }

    @Test func chunkserversRegisterAndStatusShowsTheCluster() async throws {
        let cluster = try LocalCluster(replicas: 3, chunkservers: 2)
        try await cluster.startFounders()
        try await cluster.startChunkserver(1)
        try await cluster.startChunkserver(2)
        try await MetaClient.with(servers: cluster.metaServers) { client in
            let registered = await eventually(timeout: .seconds(20)) {
                guard let view = try? await client.cluster() else { return false }
                return view.ring.current.members.count == 2 && view.live.count == 2
            }
            #expect(registered)
            let view = try await client.cluster()
            #expect(view.ring.current.epoch == 2)
            #expect(view.capacityBytes > 0)
            #expect(Set(view.ring.current.members.map(\.address.port)) == Set(cluster.chunkserverPorts))

            // `cairn status --json`: leader and term at the top level.
            let (status, stdout, stderr) = try runCairn(["status", "--meta", cluster.metaList, "--json"], logs: cluster.logs)
            #expect(status == 0, "\(stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any])
            let leaderID = try #require(await client.leaderID(cluster))
            #expect(json["leader"] as? String == cluster.metaAddress(leaderID).description)
            #expect((json["term"] as? Int ?? 0) >= 1)
            #expect((json["replicas"] as? [Any])?.count == 3)
            let servers = try #require(json["chunkservers"] as? [[String: Any]])
            #expect(servers.count == 2 && servers.allSatisfy { $0["live"] as? Bool == true })

            // A restarted chunkserver keeps its id and does not move the ring.
            await cluster.killChunkserver(2)
            try await cluster.startChunkserver(2)
            _ = await eventually(timeout: .seconds(10)) { (try? await client.cluster())?.live.count == 2 }
            #expect(try await client.cluster().ring.current.epoch == 2)

            // A chunkserver that stops heartbeating is shown down, and stays in the ring.
            await cluster.killChunkserver(1)
            let down = await eventually(timeout: .seconds(30)) { (try? await client.cluster())?.live.count == 1 }
            #expect(down)
            #expect(try await client.cluster().ring.current.members.count == 2)
            let text = try runCairn(["status", "--meta", cluster.metaList], logs: cluster.logs)
            #expect(text.stdout.contains("DOWN"), "\(text.stdout)")
        }
    }

    @Test func replicasAreAddedAndRemovedOnline() async throws {
        let cluster = try LocalCluster(replicas: 4)
        try await cluster.startFounders()
        try await MetaClient.with(servers: Array(cluster.metaServers.prefix(3))) { client in
            let session = try await MetaSession.open(client)
            // More than a snapshot's worth, so the newcomer catches up from a snapshot.
            for i in 0..<300 { _ = try await session.perform(.mkdir(parent: rootInode, name: name("n\(i)"), mode: 0o755), as: root) }
        }
        try await cluster.startReplica(4, joining: true)
        let added = try runCairn(["meta", "add", "--meta", cluster.metaServers.prefix(3).map(\.description).joined(separator: ","),
                                  "--id", "4", "--address", cluster.metaAddress(4).description], logs: cluster.logs)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(added.stdout.contains("voters [1, 2, 3, 4]"), "\(added.stdout)")
        try await MetaClient.with(servers: cluster.metaServers) { client in
            #expect(await client.converged(cluster))
            let leaderID = try #require(await eventuallyValue { await client.leaderID(cluster) })
            let victim = leaderID == 1 ? 2 : 1
            await cluster.killReplica(victim)
            let removed = try runCairn(["meta", "remove", "--meta", cluster.metaList, "--id", "\(victim)"], logs: cluster.logs)
            #expect(removed.status == 0, "\(removed.stderr)")
            let session = try await MetaSession.open(client)
            guard case .attributes = try await session.perform(.mkdir(parent: rootInode, name: name("after"), mode: 0o755), as: root) else {
                Issue.record("mkdir after the membership change failed")
                return
            }
            #expect(try await listing(session, rootInode).count == 301)
            #expect(await client.converged(cluster))
        }
    }
}
