import CFuse
import Logging
import SystemPackage
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the libfuse callbacks reach through `fuse_req_userdata`: the file system, the per-mount
/// reply defaults, and a count of requests still being answered (the session must outlive them).
final class FuseBridge: Sendable {
    let fileSystem: any FuseFileSystem
    let defaults: FuseReplyDefaults
    let options: FuseMount.Options
    let logger: Logger
    private let inflight = Atomic<Int>(0)

    init(fileSystem: any FuseFileSystem, options: FuseMount.Options, logger: Logger) {
        self.fileSystem = fileSystem
        self.options = options
        self.logger = logger
        self.defaults = FuseReplyDefaults(entryTimeout: options.entryTimeout, attributeTimeout: options.attributeTimeout,
                                          negativeTimeout: options.negativeTimeout, directIO: options.directIO)
    }

    /// Requests handed to a task and not yet answered.
    var requestsInflight: Int { inflight.load(ordering: .acquiring) }

    /// The bridge of the session a request belongs to.
    static func of(_ req: fuse_req_t?) -> FuseBridge {
        Unmanaged<FuseBridge>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    /// `fuse_req_ctx` and `fuse_req_getgroups`: who sent the request. Called on the libfuse thread.
    func context(of req: fuse_req_t) -> FuseRequestContext {
        let raw = fuse_req_ctx(req)!.pointee
        var context = FuseRequestContext(uid: raw.uid, gid: raw.gid, pid: raw.pid, umask: raw.umask)
        // Root's groups are not read: with CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN and CAP_FSETID no
        // permission decision depends on them, and the /proc read costs every request ~30 µs.
        if options.resolvesSupplementaryGroups && raw.pid > 0 && raw.uid != 0 {
            let groupsMax = options.supplementaryGroupsMax
            var groups = [gid_t](repeating: 0, count: groupsMax)
            let total = Int(fuse_req_getgroups(req, Int32(groupsMax), &groups))
            // A negative result: the caller is gone or /proc is unreadable; act with no extra groups.
            if total > 0 { context.groups = Array(groups.prefix(min(total, groupsMax))) }
        }
        return context
    }

    /// Which executor a request's task prefers.
    enum Lane {
        /// The file system's `metadataExecutor`.
        case metadata
        /// The global pool: write, flush, release, fsync (they may hash or copy megabytes).
        case data
        /// The file system's `readExecutor(size:)` for a read of this size.
        case read(size: Int)
    }

    /// Answers `req` from a new task running `body`; everything `body` uses was copied already.
    func dispatch(_ req: fuse_req_t?, _ operation: StaticString, lane: Lane = .metadata,
                  _ body: @escaping @Sendable (any FuseFileSystem, FuseRequestContext) async throws -> FuseReply) {
        let request = FuseRequest(raw: req!)
        let context = self.context(of: req!)
        inflight.add(1, ordering: .relaxed)
        let executor: (any TaskExecutor)? = switch lane {
        case .metadata: fileSystem.metadataExecutor
        case .data: nil
        case .read(let size): fileSystem.readExecutor(size: size)
        }
        Task(executorPreference: executor) { [self] in
            let reply: FuseReply
            do {
                reply = try await body(fileSystem, context)
            } catch {
                let errno = FuseErrorMapping.errno(for: error)
                if errno == Errno.ioError.rawValue {
                    logger.warning("FUSE \(operation) failed", metadata: ["error": "\(error)"])
                }
                reply = .error(errno)
            }
            let undelivered = reply.send(request, defaults: defaults)
            for node in undelivered { await fileSystem.forget(node: node, lookups: 1) }
            inflight.subtract(1, ordering: .releasing)
        }
    }
}
