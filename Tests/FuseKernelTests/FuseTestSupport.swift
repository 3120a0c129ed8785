import CairnCore
import CairnTestSupport
import FuseKernel
import FusePassthrough
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// FUSE tests need /dev/fuse and root (they mount for real).
let fuseAvailable = access("/dev/fuse", R_OK | W_OK) == 0 && geteuid() == 0
let fuseUnavailableReason: Comment = "needs /dev/fuse and root: this machine cannot mount FUSE"

/// Runs blocking system calls on a thread of their own. An in-process mount answers requests
/// from Swift concurrency tasks; a test blocking the (small) cooperative pool on the mount could
/// starve the tasks that must answer it.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}

/// Whether `path` is a mount point in /proc/mounts.
func isMounted(_ path: String) -> Bool {
    let text = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
}

/// A last resort so that a failed test never leaves a mount behind.
func forceUnmount(_ path: String) {
    if isMounted(path) { _ = try? runCommand("/bin/fusermount3", ["-u", "-z", path]) }
}

/// Mounts a `PassthroughFileSystem` of a fresh source directory on a fresh mountpoint, in this
/// process, runs `body(source, mountpoint)`, and always unmounts.
func withPassthroughMount(_ options: FuseMount.Options = FuseMount.Options(),
                          _ body: (_ source: String, _ mountpoint: String, _ mount: FuseMount) async throws -> Void) async throws {
    let source = TestDirectory("fuse-src")
    let mountpoint = TestDirectory("fuse-mnt")
    let fileSystem = try PassthroughFileSystem(source: source.path)
    let mount = try FuseMount(mountpoint: mountpoint.path, options: options, fileSystem: fileSystem, logger: quietLogger())
    let running = Task { try await mount.run() }
    let mountpointPath = mount.mountpoint.string
    defer { forceUnmount(mountpointPath) }
    guard await mount.waitUntilMounted() else {
        try await running.value
        Issue.record("the mount ended before it was mounted")
        return
    }
    do {
        try await body(source.path.string, mountpointPath, mount)
    } catch {
        mount.stop()
        _ = try? await running.value
        throw error
    }
    mount.stop()
    try await running.value
    #expect(!isMounted(mountpointPath))
}

/// The errno of a failed call, as a transcript word.
func errnoName(_ code: Int32) -> String { "errno \(code) (\(String(cString: strerror(code))))" }
