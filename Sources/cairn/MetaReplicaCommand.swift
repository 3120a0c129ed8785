import ArgumentParser
import CairnCore
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MetaService
import MetaState
import RaftCore
import RaftRuntime
import ServiceLifecycle
import SystemPackage

/// `cairn meta …`: the metadata service — run a replica, add or remove one.
struct MetaReplicaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meta",
        abstract: "The metadata service: run a replica (the default), or change the group's members.",
        subcommands: [Serve.self, Add.self, Remove.self],
        defaultSubcommand: Serve.self
    )

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run one metadata replica.")

        @Option(help: "This replica's id (1, 2, …).") var id: UInt64
        @Option(help: "Data directory (Raft log, snapshots, member list).") var data: String
        @Option(help: "Address for peers, clients and chunkservers, HOST:PORT.") var listen: String
        @Option(help: "Founding replicas: ID=HOST:PORT,ID=HOST:PORT,… (this one included). A replica joining an existing group lists the current members and itself, without --bootstrap.")
        var peers: String
        @Flag(help: "Found a new cluster on this first start (each founding replica, once; ignored when the data directory holds a log).")
        var bootstrap = false
        @Option(help: "TCP port for Raft traffic between replicas, on the host of --listen (0: any free port; peers ask for it over gRPC). Fix it where a firewall must let it through.")
        var raftPort: Int = 0
        @Option(help: "TCP port for clients' pipelined namespace operations, on the host of --listen (0: any free port; clients ask for it over gRPC). Fix it where a firewall must let it through.")
        var pipelinePort: Int = 0
        @OptionGroup var timing: RaftTimingOptions
        @Option(help: "Snapshot after at least this many applied entries, once the log since the last snapshot is as large as it.") var snapshotEntries: UInt64 = 10_000
        @Option(help: "Seconds a client session lives without heartbeats is chosen by the client; how often the leader ends expired ones (seconds).")
        var sessionExpiryInterval: Int = 2
        @Option(help: "A chunkserver counts as live this many seconds after its last heartbeat.") var chunkserverLiveSeconds: Int = 10
        @OptionGroup var logging: LoggingOptions

        func validate() throws {
            guard HostPort(listen) != nil else { throw ValidationError("--listen must be HOST:PORT") }
            let members = try parsePeers(peers)
            guard members[id] != nil else { throw ValidationError("--peers must include this replica (\(id))") }
            guard sessionExpiryInterval > 0, chunkserverLiveSeconds > 0 else { throw ValidationError("intervals must be positive") }
        }

        func run() async throws {
            let logger = logging.makeLogger(label: "cairn.meta.\(id)")
            var configuration = RaftNodeConfiguration(id: id, peers: try parsePeers(peers), directory: FilePath(data), bootstrap: bootstrap)
            timing.apply(to: &configuration)
            configuration.raftPort = raftPort
            configuration.snapshotEveryEntries = snapshotEntries
            configuration.snapshotEntriesMax = max(configuration.snapshotEntriesMax, snapshotEntries)
            // The server and the node share one thread (`SharedEventLoop`), stopped after both.
            try await SharedEventLoop.with { eventLoop in try await serve(configuration, on: eventLoop, logger: logger) }
        }

        private func serve(_ configuration: RaftNodeConfiguration, on eventLoop: SharedEventLoop, logger: Logger) async throws {
            let limits = MetaLimits()
            let node: RaftNode<MetaMachine>
            do {
                _ = try? FileSystemCalls.mkdir(FilePath(data))
                node = try RaftNode(configuration: configuration, stateMachine: MetaMachine(limits: limits), eventLoop: eventLoop, logger: logger)
            } catch {
                printError("cairn meta: \(error)")
                throw ExitCode.failure
            }
            let service = MetaService(node: node, limits: limits, chunkserverLiveFor: .seconds(chunkserverLiveSeconds), logger: logger)
            let address = HostPort(listen)!
            let pipeline: FramedPipelineServer<Cairn_Meta_V1_ExecuteStreamRequest, Cairn_Meta_V1_ExecuteStreamResponse>
            do {
                pipeline = try await service.pipelineServer(host: address.host, port: pipelinePort, eventLoop: eventLoop)
            } catch {
                printError("cairn meta: cannot listen for pipelined operations on \(address.host):\(pipelinePort): \(error)")
                throw ExitCode.failure
            }
            let transport = HTTP2ServerTransport.Posix(
                address: .ipv4(host: address.host, port: address.port), transportSecurity: .plaintext,
                config: .defaults {
                    $0.rpc.maxRequestPayloadSize = max(configuration.peerMessageBytesMax, limits.commandBytesMax + 4096)
                    $0.http2.targetWindowSize = 16 << 20
                    $0.http2.maxFrameSize = 1 << 20
                    $0.connection.flushCoalescing = nil
                }, eventLoopGroup: eventLoop.group)
            let server = GRPCServer(transport: transport, services: [node.peerService, pipeline.portService, service])
            let group = ServiceGroup(configuration: .init(
                // Shut down in reverse: maintenance, then the node (ending peer streams, answering every call), then the servers.
                services: [.init(service: GRPCServerService(server: server, executor: eventLoop.executor)), .init(service: pipeline),
                           .init(service: node),
                           .init(service: MetaMaintenance(service: service, sessionExpiryInterval: .seconds(sessionExpiryInterval)))],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                tasks.addTask {
                    if let bound = try? await transport.listeningAddress, let ipv4 = bound.ipv4 {
                        // Scripts and tests wait for this line.
                        printLine("cairn meta \(id) listening on \(ipv4.host):\(ipv4.port)")
                    }
                }
                try await tasks.waitForAll()
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a replica, started first with `cairn meta --id N --peers N=HOST:PORT` (no --bootstrap): it catches up as a learner, then becomes a voter.")
        @OptionGroup var meta: MetaServersOption
        @Option(help: "The new replica's id.") var id: UInt64
        @Option(help: "The new replica's HOST:PORT.") var address: String
        @Flag(help: "Leave it a non-voting learner.") var learner = false

        func run() async throws {
            guard let hostPort = HostPort(address) else { throw ValidationError("--address must be HOST:PORT") }
            try await MetaClient.with(servers: meta.list) { client in
                var result = try await client.changeMembership(.addLearner, node: id, address: hostPort)
                if !learner {
                    // Promote once it has caught up (the leader's view of its lag), bounded in time.
                    let deadline = ContinuousClock.now + .seconds(120)
                    while ContinuousClock.now < deadline {
                        if let leader = client.leaderAddress, let status = await client.status(of: leader),
                           let member = status.members.first(where: { $0.id == id }), member.lag < 64 { break }
                        try await Task.sleep(for: .milliseconds(200))
                    }
                    result = try await client.changeMembership(.addVoter, node: id, address: hostPort)
                }
                print("voters \(result.voters) learners \(result.learners)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a replica from the group (then stop its process).")
        @OptionGroup var meta: MetaServersOption
        @Option(help: "The replica's id.") var id: UInt64
        func run() async throws {
            let result = try await MetaClient.with(servers: meta.list) { try await $0.changeMembership(.remove, node: id, address: nil) }
            print("voters \(result.voters) learners \(result.learners)")
        }
    }
}
