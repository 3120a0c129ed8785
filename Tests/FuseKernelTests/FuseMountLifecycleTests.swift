import CairnCore
import CairnTestSupport
import FuseKernel
import FusePassthrough
import Logging
import ServiceLifecycle
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif
import Foundation

@Suite(.enabled(if: fuseAvailable, fuseUnavailableReason))
struct FuseMountLifecycleTests {
    @Test func aMissingMountpointFailsFastWithAClearError() throws {
        let source = TestDirectory("fuse-src")
        let fileSystem = try PassthroughFileSystem(source: source.path)
        let start = ContinuousClock.now
        do {
            _ = try FuseMount(mountpoint: source.path.appending("no/such/dir"), fileSystem: fileSystem, logger: quietLogger())
            Issue.record("a missing mountpoint was accepted")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("does not exist"), "\(error)")
        }
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    @Test func aFileIsNotAMountpoint() throws {
        let source = TestDirectory("fuse-src")
        let file = source.path.appending("file")
        try FileSystemCalls.writeFileAtomically(file, bytes: [1])
        let fileSystem = try PassthroughFileSystem(source: source.path)
        #expect(throws: CairnError.self) {
            do {
                _ = try FuseMount(mountpoint: file, fileSystem: fileSystem, logger: quietLogger())
            } catch let error as CairnError {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("not a directory"))
                throw error
            }
        }
    }

    @Test func aMountpointInUseIsBusy() async throws {
        try await withPassthroughMount { source, mountpoint, _ in
            let fileSystem = try PassthroughFileSystem(source: FilePath(source))
            do {
                _ = try FuseMount(mountpoint: FilePath(mountpoint), fileSystem: fileSystem, logger: quietLogger())
                Issue.record("a second mount on a busy mountpoint was accepted")
            } catch let error as CairnError {
                #expect(error.code == .alreadyExists)
                #expect(error.message.contains("busy"), "\(error)")
            }
        }
    }

    @Test func aMissingSourceIsNotFound() {
        #expect(throws: CairnError.self) { _ = try PassthroughFileSystem(source: "/nonexistent/cairn/source") }
    }

    @Test func fusermountFromOutsideEndsRun() async throws {
        let source = TestDirectory("fuse-src")
        let mountpoint = TestDirectory("fuse-mnt")
        let mount = try FuseMount(mountpoint: mountpoint.path, fileSystem: PassthroughFileSystem(source: source.path),
                                  logger: quietLogger())
        let path = mount.mountpoint.string
        defer { forceUnmount(path) }
        let running = Task { try await mount.run() }
        #expect(await mount.waitUntilMounted())
        #expect(isMounted(path))
        let status = try await offPool { try runCommand("/bin/fusermount3", ["-u", path]) }
        #expect(status == 0)
        let ended = await eventually(timeout: .seconds(10)) { running.isCancelled || isMounted(path) == false }
        #expect(ended)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await running.value }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw CairnError(.busy, "run() did not return within 10 s of fusermount3 -u")
            }
            try await group.next()
            group.cancelAll()
        }
        #expect(!isMounted(path))
    }

    @Test func gracefulShutdownOfTheServiceGroupUnmounts() async throws {
        let source = TestDirectory("fuse-src")
        let mountpoint = TestDirectory("fuse-mnt")
        let mount = try FuseMount(mountpoint: mountpoint.path, fileSystem: PassthroughFileSystem(source: source.path),
                                  logger: quietLogger())
        let path = mount.mountpoint.string
        defer { forceUnmount(path) }
        let group = ServiceGroup(configuration: .init(services: [.init(service: mount)], logger: quietLogger()))
        let running = Task { try await group.run() }
        #expect(await mount.waitUntilMounted())
        // A file held open makes the mount busy: it is detached at once (the name is gone)
        // and the session ends when the file is closed.
        let fd = try await offPool { open(path + "/held", O_CREAT | O_RDWR, 0o644) }
        #expect(fd >= 0)
        await group.triggerGracefulShutdown()
        #expect(await eventually(timeout: .seconds(10)) { !isMounted(path) })
        let written = try await offPool { write(fd, "still works", 11) }
        #expect(written == 11)
        _ = try await offPool { close(fd) }
        try await running.value
        #expect(try FileSystemCalls.readFile(source.path.appending("held"), bytesMax: 100) == Array("still works".utf8))
    }

    @Test func sigtermToThePassthroughProcessUnmounts() async throws {
        let source = TestDirectory("fuse-src")
        let mountpoint = TestDirectory("fuse-mnt")
        let logs = TestDirectory("logs")
        try FileSystemCalls.writeFileAtomically(source.path.appending("seen"), bytes: Array("through the mount".utf8))
        let path = mountpoint.path.string
        defer { forceUnmount(path) }
        let daemon = try DaemonProcess(["passthrough", source.path.string, path, "--foreground"],
                                       logDirectory: logs.path, name: "passthrough")
        let mounted = await eventually(timeout: .seconds(20)) { daemon.stdout.contains("mounted") || !daemon.process.isRunning }
        #expect(mounted && daemon.process.isRunning, "stderr: \(daemon.stderr)")
        #expect(isMounted(path))
        let seen = try await offPool { try testFileBytes(path + "/seen") }
        #expect(String(decoding: seen, as: UTF8.self) == "through the mount")
        let status = await daemon.stop(signal: SIGTERM)
        #expect(daemon.terminationReason == .exit)
        #expect(status == 0, "stderr: \(daemon.stderr)")
        #expect(!isMounted(path))
        #expect(daemon.stderr.contains("unmounted"))
    }

    @Test func theCommandRefusesAMissingMountpoint() async throws {
        let source = TestDirectory("fuse-src")
        let logs = TestDirectory("logs")
        let result = try runCairn(["passthrough", source.path.string, "/nonexistent/cairn/mnt", "--foreground"], logs: logs)
        #expect(result.status != 0)
        #expect(result.stderr.contains("does not exist"), "\(result.stderr)")
    }
}
