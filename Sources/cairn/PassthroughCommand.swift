import ArgumentParser
import CairnCore
import FuseKernel
import FusePassthrough
import Logging
import ServiceLifecycle
import SystemPackage

/// `cairn passthrough`: mount a FUSE mirror of a local directory, the baseline `tools/bench`
/// runs side by side with Cairn (same FUSE bridge, no Cairn behind it).
struct PassthroughCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "passthrough",
        abstract: "Mount a FUSE mirror of SOURCE at MOUNTPOINT (a benchmark baseline).",
        shouldDisplay: false
    )

    @Argument(help: "The directory to mirror.")
    var source: String

    @Argument(help: "An empty directory to mount on.")
    var mountpoint: String

    @Flag(help: "Stay in the foreground (the only mode so far: the command serves until SIGTERM/SIGINT or an unmount).")
    var foreground = false

    @Flag(help: "Let other users in (allow_other).")
    var allowOther = false

    @Flag(help: "Bypass the page cache (direct_io on every open file).")
    var directIO = false

    @Flag(help: "Let the kernel cache writes (FUSE writeback cache).")
    var writebackCache = false

    @Option(help: "libfuse worker threads at most.")
    var threadsMax = 16

    @Option(help: "Threads that run the system calls on SOURCE.")
    var ioThreads = PassthroughFileSystem.ioThreadsDefault

    @Option(help: "Seconds the kernel caches entries and attributes.")
    var cacheTimeout = 1.0

    @Flag(help: "libfuse's trace of every request on standard error.")
    var debug = false

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = logging.makeLogger(label: "cairn.passthrough")
        var options = FuseMount.Options()
        options.fileSystemName = "cairn-passthrough"
        options.subtype = "cairn-passthrough"
        options.allowOther = allowOther
        options.directIO = directIO
        options.writebackCache = writebackCache
        options.threadsMax = threadsMax
        options.idleThreadsMax = min(options.idleThreadsMax, threadsMax)
        options.entryTimeout = cacheTimeout
        options.attributeTimeout = cacheTimeout
        options.debug = debug
        // The kernel checks permissions (default_permissions); groups are not needed.
        options.resolvesSupplementaryGroups = false
        let mount: FuseMount
        do {
            let fileSystem = try PassthroughFileSystem(source: FilePath(source), ioThreads: ioThreads)
            mount = try FuseMount(mountpoint: FilePath(mountpoint), options: options, fileSystem: fileSystem, logger: logger)
        } catch {
            printError("cairn passthrough: \(error)")
            throw ExitCode.failure
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: mount)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                tasks.addTask {
                    // Scripts and tests wait for this line.
                    if await mount.waitUntilMounted() {
                        printLine("cairn passthrough mounted \(source) at \(mount.mountpoint)")
                    }
                }
                try await tasks.waitForAll()
            }
        } catch {
            printError("cairn passthrough: \(error)")
            throw ExitCode.failure
        }
        printError("cairn passthrough: unmounted \(mount.mountpoint)")
    }
}
