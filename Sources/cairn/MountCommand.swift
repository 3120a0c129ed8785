import ArgumentParser
import CairnCore
import CairnMount
import Foundation
import FuseKernel
import Logging
import SystemPackage

/// `cairn mount`: mounts the namespace at a directory through FUSE.
struct MountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a Cairn cluster at a directory (FUSE).",
        discussion: """
        Options (-o, comma-separated): allow_other, ro, rw, default_permissions (always on), direct_io, \
        attr_timeout=SECONDS, entry_timeout=SECONDS, negative_timeout=SECONDS (how long a missing name is remembered; \
        default 0), cache_size=BYTES (chunk cache, e.g. 512M), replicas=R (default 3), \
        fsname=NAME. Options mount(8) passes (defaults, _netdev, nofail, auto, noauto, user, nouser, suid, nosuid, dev, \
        nodev, exec, noexec, async, atime, noatime, relatime) are accepted and ignored.
        Without --foreground the mount runs in the background (logging to --log-file) once it is mounted.
        """)

    @OptionGroup var meta: MetaServersOption
    @Argument(help: "The directory to mount at.") var mountpoint: String
    @Option(name: .short, help: "Mount options, comma-separated.") var o: String = ""
    @Flag(help: "Stay in the foreground (otherwise detach once mounted).") var foreground = false
    @Option(help: "Where a background mount logs.") var logFile: String?
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try MountOptionsParser.parse(o)
    }

    func run() async throws {
        if !foreground {
            try detach()
            return
        }
        let (fuse, options) = try MountOptionsParser.parse(o)
        let logger = logging.makeLogger(label: "cairn.mount")
        let servers = meta.list
        let mountpoint = self.mountpoint
        do {
            try await CairnMountRunner.run(metaServers: servers, mountpoint: FilePath(mountpoint), fuse: fuse, options: options, logger: logger) {
                // Scripts, the mount helper and tests wait for this line.
                printLine("cairn mounted \(servers.map(\.description).joined(separator: ",")) at \(mountpoint)")
            }
        } catch {
            printError("cairn mount: \(error)")
            throw ExitCode.failure
        }
    }

    /// Starts `cairn mount --foreground` in a new session with its output in the log file and
    /// waits until the kernel lists the mount (exit 0) or the child gives up (its error, exit 1).
    func detach() throws {
        let target = FilePath(mountpoint).lexicallyNormalized()
        let absolute = target.isAbsolute ? target : FilePath(FileManager.default.currentDirectoryPath).pushing(target)
        let log = logFile ?? "/tmp/cairn-mount.\(getpid()).log"
        var arguments = ["mount", "--meta", meta.meta, absolute.string, "--foreground", "--log-level", logging.logLevel]
        if !o.isEmpty { arguments += ["-o", o] }
        let child = try ChildProcess(arguments: arguments, output: FilePath(log), newSession: true)
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if let text = try? String(contentsOfFile: log, encoding: .utf8), text.contains("cairn mounted ") {
                printLine("cairn mounted \(meta.meta) at \(absolute) (pid \(child.pid), log \(log))")
                return
            }
            if let status = child.exitStatus() {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                printError(text.split(separator: "\n").suffix(5).joined(separator: "\n"))
                printError("cairn mount: the mount process exited with status \(status)")
                throw ExitCode.failure
            }
            usleep(50_000)
        }
        printError("cairn mount: not mounted after 60 s; see \(log)")
        throw ExitCode.failure
    }
}

/// Parses `-o` mount options into FUSE's and Cairn's.
enum MountOptionsParser {
    static let ignored: Set<String> = ["defaults", "_netdev", "nofail", "auto", "noauto", "user", "nouser", "users", "suid", "nosuid",
                                       "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime", "relatime", "rw",
                                       "default_permissions"]

    static func parse(_ text: String) throws -> (FuseMount.Options, CairnMountOptions) {
        var fuse = FuseMount.Options()
        var cairn = CairnMountOptions()
        for item in text.split(separator: ",").map(String.init) where !item.isEmpty {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            let key = parts[0], value = parts.count == 2 ? parts[1] : nil
            func number() throws -> Double {
                guard let value, let parsed = Double(value), parsed >= 0 else { throw ValidationError("mount option \(key) needs a number") }
                return parsed
            }
            switch key {
            case "allow_other": fuse.allowOther = true
            case "ro": fuse.readOnly = true
            case "direct_io": fuse.directIO = true
            case "attr_timeout": fuse.attributeTimeout = try number()
            case "entry_timeout": fuse.entryTimeout = try number()
            case "negative_timeout": fuse.negativeTimeout = try number()
            case "fsname":
                guard let value, !value.isEmpty else { throw ValidationError("fsname needs a value") }
                fuse.fileSystemName = value
            case "cache_size":
                guard let value, let bytes = ByteCount.parse(value), bytes > 0 else { throw ValidationError("cache_size needs a size, e.g. 512M") }
                cairn.chunkCacheBytes = Int(bytes)
            case "readahead":
                guard let value, let chunks = Int(value) else { throw ValidationError("readahead needs a number of chunks") }
                cairn.readaheadChunks = chunks
            case "replicas", "r":
                guard let value, let replicas = Int(value) else { throw ValidationError("replicas needs a number") }
                cairn.replicas = replicas
            default:
                guard ignored.contains(key) else { throw ValidationError("unknown mount option '\(key)'") }
            }
        }
        do {
            try fuse.validate()
            try cairn.validate()
        } catch {
            throw ValidationError("\(error)")
        }
        return (fuse, cairn)
    }
}
