import CairnCore
import CairnTestSupport
import Foundation
import Glibc
import SystemPackage
import Testing

/// A running cluster (3 metadata replicas, `chunkservers` chunkservers) and one mount of it.
final class MountedCluster: @unchecked Sendable {
    let cluster: LocalCluster
    let mountDirectory = TestDirectory("mnt")
    var mountpoint: FilePath { mountDirectory.path }

    init(chunkservers: Int = 3, options: String = "") async throws {
        cluster = try LocalCluster(replicas: 3, chunkservers: chunkservers)
        try await cluster.startFounders()
        for index in 1...chunkservers { try await cluster.startChunkserver(index) }
        try await waitForChunkservers(chunkservers)
        try await cluster.mount(at: mountpoint, options: options)
    }

    /// Waits until `count` chunkservers are live (as `cairn status --json` shows).
    func waitForChunkservers(_ count: Int) async throws {
        let ready = await eventually(timeout: .seconds(30)) {
            guard let (status, stdout, _) = try? runCairn(["status", "--meta", cluster.metaList, "--json"], logs: cluster.logs), status == 0,
                  let json = try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any],
                  let servers = json["chunkservers"] as? [[String: Any]] else { return false }
            return servers.filter { $0["live"] as? Bool == true }.count >= count
        }
        guard ready else { throw CairnError(.unavailable, "chunkservers did not register") }
    }

    func path(_ name: String) -> String { mountpoint.appending(name).string }

    deinit {
        _ = try? runCommand("/bin/fusermount3", ["-u", "-z", mountpoint.string])
    }
}

/// SHA-256 of a file, read through the kernel.
func sha256(ofFile path: String) throws -> ChunkID {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw CairnError(.io, "open \(path): errno \(errno)") }
    defer { close(fd) }
    let hasher = SHA256()
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw CairnError(.io, "read \(path): errno \(errno)") }
        if n == 0 { break }
        buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
    return hasher.finalize()
}

/// Writes `count` bytes of seeded data to `path` in 1 MiB writes, fsyncs, closes; returns their SHA-256.
@discardableResult
func writeSeededFile(_ path: String, count: Int, seed: UInt64) throws -> ChunkID {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw CairnError(.io, "create \(path): errno \(errno)") }
    let hasher = SHA256()
    var generator = SplitMix(seed: seed)
    var written = 0
    var block = [UInt8](repeating: 0, count: 1 << 20)
    while written < count {
        let n = min(block.count, count - written)
        block.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<words.count { words[i] = generator.next() }
        }
        block.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        let done = block.withUnsafeBytes { write(fd, $0.baseAddress, n) }
        guard done == n else {
            let code = errno
            close(fd)
            throw CairnError(.io, "write \(path): \(done) of \(n), errno \(code)")
        }
        written += n
    }
    guard fsync(fd) == 0 else { let code = errno; close(fd); throw CairnError(.io, "fsync \(path): errno \(code)") }
    guard close(fd) == 0 else { throw CairnError(.io, "close \(path): errno \(errno)") }
    return hasher.finalize()
}

/// Drops the kernel's page cache, so reads go to the file system.
func dropCaches() {
    _ = try? runCommand("/bin/sync", [])
    let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
    if fd >= 0 {
        _ = write(fd, "3\n", 2)
        close(fd)
    }
}

/// A size from the environment (for longer local runs), or the default.
func environmentBytes(_ name: String, default value: Int) -> Int {
    ProcessInfo.processInfo.environment[name].flatMap { ByteCount.parse($0) }.map(Int.init) ?? value
}
