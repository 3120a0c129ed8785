import CFuse
import CairnCore
import Logging
import ServiceLifecycle
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A `FuseFileSystem` mounted at a directory: a `Service` whose `run()` mounts, serves requests
/// on libfuse's multi-threaded loop (on threads of its own, not Swift concurrency's), and
/// unmounts.
///
/// `run()` returns when the service group shuts down gracefully (SIGTERM/SIGINT), when its task
/// is cancelled, when `stop()` is called, or when someone unmounts the file system from outside
/// (`fusermount3 -u`, `umount`). On the way out it waits (at most `Options.drainTimeout`) for
/// requests still being answered, then unmounts and destroys the session.
public final class FuseMount: Service, Sendable {
    /// How the file system is mounted and served; checked by `validate()`.
    public struct Options: Sendable {
        /// Let users other than the mounting one in (`allow_other`; needs `user_allow_other`
        /// in /etc/fuse.conf unless root).
        public var allowOther = false
        /// Mount read-only (`ro`).
        public var readOnly = false
        /// Let the kernel check permissions from the mode bits (`default_permissions`); the file
        /// system then never sees `access` and need not check them itself.
        public var defaultPermissions = true
        /// The "device" column of /proc/mounts (`fsname=`); no commas.
        public var fileSystemName = "cairn"
        /// The type shows as `fuse.SUBTYPE` (`subtype=`); no commas.
        public var subtype = "cairn"
        /// Seconds the kernel caches name → node bindings and attributes, unless an entry says otherwise.
        public var entryTimeout = 1.0
        public var attributeTimeout = 1.0
        /// Seconds the kernel remembers that a name does not exist (`negative_timeout=`): a lookup
        /// that finds nothing is answered with an empty entry that the kernel caches, so the next
        /// lookups of that name (a build's include-path search, an `lstat` before a create) do not
        /// reach the file system, and a create of it without O_EXCL goes straight to `create`
        /// (exclusive creates, mkdir, link, symlink and rename targets look the name up again).
        /// The price: a name another client creates stays invisible here for up to this long, and
        /// so does one whose create on this mount failed with EIO although the service applied it
        /// (a reply lost in an election). 0 (the default): the kernel caches no missing names.
        public var negativeTimeout = 0.0
        /// Bypass the page cache for every opened file (reads and writes go straight to the file system).
        public var directIO = false
        /// Let the kernel cache writes (`FUSE_CAP_WRITEBACK_CACHE`); off keeps close-to-open consistency.
        public var writebackCache = false
        /// Largest write request (`conn->max_write`); the kernel caps it at 1 MiB (256 pages).
        public var writeBytesMax = 1 << 20
        /// libfuse worker threads at most, and idle ones kept.
        public var threadsMax = 16
        public var idleThreadsMax = 4
        /// Read each caller's supplementary groups (`fuse_req_getgroups`, a /proc read per request;
        /// not for root).
        public var resolvesSupplementaryGroups = true
        /// Supplementary groups read per caller at most; the rest are ignored.
        public var supplementaryGroupsMax = 64
        /// How long shutdown waits for requests still being answered before it unmounts anyway.
        public var drainTimeout: Duration = .seconds(10)
        /// libfuse's debug trace of every request on standard error (`-d`).
        public var debug = false

        public init() {}

        /// - Throws: `CairnError.invalidArgument` naming the first bad option.
        public func validate() throws(CairnError) {
            func check(_ condition: Bool, _ message: String) throws(CairnError) {
                if !condition { throw CairnError(.invalidArgument, message) }
            }
            try check(!fileSystemName.isEmpty && !fileSystemName.contains(",") && !fileSystemName.contains("\\"),
                      "fileSystemName must be non-empty without commas, got '\(fileSystemName)'")
            try check(!subtype.isEmpty && !subtype.contains(",") && !subtype.contains("\\"),
                      "subtype must be non-empty without commas, got '\(subtype)'")
            try check(entryTimeout >= 0 && entryTimeout.isFinite, "entryTimeout must be a non-negative number of seconds")
            try check(attributeTimeout >= 0 && attributeTimeout.isFinite, "attributeTimeout must be a non-negative number of seconds")
            try check(negativeTimeout >= 0 && negativeTimeout.isFinite, "negativeTimeout must be a non-negative number of seconds")
            try check((4096...(1 << 20)).contains(writeBytesMax), "writeBytesMax must be within 4 KiB...1 MiB, got \(writeBytesMax)")
            try check((1...1024).contains(threadsMax), "threadsMax must be within 1...1024, got \(threadsMax)")
            try check((0...threadsMax).contains(idleThreadsMax), "idleThreadsMax must be within 0...threadsMax")
            try check((0...65536).contains(supplementaryGroupsMax), "supplementaryGroupsMax must be within 0...65536")
            try check(drainTimeout >= .zero, "drainTimeout must not be negative")
        }

        /// The `-o` options of `fuse_session_new`.
        var mountOptions: [String] {
            var options = ["fsname=\(fileSystemName)", "subtype=\(subtype)"]
            if allowOther { options.append("allow_other") }
            if readOnly { options.append("ro") }
            if defaultPermissions { options.append("default_permissions") }
            return options
        }
    }

    /// The absolute, symlink-free path mounted on.
    public let mountpoint: FilePath
    public let options: Options
    private let bridge: FuseBridge
    private let logger: Logger
    private let state = Mutex(State())
    private let mountedEvents: AsyncStream<Bool>
    private let mountedContinuation: AsyncStream<Bool>.Continuation

    private struct State {
        var session: FuseSession?
        var started = false
        var stopRequested = false
        /// Whether the session loop is still running. The connection number a busy stop aborts
        /// after the drain timeout is only ours while it runs: once the detached mount's last
        /// file closes, the kernel frees the number for the next mount, while `session` stays
        /// set until the replies in flight are drained (up to `drainTimeout` more).
        var loopRunning = false
    }

    /// Checks the options and the mountpoint; `run()` mounts.
    ///
    /// - Throws: `CairnError` — `.invalidArgument` for bad options or a mountpoint that is not a
    ///   directory, `.notFound` for a missing mountpoint, `.alreadyExists` for one that is already
    ///   a mount point (busy), `.unavailable` for a stale FUSE mount there (its daemon died).
    public init(mountpoint: FilePath, options: Options = Options(), fileSystem: any FuseFileSystem, logger: Logger) throws(CairnError) {
        try options.validate()
        self.mountpoint = try Self.checkMountpoint(mountpoint)
        self.options = options
        self.logger = logger
        self.bridge = FuseBridge(fileSystem: fileSystem, options: options, logger: logger)
        (mountedEvents, mountedContinuation) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Waits until `run()` has mounted (true) or has failed or ended before mounting (false).
    public func waitUntilMounted() async -> Bool {
        for await mounted in mountedEvents { return mounted }
        return false
    }

    /// Mounts, serves until shutdown or an external unmount, then cleans up.
    ///
    /// - Throws: `CairnError` — the errors of `init` if the mountpoint changed since,
    ///   `.unavailable` when the kernel refuses the mount, `.io` when the session loop fails.
    public func run() async throws {
        let alreadyStarted = state.withLock { s in
            defer { s.started = true }
            return s.started
        }
        precondition(!alreadyStarted, "FuseMount.run() is called once")
        let session: FuseSession
        do {
            _ = try Self.checkMountpoint(mountpoint)
            session = try FuseSession(options: options.mountOptions, debug: options.debug, bridge: bridge)
            do {
                try session.mount(at: mountpoint.string)
            } catch {
                session.destroy()
                throw error
            }
        } catch {
            mountedContinuation.yield(false)
            mountedContinuation.finish()
            throw error
        }
        let stopAtOnce = state.withLock { s in
            s.session = session
            return s.stopRequested
        }
        logger.info("FUSE mounted", metadata: ["mountpoint": "\(mountpoint)", "options": "\(options.mountOptions.joined(separator: ","))"])
        mountedContinuation.yield(true)
        mountedContinuation.finish()
        if stopAtOnce { stop() }

        let threadsMax = options.threadsMax
        let idleThreadsMax = options.idleThreadsMax
        state.withLock { $0.loopRunning = true }
        let status = await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await Self.onOwnThread { session.loop(threadsMax: threadsMax, idleThreadsMax: idleThreadsMax) }
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }

        state.withLock { $0.loopRunning = false }
        // The loop has ended. Replies still in flight go to a connection that is closing; let
        // them finish before the session is freed.
        let clock = ContinuousClock()
        let deadline = clock.now + options.drainTimeout
        while bridge.requestsInflight > 0 && clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let stranded = bridge.requestsInflight
        state.withLock { $0.session = nil }
        session.unmount()
        if stranded == 0 {
            session.destroy()
        } else {
            // Freeing the session under a late reply would be a use-after-free: leak it instead.
            logger.error("FUSE requests still unanswered after the drain timeout; session not freed",
                         metadata: ["requests": "\(stranded)"])
        }
        logger.info("FUSE unmounted", metadata: ["mountpoint": "\(mountpoint)"])
        if status == -ECONNABORTED {
            // The kernel ended the connection while a worker was taking a request from it: the
            // usual end of a detached (busy or `umount -l`) mount whose last file just closed, as
            // its final RELEASE or FORGET races the teardown. Or someone aborted the connection
            // through fusectl. Either way the session is over, not failed.
            if !state.withLock({ $0.stopRequested }) {
                logger.warning("FUSE connection aborted by the kernel", metadata: ["mountpoint": "\(mountpoint)"])
            }
            return
        }
        if status < 0 {
            throw CairnError(.io, "FUSE session loop at \(mountpoint) failed", cause: String(cString: strerror(-status)))
        }
    }

    /// Ends `run()` by unmounting, which wakes every loop thread. A busy mount (open files, a
    /// working directory inside) is detached at once — the name disappears, open files keep
    /// working — and the session ends when the last of them closes, or after
    /// `Options.drainTimeout`, when the connection is aborted (their users then get `ENOTCONN`).
    /// Safe to call from any thread, more than once, before or after `run()` started.
    public func stop() {
        let session = state.withLock { s -> FuseSession? in
            defer { s.stopRequested = true }
            return s.stopRequested ? nil : s.session
        }
        guard let session else { return }
        let mountpoint = self.mountpoint
        let logger = self.logger
        // Read before unmounting: the connection's number is the minor of the mount's device.
        let connection = Self.fuseConnection(of: mountpoint)
        let result = mountpoint.withPlatformString { umount2($0, 0) }
        if result == 0 {
            session.exit()
            return
        }
        let error = Errno(rawValue: errno)
        switch error {
        case .resourceBusy:
            logger.warning("mount busy: detached; the session ends when the last open file closes or the drain timeout passes",
                           metadata: ["mountpoint": "\(mountpoint)"])
            _ = mountpoint.withPlatformString { umount2($0, Int32(MNT_DETACH)) }
            let drainTimeout = options.drainTimeout
            Task {
                try? await Task.sleep(for: drainTimeout)
                guard let connection else { return }
                // Under the lock, so the loop's end is not recorded between the check and the abort;
                // what remains is the moment between the kernel ending the connection and the loop
                // returning.
                self.state.withLock { s in
                    guard s.loopRunning else { return }
                    logger.warning("aborting the FUSE connection of a detached mount still in use",
                                   metadata: ["mountpoint": "\(mountpoint)", "connection": "\(connection)"])
                    Self.abortConnection(connection, logger: logger)
                }
            }
        case .invalidArgument, .noSuchFileOrDirectory:
            session.exit()  // Already unmounted from outside; the loop is ending.
        case .notPermitted:
            session.exit()
            Self.runFusermount(["-u", "-z", mountpoint.string], logger: logger)
        default:
            logger.error("cannot unmount", metadata: ["mountpoint": "\(mountpoint)", "error": "\(error)"])
        }
    }

    /// The FUSE connection number of the mount at `mountpoint` (the minor device number in
    /// /proc/self/mountinfo), or nil.
    private static func fuseConnection(of mountpoint: FilePath) -> UInt32? {
        guard let lines = try? mountInfo() else { return nil }
        for fields in lines.reversed() where fields.count > 4 && unescapeMountField(fields[4]) == mountpoint.string {
            return fields[2].split(separator: ":").last.flatMap { UInt32($0) }
        }
        return nil
    }

    /// Writes to /sys/fs/fuse/connections/N/abort (mounting fusectl there if needed): every
    /// pending and future request of the connection fails, and the session loop ends.
    private static func abortConnection(_ connection: UInt32, logger: Logger) {
        let directory = "/sys/fs/fuse/connections"
        if access("\(directory)/\(connection)", F_OK) != 0 {
            _ = mount("fusectl", directory, "fusectl", 0, nil)
        }
        do {
            let fd = try FileDescriptor.open(FilePath("\(directory)/\(connection)/abort"), .writeOnly)
            defer { try? fd.close() }
            _ = try fd.writeAll(Array("1".utf8))
        } catch {
            logger.error("cannot abort the FUSE connection", metadata: ["connection": "\(connection)", "error": "\(error)"])
        }
    }

    private static func runFusermount(_ arguments: [String], logger: Logger) {
        let argv: [UnsafeMutablePointer<CChar>?] = (["fusermount3"] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, "fusermount3", nil, nil, argv, environ)
        guard spawned == 0 else {
            logger.error("cannot run fusermount3", metadata: ["error": "\(Errno(rawValue: spawned))"])
            return
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    /// Runs a blocking `body` on a new thread and waits for it without holding a Swift
    /// concurrency thread.
    private static func onOwnThread(_ body: @escaping @Sendable () -> Int32) async -> Int32 {
        await withCheckedContinuation { continuation in
            let work = ThreadWork { continuation.resume(returning: body()) }
            var thread = pthread_t()
            let created = pthread_create(&thread, nil, { raw in
                Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, Unmanaged.passRetained(work).toOpaque())
            precondition(created == 0, "pthread_create failed: \(created)")
            pthread_detach(thread)
        }
    }

    private final class ThreadWork {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Resolves and checks a mountpoint: an existing directory that is not already a mount point.
    public static func checkMountpoint(_ path: FilePath) throws(CairnError) -> FilePath {
        var st = stat()
        if path.withPlatformString({ stat($0, &st) }) != 0 {
            let error = Errno(rawValue: errno)
            switch error {
            case .noSuchFileOrDirectory:
                throw CairnError(.notFound, "mountpoint \(path) does not exist")
            case .socketNotConnected:
                throw CairnError(.unavailable, "mountpoint \(path) is a stale FUSE mount whose daemon is gone; run `fusermount3 -u \(path)`")
            default:
                throw CairnError(.invalidArgument, "cannot stat mountpoint \(path)", cause: error)
            }
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw CairnError(.invalidArgument, "mountpoint \(path) is not a directory")
        }
        guard let resolved = path.withPlatformString({ realpath($0, nil) }) else {
            throw CairnError(.invalidArgument, "cannot resolve mountpoint \(path)", cause: Errno(rawValue: errno))
        }
        let absolute = FilePath(String(cString: resolved))
        free(resolved)
        if try mountPoints().contains(absolute.string) {
            throw CairnError(.alreadyExists, "mountpoint \(absolute) is busy: something is already mounted there")
        }
        return absolute
    }

    /// The mount points of /proc/self/mountinfo (the fifth field, octal escapes decoded).
    static func mountPoints() throws(CairnError) -> Set<String> {
        Set(try mountInfo().compactMap { $0.count > 4 ? unescapeMountField($0[4]) : nil })
    }

    /// The lines of /proc/self/mountinfo, split into fields.
    static func mountInfo() throws(CairnError) -> [[Substring]] {
        let text: String
        do {
            let fd = try FileDescriptor.open("/proc/self/mountinfo", .readOnly)
            defer { try? fd.close() }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            let bytesMax = 64 << 20
            while bytes.count < bytesMax {
                let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
                if n == 0 { break }
                bytes += chunk[..<n]
            }
            text = String(decoding: bytes, as: UTF8.self)
        } catch {
            throw CairnError(.io, "cannot read /proc/self/mountinfo", cause: error)
        }
        return text.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: false) }
    }

    private static func unescapeMountField(_ field: Substring) -> String {
        var out: [UInt8] = []
        var bytes = Array(field.utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == UInt8(ascii: "\\"), bytes.count >= 3,
               let value = UInt8(String(decoding: bytes.prefix(3), as: UTF8.self), radix: 8) {
                out.append(value)
                bytes = bytes.dropFirst(3)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
