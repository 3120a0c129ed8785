import CairnCore
import Foundation
import Logging
import ServiceLifecycle
import SystemPackage

/// A chunkserver's side of the registry: announces the server to the metadata service and
/// keeps announcing (capacity, used, chunks) every `interval`, so the leader registers it in
/// the ring on first contact and knows it is live.
public struct ChunkserverHeartbeats: Service {
    /// What the chunkserver reports about itself at each heartbeat.
    public struct Report: Sendable {
        public var capacityBytes: UInt64
        public var usedBytes: UInt64
        public var chunks: UInt64
        public var quarantined: UInt64
        public init(capacityBytes: UInt64, usedBytes: UInt64, chunks: UInt64, quarantined: UInt64) {
            self.capacityBytes = capacityBytes
            self.usedBytes = usedBytes
            self.chunks = chunks
            self.quarantined = quarantined
        }
    }

    public let metaServers: [HostPort]
    public let identity: [UInt8]
    /// Where clients reach this server's data port; resolved once the server is bound.
    public let address: @Sendable () async -> HostPort?
    public let weight: UInt32
    public let failureDomain: String
    public let interval: Duration
    public let report: @Sendable () -> Report
    let logger: Logger

    public init(metaServers: [HostPort], identity: [UInt8], address: @escaping @Sendable () async -> HostPort?, weight: UInt32,
                failureDomain: String, interval: Duration = .seconds(2), report: @escaping @Sendable () -> Report, logger: Logger) {
        self.metaServers = metaServers
        self.identity = identity
        self.address = address
        self.weight = weight
        self.failureDomain = failureDomain
        self.interval = interval
        self.report = report
        self.logger = logger
    }

    /// The identity token kept in `directory/identity` (16 random bytes, hex), created on the
    /// first start: the server keeps its place in the ring across restarts and address changes.
    public static func identity(in directory: FilePath) throws(CairnError) -> [UInt8] {
        let path = directory.appending("identity")
        do {
            if let status = try FileSystemCalls.status(path), status.isRegular {
                let text = try FileSystemCalls.readFile(path, bytesMax: 256)
                let token = Array(String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
                guard (1...MetaService.chunkserverIdentityBytesMax).contains(token.count) else {
                    throw CairnError(.corrupt, "\(path) does not hold a chunkserver identity")
                }
                return token
            }
            var random = SystemRandomNumberGenerator()
            let token = Array((0..<16).map { _ in String(UInt8.random(in: 0...255, using: &random), radix: 16) }
                .map { $0.count == 1 ? "0" + $0 : $0 }.joined().utf8)
            try FileSystemCalls.writeFileAtomically(path, bytes: token + [UInt8(ascii: "\n")])
            return token
        } catch let error as CairnError {
            throw error
        } catch {
            throw CairnError(.io, "cannot read or create \(path)", cause: error)
        }
    }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            try await MetaClient.with(servers: metaServers, attemptsMax: 3) { client in await self.beat(client) }
        }
    }

    private func beat(_ client: MetaClient) async {
        var registered = false
        while !Task.isCancelled {
            if let address = await address() {
                var request = Cairn_Meta_V1_ChunkserverHeartbeatRequest()
                request.identity = Data(identity)
                request.address = address.description
                request.weight = weight
                request.failureDomain = failureDomain
                let report = report()
                request.capacityBytes = report.capacityBytes
                request.usedBytes = report.usedBytes
                request.chunks = report.chunks
                request.quarantined = report.quarantined
                do {
                    let response = try await client.heartbeat(request)
                    if !registered {
                        logger.info("registered with the metadata service", metadata: [
                            "id": "\(response.id)", "ring epoch": "\(response.ringEpoch)"])
                        registered = true
                    }
                } catch {
                    logger.warning("heartbeat to the metadata service failed", metadata: ["error": "\(error)"])
                }
            }
            do { try await Task.sleep(for: interval) } catch { return }
        }
    }
}
