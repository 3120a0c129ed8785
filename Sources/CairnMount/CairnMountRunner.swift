import CairnCore
import ChunkTransfer
import FuseKernel
import Logging
import NIOPosix
import MetaService
import ServiceLifecycle
import UnixSignals
import SystemPackage

/// Runs one Cairn mount until it is unmounted or signalled: connects to the metadata service
/// (failing fast, with a clear error, when it does not answer), opens a session, mounts, and
/// on shutdown unmounts, then ends the session.
public enum CairnMountRunner {
    /// - Parameter onMounted: called once the kernel has the mount.
    /// - Throws: `CairnError` for an unreachable metadata service or a bad mountpoint (before
    ///   anything is mounted), or what the mount's loop throws.
    public static func run(metaServers: [HostPort], mountpoint: FilePath, fuse: FuseMount.Options, options: CairnMountOptions,
                           shutdownSignals: [UnixSignal] = [.sigterm, .sigint], logger: Logger,
                           onMounted: @escaping @Sendable () -> Void = {}) async throws {
        try options.validate()
        try fuse.validate()
        // The mountpoint first: a typo there should not wait on the network.
        _ = try FuseMount.checkMountpoint(mountpoint)
        // Reachability first, with a short budget: an unreachable service is an error, not a hang.
        do {
            _ = try await MetaClient.with(servers: metaServers, attemptsMax: 30, callTimeout: .seconds(3)) { try await $0.cluster() }
        } catch {
            throw CairnError(.unavailable, "cannot reach the metadata service at \(metaServers.map(\.description).joined(separator: ","))",
                             cause: error)
        }
        try await MetaClient.with(servers: metaServers) { client in
            let map = try await ClusterMap(client: client, replicas: options.replicas, logger: logger)
            let session = try await MetaSession.open(client, ttl: options.sessionTTL)
            // Range reads get connections on an event loop of their own, where small reads also
            // run: a random read's fetch is sent, received and answered there without a thread
            // hand-off. Whole-chunk traffic (uploads, sequential reads) keeps the shared loops.
            let rangeLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            defer { rangeLoop.shutdownGracefully { _ in } }
            try await ChunkserverPool.withPool(logger: logger) { pool in
                try await ChunkserverPool.withPool(eventLoopGroup: rangeLoop, logger: logger) { rangePool in
                    let fileSystem = CairnFileSystem(session: session, map: map, pool: pool, rangePool: rangePool,
                                                     smallReadExecutor: EventLoopTaskExecutor(rangeLoop.next()), options: options,
                                                     attributeTimeout: .milliseconds(Int64(fuse.attributeTimeout * 1000)), logger: logger)
                    let mount = try FuseMount(mountpoint: mountpoint, options: fuse, fileSystem: fileSystem, logger: logger)
                    let group = ServiceGroup(configuration: .init(
                        services: [.init(service: mount, successTerminationBehavior: .gracefullyShutdownGroup),
                                   .init(service: map), .init(service: SessionKeeper(session: session, logger: logger))],
                        gracefulShutdownSignals: shutdownSignals, logger: logger))
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        tasks.addTask { try await group.run() }
                        tasks.addTask {
                            if await mount.waitUntilMounted() { onMounted() }
                        }
                        try await tasks.waitForAll()
                    }
                }
            }
            await session.close()
        }
    }
}

/// Keeps the mount's session alive. A session the service has ended (after a long outage) is
/// fatal for the mount: its open handles are gone.
struct SessionKeeper: Service {
    let session: MetaSession
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await session.keepAlive()
                    return
                } catch let error as CairnError where error.code == .notFound {
                    logger.critical("the metadata service ended this mount's session", metadata: ["error": "\(error)"])
                    throw error
                } catch {
                    logger.warning("session heartbeat failed; retrying", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
