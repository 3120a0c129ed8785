import CairnCore
import Foundation
import SystemPackage

/// A Cairn cluster of real processes on loopback for integration tests: `cairn meta`
/// replicas and `cairn chunkserver`s, each started, killed and restarted by id, with logs in a
/// temp directory. Every process still running is killed when the cluster is released.
public final class LocalCluster: @unchecked Sendable {
    public let logs = TestDirectory("cluster-logs")
    public let data = TestDirectory("cluster-data")
    public let metaPorts: [Int]
    public private(set) var chunkserverPorts: [Int]
    public private(set) var replicas: [Int: DaemonProcess] = [:]
    public private(set) var chunkservers: [Int: DaemonProcess] = [:]
    private var generation = 0
    /// Extra arguments for every `cairn meta` start (e.g. a short snapshot interval).
    public var metaArguments: [String] = ["--snapshot-entries", "200"]

    public init(replicas: Int = 3, chunkservers: Int = 0) throws {
        let ports = try freeLoopbackPorts(replicas + chunkservers)
        metaPorts = Array(ports.prefix(replicas))
        chunkserverPorts = Array(ports.dropFirst(replicas))
    }

    public var metaServers: [HostPort] { metaPorts.map { HostPort(host: "127.0.0.1", port: $0) } }
    public var metaList: String { metaServers.map(\.description).joined(separator: ",") }
    public func metaAddress(_ id: Int) -> HostPort { HostPort(host: "127.0.0.1", port: metaPorts[id - 1]) }
    /// The founding members (ids 1…3, or fewer).
    public var founders: String { peerList(1...min(3, metaPorts.count)) }
    public func peerList(_ ids: ClosedRange<Int>) -> String { ids.map { "\($0)=127.0.0.1:\(metaPorts[$0 - 1])" }.joined(separator: ",") }

    /// Starts replica `id`: a founder (with `--bootstrap`, which later starts ignore), or
    /// with `joining` an empty replica that waits to be added with `cairn meta add`.
    public func startReplica(_ id: Int, joining: Bool = false) async throws {
        generation += 1
        var arguments = ["meta", "--id", "\(id)", "--data", data.path.appending("meta\(id)").string,
                         "--listen", "127.0.0.1:\(metaPorts[id - 1])"] + metaArguments
        arguments += joining ? ["--peers", peerList(1...metaPorts.count)] : ["--peers", founders, "--bootstrap"]
        let daemon = try DaemonProcess(arguments, logDirectory: logs.path, name: "meta\(id)-\(generation)")
        _ = try await daemon.waitForAddress()
        replicas[id] = daemon
    }

    public func startFounders() async throws {
        for id in 1...min(3, metaPorts.count) { try await startReplica(id) }
    }

    /// Stops replica `id` with `signal`; returns its exit status (nil if it was not running).
    @discardableResult
    public func killReplica(_ id: Int, signal: Int32 = SIGKILL) async -> Int32? {
        defer { replicas[id] = nil }
        return await replicas[id]?.stop(signal: signal)
    }

    /// Starts chunkserver `index` (1-based) registered with the metadata replicas.
    public func startChunkserver(_ index: Int, extra: [String] = []) async throws {
        generation += 1
        let arguments = ["chunkserver", "--data", data.path.appending("chunks\(index)").string,
                         "--listen", "127.0.0.1:\(chunkserverPorts[index - 1])", "--meta", metaList, "--reserve", "0",
                         "--failure-domain", "cs\(index)"] + extra
        let daemon = try DaemonProcess(arguments, logDirectory: logs.path, name: "chunks\(index)-\(generation)")
        _ = try await daemon.waitForAddress()
        chunkservers[index] = daemon
    }

    @discardableResult
    public func killChunkserver(_ index: Int, signal: Int32 = SIGKILL) async -> Int32? {
        defer { chunkservers[index] = nil }
        return await chunkservers[index]?.stop(signal: signal)
    }

    /// Adds `count` chunkserver ports (for servers added later in a test).
    public func reserveChunkserverPorts(_ count: Int) throws {
        chunkserverPorts += try freeLoopbackPorts(count)
    }

    public func chunkDirectory(_ index: Int) -> FilePath { data.path.appending("chunks\(index)") }

    /// Mounts the cluster at `mountpoint` with a `cairn mount --foreground` process; returns
    /// once the kernel has the mount.
    @discardableResult
    public func mount(at mountpoint: FilePath, options: String = "") async throws -> DaemonProcess {
        generation += 1
        var arguments = ["mount", "--meta", metaList, mountpoint.string, "--foreground"]
        if !options.isEmpty { arguments += ["-o", options] }
        let daemon = try DaemonProcess(arguments, logDirectory: logs.path, name: "mount-\(generation)")
        mounts[mountpoint] = daemon
        guard await daemon.waitForLine(containing: "cairn mounted") else {
            throw CairnError(.unavailable, "mount at \(mountpoint) did not come up: \(daemon.stderr.suffix(2000))")
        }
        return daemon
    }

    /// Unmounts (`fusermount3 -u`) and waits for the mount process to exit; returns its status.
    @discardableResult
    public func unmount(_ mountpoint: FilePath) async -> Int32? {
        guard let daemon = mounts.removeValue(forKey: mountpoint) else { return nil }
        _ = try? runCommand("/bin/fusermount3", ["-u", mountpoint.string])
        return await daemon.stop(signal: SIGTERM)
    }

    public private(set) var mounts: [FilePath: DaemonProcess] = [:]

    deinit {
        for (mountpoint, daemon) in mounts {
            _ = try? runCommand("/bin/fusermount3", ["-u", "-z", mountpoint.string])
            kill(daemon.pid, SIGKILL)
        }
        for daemon in replicas.values { kill(daemon.pid, SIGKILL) }
        for daemon in chunkservers.values { kill(daemon.pid, SIGKILL) }
    }
}
