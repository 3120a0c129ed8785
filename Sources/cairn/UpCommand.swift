import ArgumentParser
import CairnCore
import CairnMount
import Foundation
import FuseKernel
import Logging
import MetaService
import SystemPackage

/// `cairn up`: a whole cluster on this machine — 3 metadata replicas and 3 chunkservers on
/// loopback — mounted at a directory; Ctrl-C unmounts and stops everything. Started again on
/// the same data directory, it comes back with the same ports and every file where it was.
struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Start a local cluster (3 metadata replicas, 3 chunkservers on loopback) and mount it; Ctrl-C stops it.")

    @Option(help: "Where the cluster keeps its data and logs (reused on the next start).") var data: String = "cairn-data"
    @Argument(help: "The directory to mount at (created if missing).") var mountpoint: String
    @Option(name: .short, help: "Mount options, as for `cairn mount`.") var o: String = ""
    @OptionGroup var logging: LoggingOptions

    static let replicas = 3
    static let chunkservers = 3

    /// The ports of a data directory's cluster, chosen on its first start.
    struct Layout: Codable {
        var meta: [Int]
        var chunkservers: [Int]
    }

    func validate() throws {
        _ = try MountOptionsParser.parse(o)
    }

    func run() async throws {
        let logger = logging.makeLogger(label: "cairn.up")
        let (fuse, options) = try MountOptionsParser.parse(o)
        let root = FilePath(FileManager.default.currentDirectoryPath).pushing(FilePath(data)).lexicallyNormalized()
        let mountpoint = FilePath(FileManager.default.currentDirectoryPath).pushing(FilePath(self.mountpoint)).lexicallyNormalized()
        try FileManager.default.createDirectory(atPath: root.appending("logs").string, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: mountpoint.string, withIntermediateDirectories: true)
        let layout = try loadOrCreateLayout(root)
        let metaList = layout.meta.map { "127.0.0.1:\($0)" }.joined(separator: ",")
        let peers = layout.meta.enumerated().map { "\($0.offset + 1)=127.0.0.1:\($0.element)" }.joined(separator: ",")

        var children: [ChildProcess] = []
        func stopAll() async {
            // Chunkservers first, then the replicas; each gets SIGTERM and time to finish.
            for child in children.reversed() { await child.stop() }
        }
        do {
            for (index, port) in layout.meta.enumerated() {
                children.append(try ChildProcess(arguments: [
                    "meta", "--id", "\(index + 1)", "--data", root.appending("meta\(index + 1)").string, "--listen", "127.0.0.1:\(port)",
                    "--peers", peers, "--bootstrap", "--log-level", "warning",
                ], output: root.appending("logs/meta\(index + 1).log"), newSession: true))
            }
            for (index, port) in layout.chunkservers.enumerated() {
                children.append(try ChildProcess(arguments: [
                    "chunkserver", "--data", root.appending("chunks\(index + 1)").string, "--listen", "127.0.0.1:\(port)",
                    "--meta", metaList, "--reserve", "1GiB", "--log-level", "warning",
                ], output: root.appending("logs/chunkserver\(index + 1).log"), newSession: true))
            }
            let servers = layout.meta.map { HostPort(host: "127.0.0.1", port: $0) }
            try await waitUntilHealthy(servers, children: children, root: root)
            let replicas = min(options.replicas, Self.chunkservers)
            var cairnOptions = options
            cairnOptions.replicas = replicas
            try await CairnMountRunner.run(metaServers: servers, mountpoint: mountpoint, fuse: fuse, options: cairnOptions, logger: logger) {
                printLine("""
                Cairn is up and mounted at \(mountpoint)
                  metadata replicas: \(metaList)
                  chunkservers:      \(layout.chunkservers.map { "127.0.0.1:\($0)" }.joined(separator: ",")) (R=\(replicas))
                  data and logs:     \(root)
                Try:   cp -r /etc/ssh \(mountpoint)/ && ls -l \(mountpoint)
                       cairn status --meta \(metaList)
                Ctrl-C unmounts and stops everything; `cairn up --data \(data) \(self.mountpoint)` brings it back.
                """)
            }
        } catch {
            printError("cairn up: \(error)")
            await stopAll()
            throw ExitCode.failure
        }
        printLine("unmounted \(mountpoint); stopping the cluster")
        await stopAll()
        printLine("stopped")
    }

    func loadOrCreateLayout(_ root: FilePath) throws -> Layout {
        let path = root.appending("cluster.json").string
        if let data = FileManager.default.contents(atPath: path) {
            return try JSONDecoder().decode(Layout.self, from: data)
        }
        let ports = try freeLoopbackPorts(Self.replicas + Self.chunkservers)
        let layout = Layout(meta: Array(ports.prefix(Self.replicas)), chunkservers: Array(ports.dropFirst(Self.replicas)))
        try FileSystemCalls.writeFileAtomically(FilePath(path), bytes: Array(try JSONEncoder().encode(layout)))
        return layout
    }

    /// Waits until a leader answers and every chunkserver is live (bounded); fails early if a
    /// child exits.
    func waitUntilHealthy(_ servers: [HostPort], children: [ChildProcess], root: FilePath) async throws {
        let deadline = ContinuousClock.now + .seconds(90)
        try await MetaClient.with(servers: servers, attemptsMax: 5, callTimeout: .seconds(3)) { client in
            while ContinuousClock.now < deadline {
                for child in children {
                    if let status = child.exitStatus() {
                        throw CairnError(.unavailable, "`cairn \(child.arguments.prefix(1).joined())` exited with status \(status); see \(root)/logs")
                    }
                }
                if let view = try? await client.cluster(), view.live.count >= Self.chunkservers { return }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw CairnError(.unavailable, "the cluster did not become healthy within 90 s; see \(root)/logs")
        }
    }
}
