import CCairnLinux
import CairnCore
import CairnTestSupport
import Foundation
import Glibc
import SystemPackage
import Testing

/// The FUSE client against a real cluster of processes, through real system calls.
@Suite(.serialized) struct CairnMountTests {
    /// A large random file and many small files read back intact after dropping the page cache
    /// and after unmount/remount; a source tree copied in compares equal with `diff -r`.
    /// CI sizes: 64 MiB and 200 files; the issue's sizes with
    /// `CAIRN_MOUNT_BIG_BYTES=1GiB CAIRN_MOUNT_SMALL_FILES=10000 swift test --filter dataReadsBack`.
    @Test func dataReadsBackIntactAfterDroppingCachesAndRemounting() async throws {
        let mounted = try await MountedCluster()
        let bigBytes = environmentBytes("CAIRN_MOUNT_BIG_BYTES", default: 64 << 20)
        let smallFiles = environmentBytes("CAIRN_MOUNT_SMALL_FILES", default: 200)
        let big = try writeSeededFile(mounted.path("big.bin"), count: bigBytes, seed: 7)
        try FileManager.default.createDirectory(atPath: mounted.path("small"), withIntermediateDirectories: false)
        var smallHashes: [String: ChunkID] = [:]
        for i in 0..<smallFiles {
            let name = "small/f\(i)"
            smallHashes[name] = try writeSeededFile(mounted.path(name), count: 1 + (i * 7919) % 20000, seed: UInt64(1000 + i))
        }
        let tree = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources").path
        #expect(try runCommand("/bin/cp", ["-r", tree, mounted.path("tree")]) == 0)

        func check(_ when: String) throws {
            #expect(try sha256(ofFile: mounted.path("big.bin")) == big, "big file \(when)")
            let attributes = try FileManager.default.attributesOfItem(atPath: mounted.path("big.bin"))
            #expect((attributes[.size] as? Int) == bigBytes, "size \(when)")
            for (name, hash) in smallHashes where try sha256(ofFile: mounted.path(name)) != hash {
                Issue.record("\(name) differs \(when)")
            }
            #expect(try runCommand("/usr/bin/diff", ["-r", "-q", tree, mounted.path("tree")]) == 0, "tree differs \(when)")
        }
        dropCaches()
        try check("after dropping caches")
        #expect(await mounted.cluster.unmount(mounted.mountpoint) == 0)
        try await mounted.cluster.mount(at: mounted.mountpoint)
        try check("after remounting")
    }

    /// Close-to-open consistency between two mounts of one cluster.
    @Test func whatOneMountClosesTheOtherOpensAndReads() async throws {
        let mounted = try await MountedCluster()
        let second = TestDirectory("mnt2")
        try await mounted.cluster.mount(at: second.path)
        defer { _ = try? runCommand("/bin/fusermount3", ["-u", "-z", second.path.string]) }
        let hash = try writeSeededFile(mounted.path("shared.bin"), count: 9 << 20, seed: 3)
        #expect(try sha256(ofFile: second.path.appending("shared.bin").string) == hash)
        // The other way, with an overwrite in the middle of a chunk (read-modify-write).
        let fd = open(second.path.appending("shared.bin").string, O_WRONLY)
        #expect(fd >= 0)
        let patch = [UInt8](repeating: 0xAB, count: 5000)
        #expect(pwrite(fd, patch, patch.count, 4_194_000) == patch.count)
        let closed = close(fd)
        if closed != 0 {
            let code = errno
            Issue.record("close failed with errno \(code): \(mounted.cluster.mounts.values.map { $0.stderr.suffix(1500) })")
        }
        let seen = try testFileBytes(mounted.path("shared.bin"))
        #expect(seen.count == 9 << 20)
        #expect(Array(seen[4_194_000..<4_199_000]) == patch)
        #expect(seen[4_193_999] != 0xAB || seen[4_199_000] != 0xAB)

        // File capabilities: the kernel asks for security.capability before every write; the
        // mount answers as the service would (no security.* attributes: EOPNOTSUPP) without
        // asking, and setting one is refused the same way.
        let capFile = mounted.path("cap.bin")
        try writeSeededFile(capFile, count: 1000, seed: 4)
        #expect(capability(of: capFile) == .failure(Errno(rawValue: EOPNOTSUPP)))
        let blob: [UInt8] = [0, 0, 0, 2, 0, 0x20] + [UInt8](repeating: 0, count: 14)  // vfs_cap_data rev. 2, cap_net_raw
        #expect(cairn_lsetxattr(capFile, "security.capability", blob, blob.count, 0) == -1 && errno == EOPNOTSUPP)
        let capFD = open(capFile, O_WRONLY)
        let head: [UInt8] = [1, 2, 3]
        #expect(pwrite(capFD, head, head.count, 0) == head.count)
        #expect(close(capFD) == 0)
        let capBytes = try testFileBytes(capFile)
        #expect(Array(capBytes.prefix(3)) == head && capBytes.count == 1000)
        #expect(await mounted.cluster.unmount(second.path) == 0)
    }

    /// The `security.capability` attribute of `path`, or the errno of reading it.
    private func capability(of path: String) -> Result<[UInt8], Errno> {
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = cairn_lgetxattr(path, "security.capability", &buffer, buffer.count)
        return n < 0 ? .failure(Errno(rawValue: errno)) : .success(Array(buffer[0..<n]))
    }

    /// Errors at start: a missing or non-directory mountpoint, an unreachable metadata service.
    @Test func badMountsFailFastWithAClearMessage() async throws {
        let logs = TestDirectory("mount-errors")
        let start = ContinuousClock.now
        let missing = try runCairn(["mount", "--meta", "127.0.0.1:1", "/nonexistent/cairn-mnt", "--foreground"], logs: logs)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("/nonexistent/cairn-mnt"), "\(missing.stderr)")
        let file = logs.path.appending("a-file").string
        _ = FileManager.default.createFile(atPath: file, contents: Data([1]))
        let notDirectory = try runCairn(["mount", "--meta", "127.0.0.1:1", file, "--foreground"], logs: logs)
        #expect(notDirectory.status != 0)
        let directory = TestDirectory("mnt-unreachable")
        let port = try freeLoopbackPorts(1)[0]
        let unreachable = try runCairn(["mount", "--meta", "127.0.0.1:\(port)", directory.path.string, "--foreground"], logs: logs)
        #expect(unreachable.status != 0)
        #expect(unreachable.stderr.contains("cannot reach the metadata service"), "\(unreachable.stderr)")
        #expect(ContinuousClock.now - start < .seconds(60))
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.contains(directory.path.string))
    }

    /// Chunkserver crashes during a large write and a large read, a corrupt replica, and a
    /// metadata leader crash during a copy: the application sees no error and correct data.
    @Test func faultsDoNotReachTheApplication() async throws {
        let mounted = try await MountedCluster(chunkservers: 4, options: "replicas=2")
        let size = environmentBytes("CAIRN_MOUNT_FAULT_BYTES", default: 64 << 20)
        // Kill a chunkserver while a large file is being written.
        let writer = Task.detached { try writeSeededFile(mounted.path("during-write.bin"), count: size, seed: 11) }
        try await Task.sleep(for: .milliseconds(300))
        await mounted.cluster.killChunkserver(1)
        let written = try await writer.value
        dropCaches()
        #expect(try sha256(ofFile: mounted.path("during-write.bin")) == written)

        // Kill another while a large file is being read (the dead one stays dead: R-1 = 1 loss at a time).
        try await mounted.cluster.startChunkserver(1)
        try await mounted.waitForChunkservers(4)
        let readable = try writeSeededFile(mounted.path("during-read.bin"), count: size, seed: 12)
        dropCaches()
        let reader = Task.detached { try sha256(ofFile: mounted.path("during-read.bin")) }
        try await Task.sleep(for: .milliseconds(200))
        await mounted.cluster.killChunkserver(2)
        #expect(try await reader.value == readable)
        try await mounted.cluster.startChunkserver(2)
        try await mounted.waitForChunkservers(4)

        // Flip a byte in every stored copy on one server: reads still return the right bytes.
        let victim = try writeSeededFile(mounted.path("victim.bin"), count: 6 << 20, seed: 13)
        var flipped = 0
        for index in 1...4 {
            let chunks = mounted.cluster.chunkDirectory(index).appending("chunks")
            guard let enumerator = FileManager.default.enumerator(atPath: chunks.string) else { continue }
            for case let name as String in enumerator where name.count == 67 && !name.hasSuffix(".crc") {
                try flipByte(in: chunks.appending(name), at: 100)
                flipped += 1
            }
            if flipped > 0 { break }
        }
        #expect(flipped > 0)
        dropCaches()
        #expect(try sha256(ofFile: mounted.path("victim.bin")) == victim)

        // Kill the metadata leader during a recursive copy.
        let tree = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources").path
        let copier = Task.detached { try runCommand("/bin/cp", ["-r", tree, mounted.path("copy")]) }
        try await Task.sleep(for: .milliseconds(300))
        let (_, stdout, _) = try runCairn(["status", "--meta", mounted.cluster.metaList, "--json"], logs: mounted.cluster.logs)
        let json = try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any]
        if let leader = json?["leader"] as? String, let id = mounted.cluster.metaServers.firstIndex(where: { $0.description == leader }) {
            await mounted.cluster.killReplica(id + 1)
        } else {
            Issue.record("no leader to kill")
        }
        #expect(try await copier.value == 0)
        #expect(try runCommand("/usr/bin/diff", ["-r", "-q", tree, mounted.path("copy")]) == 0)
    }

    /// Writes are acknowledged when buffered; when the upload of buffered bytes fails under a
    /// later write (the buffer was full), that write gets EIO and the next fsync fails too, once
    /// — the lost bytes were earlier writes', which the application may believe are safe.
    @Test func anUploadLostUnderAWriteFailsTheNextFsync() async throws {
        let mounted = try await MountedCluster(chunkservers: 1, options: "replicas=1")
        let fd = open(mounted.path("lost.bin"), O_WRONLY | O_CREAT, 0o644)
        try #require(fd >= 0)
        defer { close(fd) }
        let piece = [UInt8](repeating: 7, count: 1 << 20)
        func writePiece(_ offset: Int) -> Int32? {
            let n = piece.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            return n == piece.count ? nil : (n < 0 ? errno : EIO)
        }
        // 3 MiB at the start of each of ten chunks: partial chunks stay buffered (30 MiB).
        for chunk in 0..<10 {
            for mib in 0..<3 { #expect(writePiece(chunk * (4 << 20) + mib << 20) == nil) }
        }
        await mounted.cluster.killChunkserver(1)
        // More, until a write finds the buffer (64 MiB) full: it uploads everything, which fails.
        var failed: Int32?
        outer: for chunk in 10..<30 {
            for mib in 0..<3 {
                failed = writePiece(chunk * (4 << 20) + mib << 20)
                if failed != nil { break outer }
            }
        }
        #expect(failed == EIO)
        // Nothing is buffered now, but acknowledged bytes are gone: fsync says so, once.
        #expect(fsync(fd) == -1 && errno == EIO)
        #expect(fsync(fd) == 0)
    }
}
