import CairnCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import Foundation
#else
import Foundation
#endif

/// The built `cairn` executable: `$CAIRN_BIN`, or `.build/debug/cairn` in the package root
/// (`tools/test` builds it before running tests).
public func cairnExecutable() throws -> String {
    if let path = ProcessInfo.processInfo.environment["CAIRN_BIN"] { return path }
    var root = FilePath(#filePath)
    for _ in 0..<3 { root.removeLastComponent() }
    for candidate in [".build/debug/cairn", ".build/release/cairn"] {
        let path = root.appending(candidate).string
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw CairnError(.notFound, "cairn executable not found under \(root)/.build; run `swift build` first or set CAIRN_BIN")
}

/// A real `cairn` daemon process for integration tests: started with arguments, its standard
/// output and error captured in files, its listening address read from the line it prints,
/// stopped by PID.
public final class DaemonProcess: @unchecked Sendable {
    public let process: Process
    public let stdoutPath: String
    public let stderrPath: String

    /// Starts `cairn ARGUMENTS…`.
    public init(_ arguments: [String], logDirectory: FilePath, name: String) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: try cairnExecutable())
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        process.environment = environment
        stdoutPath = logDirectory.appending("\(name).stdout").string
        stderrPath = logDirectory.appending("\(name).stderr").string
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }

    /// Waits for a line of standard output containing `marker`; false if the process exits or
    /// `timeout` passes first.
    public func waitForLine(containing marker: String, timeout: Duration = .seconds(30)) async -> Bool {
        await eventually(timeout: timeout) {
            if ((try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "").contains(marker) { return true }
            return false
        }
    }

    /// Waits for a line of standard output containing `marker` and returns the `HOST:PORT`
    /// that ends it.
    public func waitForAddress(marker: String = "listening on", timeout: Duration = .seconds(20)) async throws -> HostPort {
        var found: HostPort?
        let ok = await eventually(timeout: timeout) {
            let text = (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.contains(marker) {
                if let last = line.split(separator: " ").last, let address = HostPort(String(last)) {
                    found = address
                    return true
                }
            }
            return !process.isRunning
        }
        guard ok, let found else {
            throw CairnError(.unavailable, "daemon did not report its address; stderr:\n\(stderr)")
        }
        return found
    }

    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }

    /// Sends `signal` and waits for the process to exit; returns its termination status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32 {
        if process.isRunning { kill(pid, signal) }
        let exited = await eventually(timeout: timeout) { !process.isRunning }
        if !exited {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    public var terminationReason: Process.TerminationReason { process.terminationReason }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A small tmpfs mounted for a test (root only), unmounted at the end: a disk that fills up.
public struct SmallDisk: ~Copyable {
    public let path: FilePath
    private let directory: TestDirectory

    public init(sizeBytes: Int) throws {
        directory = TestDirectory("disk")
        path = directory.path
        let status = try runCommand("/bin/mount", ["-t", "tmpfs", "-o", "size=\(sizeBytes)", "tmpfs", path.string])
        guard status == 0 else {
            throw CairnError(.unavailable, "cannot mount a tmpfs at \(path) (tests need root)")
        }
    }

    deinit { _ = try? runCommand("/bin/umount", ["-l", path.string]) }
}

/// Runs a command to completion; returns its exit status.
@discardableResult
public func runCommand(_ executable: String, _ arguments: [String]) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}

/// Runs `cairn ARGUMENTS…` to completion and captures its output.
public func runCairn(_ arguments: [String], logs: borrowing TestDirectory) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try cairnExecutable())
    process.arguments = arguments
    let out = logs.path.appending("run-\(UInt64.random(in: 0...UInt64.max)).out").string
    let err = out + ".err"
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    _ = FileManager.default.createFile(atPath: err, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    try process.run()
    process.waitUntilExit()
    return (process.terminationStatus,
            (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
            (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// The whole contents of a file.
public func testFileBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CairnError(.notFound, "cannot read \(path)")
    }
    return [UInt8](data)
}
