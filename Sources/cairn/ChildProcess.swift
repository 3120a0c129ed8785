import CairnCore
import Foundation
import Glibc
import SystemPackage

/// A child process of this `cairn` binary, started with `posix_spawn(3)`: its stdout and stderr
/// go to a log file, and it can run in its own process group (`POSIX_SPAWN_SETPGROUP`), so a Ctrl-C at
/// the terminal reaches only the parent, which then stops it in order.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let arguments: [String]
    private var status: Int32?

    /// The path of the running executable (`/proc/self/exe`).
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// - Throws: `CairnError(.io)` if the process cannot be started.
    init(arguments: [String], output: FilePath, newSession: Bool) throws(CairnError) {
        self.arguments = arguments
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.string, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if newSession {
            // A process group of its own (pgid = its pid): the terminal's Ctrl-C goes to the
            // foreground group only, so the parent decides when and in which order children stop.
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        let argv = ([Self.executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, Self.executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw CairnError(.io, "cannot start \(Self.executable) \(arguments.joined(separator: " "))", cause: String(cString: strerror(result)))
        }
        pid = child
    }

    /// The exit status once the process has ended (128+signal if killed), nil while it runs.
    func exitStatus() -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        guard waitpid(pid, &raw, WNOHANG) == pid else { return nil }
        let exit = (raw & 0x7F) == 0 ? (raw >> 8) & 0xFF : 128 + (raw & 0x7F)
        status = exit
        return exit
    }

    /// Sends `signal` and waits up to `timeout` for the exit; then SIGKILL. Returns the status.
    @discardableResult
    func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32 {
        if let status = exitStatus() { return status }
        kill(pid, signal)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = exitStatus() { return status }
            try? await Task.sleep(for: .milliseconds(20))
        }
        kill(pid, SIGKILL)
        while exitStatus() == nil { try? await Task.sleep(for: .milliseconds(20)) }
        return exitStatus()!
    }
}
