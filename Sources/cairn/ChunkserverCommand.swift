import ArgumentParser
import CairnCore
import ChunkServer
import ChunkStore
import Logging
import MetaService
import ServiceLifecycle
import SystemPackage

/// `cairn chunkserver`: run the daemon that stores chunks.
struct ChunkserverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chunkserver",
        abstract: "Run a chunkserver: stores SHA-256-named chunks under a data directory."
    )

    @Option(help: "Data directory (created if missing).")
    var data: String

    @Option(help: "Address of the data port, HOST:PORT (port 0 picks a free one).")
    var listen: String = "127.0.0.1:7100"

    @Option(help: "Refuse puts that would leave less free space than this (e.g. 256MiB, 1G).")
    var reserve: String = "256MiB"

    @Option(help: "Largest chunk accepted (e.g. 4MiB).")
    var chunkBytesMax: String = "4MiB"

    @Option(help: "Scrubber rate in bytes per second (e.g. 32MiB); 0 turns the scrubber off.")
    var scrubRate: String = "32MiB"

    @Option(help: "Seconds between two full scrub passes.")
    var scrubInterval: Int = 3600

    @Option(help: "Puts and gets served at once.")
    var transfersMax: Int = 32

    @Option(help: "Metadata replicas to register with and heartbeat to, HOST:PORT,… (none: run standalone).")
    var meta: String?

    @Option(help: "Address clients use to reach this server, HOST:PORT (default: the bound --listen address).")
    var advertise: String?

    @Option(help: "Placement weight: share of chunks relative to other servers (e.g. proportional to disk size).")
    var weight: UInt32 = 100

    @Option(help: "Failure-domain label (host, rack): replicas of a chunk go to distinct domains where possible.")
    var failureDomain: String = ""

    @OptionGroup var logging: LoggingOptions

    var metaServers: [HostPort] { meta.flatMap { try? parseServerList($0, option: "--meta") } ?? [] }

    func validate() throws {
        guard HostPort(listen) != nil else { throw ValidationError("--listen must be HOST:PORT, got '\(listen)'") }
        guard ByteCount.parse(reserve) != nil else { throw ValidationError("--reserve: cannot parse '\(reserve)'") }
        guard ByteCount.parse(scrubRate) != nil else { throw ValidationError("--scrub-rate: cannot parse '\(scrubRate)'") }
        guard let max = ByteCount.parse(chunkBytesMax), max > 0 else { throw ValidationError("--chunk-bytes-max: cannot parse '\(chunkBytesMax)'") }
        if let meta { _ = try parseServerList(meta, option: "--meta") }
        if let advertise, HostPort(advertise) == nil { throw ValidationError("--advertise must be HOST:PORT, got '\(advertise)'") }
        guard failureDomain.utf8.count <= 64 else { throw ValidationError("--failure-domain is longer than 64 bytes") }
        guard scrubInterval >= 0 else { throw ValidationError("--scrub-interval must not be negative") }
    }

    func run() async throws {
        let logger = logging.makeLogger(label: "cairn.chunkserver")
        var limits = ChunkLimits()
        limits.chunkBytesMax = Int(ByteCount.parse(chunkBytesMax)!)
        limits.transfersMax = transfersMax
        let configuration = ChunkServerConfiguration(
            listen: HostPort(listen)!,
            store: ChunkStore.Configuration(directory: FilePath(data), limits: limits, reserveBytes: ByteCount.parse(reserve)!),
            scrubBytesPerSecond: ByteCount.parse(scrubRate)!,
            scrubPassInterval: .seconds(scrubInterval)
        )
        let server: ChunkServer
        do {
            server = try ChunkServer(configuration: configuration, logger: logger)
        } catch {
            printError("cairn chunkserver: \(error)")
            throw ExitCode.failure
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: server)]
        if !metaServers.isEmpty {
            let identity: [UInt8]
            do {
                identity = try ChunkserverHeartbeats.identity(in: FilePath(data))
            } catch {
                printError("cairn chunkserver: \(error)")
                throw ExitCode.failure
            }
            let advertised = advertise.flatMap(HostPort.init)
            services.append(.init(service: ChunkserverHeartbeats(
                metaServers: metaServers, identity: identity,
                address: { [server] in
                    if let advertised { return advertised }
                    guard let bound = await server.boundAddress(), let ip = bound.ipAddress, let port = bound.port else { return nil }
                    return HostPort(host: ip, port: port)
                },
                weight: weight, failureDomain: failureDomain,
                report: { [store = server.store] in
                    let stats = (try? store.stats()) ?? ChunkStoreStats()
                    return .init(capacityBytes: UInt64(max(stats.capacityBytes, 0)), usedBytes: UInt64(max(stats.usedBytes, 0)),
                                 chunks: UInt64(max(stats.chunkCount, 0)), quarantined: UInt64(max(stats.quarantinedTotal, 0)))
                },
                logger: logger)))
        }
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                if let address = await server.boundAddress() {
                    // Scripts and tests wait for this line.
                    printLine("cairn chunkserver listening on \(address.ipAddress ?? "?"):\(address.port ?? 0)")
                }
            }
            try await tasks.waitForAll()
        }
    }
}
