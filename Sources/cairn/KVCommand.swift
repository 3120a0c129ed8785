import ArgumentParser
import CairnCore
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import RaftCore
import RaftRuntime
import ReplicatedKV
import ServiceLifecycle
import SystemPackage

/// `cairn kv …`: a replicated key-value store on Cairn's Raft runtime — the runtime's smoke
/// test and benchmark target, with real processes, WAL and fsync.
struct KVCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "A replicated key-value store on Cairn's Raft (for testing and measuring the Raft runtime).",
        subcommands: [Serve.self, Put.self, Get.self, Status.self, Add.self, Remove.self]
    )

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run one replica.")

        @Option(help: "This replica's id (1, 2, …).") var id: UInt64
        @Option(help: "Data directory (WAL, snapshots).") var data: String
        @Option(help: "Address for peers and clients, HOST:PORT.") var listen: String
        @Option(help: "Every replica: ID=HOST:PORT,ID=HOST:PORT,… (this one included).") var peers: String
        @Flag(help: "Found a new group on this first start (ignored once the log exists).") var bootstrap = false
        @Option(help: "TCP port for Raft traffic between replicas, on the host of --listen (0: any free port; peers ask for it over gRPC).")
        var raftPort: Int = 0
        @Option(help: "TCP port for clients' pipelined puts and gets, on the host of --listen (0: any free port; clients ask for it over gRPC). Fix it where a firewall must let it through.")
        var pipelinePort: Int = 0
        @OptionGroup var timing: RaftTimingOptions
        @Option(help: "Snapshot after at least this many applied entries, once the log since the last snapshot is as large as it.") var snapshotEntries: UInt64 = 10_000
        @Option(help: "Entries kept behind a snapshot for followers a little behind.") var entriesBehindSnapshot: UInt64 = 1_000
        @OptionGroup var logging: LoggingOptions

        func validate() throws {
            guard HostPort(listen) != nil else { throw ValidationError("--listen must be HOST:PORT") }
            _ = try parsePeers(peers)
        }

        func run() async throws {
            let logger = logging.makeLogger(label: "cairn.kv.\(id)")
            var configuration = RaftNodeConfiguration(id: id, peers: try parsePeers(peers), directory: FilePath(data), bootstrap: bootstrap)
            timing.apply(to: &configuration)
            configuration.raftPort = raftPort
            configuration.snapshotEveryEntries = snapshotEntries
            configuration.snapshotEntriesMax = max(configuration.snapshotEntriesMax, snapshotEntries)
            configuration.entriesKeptBehindSnapshot = entriesBehindSnapshot
            // The server and the node share one thread (`SharedEventLoop`), stopped after both.
            try await SharedEventLoop.with { eventLoop in try await serve(configuration, on: eventLoop, logger: logger) }
        }

        private func serve(_ configuration: RaftNodeConfiguration, on eventLoop: SharedEventLoop, logger: Logger) async throws {
            let node: RaftNode<KeyValueMachine>
            do {
                node = try RaftNode(configuration: configuration, stateMachine: KeyValueMachine(), eventLoop: eventLoop, logger: logger)
            } catch {
                printError("cairn kv serve: \(error)")
                throw ExitCode.failure
            }
            let address = HostPort(listen)!
            let pipeline: FramedPipelineServer<Cairn_Kv_V1_PipelineRequest, Cairn_Kv_V1_PipelineResponse>
            do {
                pipeline = try await KeyValueService.pipelineServer(node: node, host: address.host, port: pipelinePort, eventLoop: eventLoop, logger: logger)
            } catch {
                printError("cairn kv serve: cannot listen for pipelined calls on \(address.host):\(pipelinePort): \(error)")
                throw ExitCode.failure
            }
            let transport = HTTP2ServerTransport.Posix(
                address: .ipv4(host: address.host, port: address.port), transportSecurity: .plaintext,
                config: .defaults {
                    $0.rpc.maxRequestPayloadSize = configuration.peerMessageBytesMax
                    $0.http2.targetWindowSize = 16 << 20
                    $0.http2.maxFrameSize = 1 << 20
                    $0.connection.flushCoalescing = nil
                }, eventLoopGroup: eventLoop.group)
            let server = GRPCServer(transport: transport, services: [node.peerService, pipeline.portService, KeyValueService(node: node)])
            let group = ServiceGroup(configuration: .init(
                // Shut down in reverse: the node first (ending peer streams, answering every call), then the servers.
                services: [.init(service: GRPCServerService(server: server, executor: eventLoop.executor)), .init(service: pipeline),
                           .init(service: node)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                tasks.addTask {
                    if let bound = try? await transport.listeningAddress, let ipv4 = bound.ipv4 {
                        printLine("cairn kv \(id) listening on \(ipv4.host):\(ipv4.port)")
                    }
                }
                try await tasks.waitForAll()
            }
        }
    }

    struct ServersOption: ParsableArguments {
        @Option(help: "Replicas, HOST:PORT,HOST:PORT,…") var servers: String
        var list: [HostPort] { (try? parseServerList(servers, option: "--servers")) ?? [] }
        func validate() throws { _ = try parseServerList(servers, option: "--servers") }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a value (replicated, durable on a quorum).")
        @OptionGroup var servers: ServersOption
        @Argument var key: String
        @Argument var value: String
        func run() async throws {
            let index = try await KeyValueClient.with(servers: servers.list) { try await $0.put(Array(key.utf8), Array(value.utf8)) }
            print("ok index \(index)")
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read a value (linearizable).")
        @OptionGroup var servers: ServersOption
        @Argument var key: String
        func run() async throws {
            let value = try await KeyValueClient.with(servers: servers.list) { try await $0.get(Array(key.utf8)) }
            guard let value else {
                printError("not found")
                throw ExitCode(1)
            }
            print(String(decoding: value, as: UTF8.self))
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each replica's role, term, commit, applied index and state digest.")
        @OptionGroup var servers: ServersOption
        func run() async throws {
            try await KeyValueClient.with(servers: servers.list) { client in
                for server in client.servers {
                    do {
                        let s = try await client.status(of: server)
                        print("\(server) id=\(s.id) role=\(s.role) term=\(s.term) leader=\(s.leader) commit=\(s.commit) applied=\(s.applied) keys=\(s.keys) digest=\(ChunkID(digest: s.stateDigest)?.hex.prefix(16) ?? "?")")
                    } catch {
                        print("\(server) unreachable: \(error)")
                    }
                }
            }
        }
    }
}

extension KVCommand {
    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a replica (started without --bootstrap) as a learner or a voter.")
        @OptionGroup var servers: ServersOption
        @Option(help: "The new replica's id.") var id: UInt64
        @Option(help: "The new replica's HOST:PORT.") var address: String
        @Flag(help: "Add as a non-voting learner (promote later with --voter).") var learner = false
        func run() async throws {
            guard let hostPort = HostPort(address) else { throw ValidationError("--address must be HOST:PORT") }
            let result = try await KeyValueClient.with(servers: servers.list) {
                try await $0.changeMembership(learner ? .addLearner : .addVoter, node: id, address: hostPort)
            }
            print("voters \(result.voters) learners \(result.learners)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a replica from the group.")
        @OptionGroup var servers: ServersOption
        @Option(help: "The replica's id.") var id: UInt64
        func run() async throws {
            let result = try await KeyValueClient.with(servers: servers.list) { try await $0.changeMembership(.remove, node: id, address: nil) }
            print("voters \(result.voters) learners \(result.learners)")
        }
    }
}
