import CFuse
import CairnCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One libfuse low-level session: each `fuse_session_*` / `fuse_loop_cfg_*` call wrapped once.
///
/// Not thread-safe except `exit()`; `FuseMount` owns it and sequences the calls.
final class FuseSession: @unchecked Sendable {
    private let raw: OpaquePointer
    /// False once `destroy()` began. `exit()` may come from any thread at any time — `stop()`
    /// reads the session, unmounts, then calls it, and by then `run()` may have seen the loop
    /// end and freed the session — so it checks this under the lock that `destroy()` takes
    /// before freeing: a late `exit()` does nothing instead of writing into freed memory.
    private let alive = Mutex(true)
    /// The C argument vector given to `fuse_session_new`, kept until destroy.
    private let arguments: [UnsafeMutablePointer<CChar>?]
    private(set) var isMounted = false

    /// `fuse_session_new` with `-o OPTIONS` (and `-d` for `debug`).
    init(options: [String], debug: Bool, bridge: FuseBridge) throws(CairnError) {
        var argv = ["cairn"]
        if !options.isEmpty { argv += ["-o", options.joined(separator: ",")] }
        if debug { argv.append("-d") }
        let arguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var operations = FuseOperations.table()
        let userdata = Unmanaged.passUnretained(bridge).toOpaque()
        let session = arguments.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var args = fuse_args(argc: Int32(argv.count), argv: UnsafeMutablePointer(mutating: buffer.baseAddress), allocated: 0)
            let session = fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
            // Option parsing replaced `args` with a copy libfuse allocated.
            fuse_opt_free_args(&args)
            return session
        }
        guard let session else {
            for argument in arguments { free(argument) }
            throw CairnError(.invalidArgument, "libfuse rejected the mount options: \(options.joined(separator: ","))")
        }
        raw = session
        self.arguments = arguments
    }

    /// `fuse_session_mount`: opens /dev/fuse and mounts (directly as root, else via fusermount3).
    func mount(at mountpoint: String) throws(CairnError) {
        guard fuse_session_mount(raw, mountpoint) == 0 else {
            throw CairnError(.unavailable, "cannot mount FUSE at \(mountpoint) (is /dev/fuse present, and are we root or is fusermount3 installed?)")
        }
        isMounted = true
    }

    /// `fuse_loop_cfg_create` + `fuse_session_loop_mt` (API 3.12): serves requests on up to
    /// `threadsMax` threads until the session exits or the file system is unmounted. Blocks.
    /// Returns 0, or a negated errno.
    func loop(threadsMax: Int, idleThreadsMax: Int) -> Int32 {
        let config = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(config) }
        fuse_loop_cfg_set_max_threads(config, UInt32(threadsMax))
        fuse_loop_cfg_set_idle_threads(config, UInt32(idleThreadsMax))
        return fuse_session_loop_mt(raw, config)
    }

    /// `fuse_session_exit`: the loop stops after the requests it is reading (thread-safe: sets a flag).
    func exit() {
        alive.withLock { alive in
            if alive { fuse_session_exit(raw) }
        }
    }

    /// `fuse_session_unmount`: closes /dev/fuse and unmounts, unless already unmounted from outside.
    func unmount() {
        guard isMounted else { return }
        fuse_session_unmount(raw)
        isMounted = false
    }

    /// `fuse_session_destroy`.
    func destroy() {
        alive.withLock { $0 = false }
        fuse_session_destroy(raw)
        for argument in arguments { free(argument) }
    }
}
