import CCairnLinux
import CairnCore
import FuseKernel
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A `FuseFileSystem` that mirrors a source directory: every operation is the same system call
/// on the source (reads and writes are `pread`/`pwrite` of the source file, `fsync` is `fsync`).
/// It is the baseline `tools/bench` runs beside Cairn, so it adds nothing but FUSE's own cost.
///
/// Each node the kernel knows holds an `O_PATH` descriptor of its source inode (as libfuse's
/// passthrough_ll does), so renames and hard links never invalidate it; nodes are keyed by the
/// source's (device, inode) and freed when the kernel forgets them. It runs as root and relies on
/// the mount's `default_permissions` for permission checks; new files are then given to the
/// calling user (and group, unless the directory is set-group-ID).
///
/// Every system call runs on the file system's own I/O threads (`ioThreads` of them), never on
/// Swift's cooperative pool: that pool has one thread per core, and a blocking `pread`, `fsync`
/// or `openat` there would stall every other request and cap the baseline's concurrency at the
/// core count. The queue in front of the threads is bounded by the kernel, which keeps at most
/// `max_background` asynchronous requests plus one synchronous request per calling thread in flight.
public final class PassthroughFileSystem: FuseFileSystem {
    public let source: FilePath
    /// Where the blocking system calls run.
    private let ioPool: NIOThreadPool
    private let nodes: Mutex<NodeTable>
    private let directories = Mutex<[UInt64: DirectoryStream]>([:])
    private let nextDirectoryHandle = Atomic<UInt64>(1)
    private let runsAsRoot = geteuid() == 0

    private struct SourceKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    private struct Node {
        var fd: Int32
        var key: SourceKey
        var lookups: UInt64
    }

    private struct NodeTable {
        var byID: [UInt64: Node] = [:]
        var bySource: [SourceKey: UInt64] = [:]
        var nextID: UInt64 = 2
    }

    /// I/O threads when the caller names no number: enough to keep a disk busy with the kernel's
    /// default 12 background requests plus a few synchronous ones.
    public static let ioThreadsDefault = 16

    /// Opens the source directory and starts `ioThreads` I/O threads (stopped when the file
    /// system is freed).
    ///
    /// - Throws: `CairnError.notFound` / `.invalidArgument` when `source` is missing or not a directory.
    public init(source: FilePath, ioThreads: Int = PassthroughFileSystem.ioThreadsDefault) throws(CairnError) {
        guard (1...256).contains(ioThreads) else { throw CairnError(.invalidArgument, "I/O threads must be 1...256, not \(ioThreads)") }
        let fd = source.withPlatformString { Glibc.open($0, O_PATH | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else {
            let error = Errno(rawValue: errno)
            if error == .noSuchFileOrDirectory { throw CairnError(.notFound, "source directory \(source) does not exist") }
            throw CairnError(.invalidArgument, "cannot open source directory \(source)", cause: error)
        }
        var st = stat()
        guard fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 else {
            close(fd)
            throw CairnError(.io, "cannot stat \(source)", cause: Errno(rawValue: errno))
        }
        let key = SourceKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        var table = NodeTable()
        table.byID[1] = Node(fd: fd, key: key, lookups: 1)
        table.bySource[key] = 1
        nodes = Mutex(table)
        self.source = source
        // Started last: nothing after this throws, so a failed init leaves no threads behind.
        ioPool = NIOThreadPool(numberOfThreads: ioThreads)
        ioPool.start()
    }

    deinit {
        // Non-blocking: the last reference may be dropped on one of the pool's own threads.
        ioPool.shutdownGracefully { _ in }
        nodes.withLock { table in
            for node in table.byID.values { close(node.fd) }
        }
        directories.withLock { streams in
            for stream in streams.values { stream.close() }
        }
    }

    /// Nodes the kernel currently holds (root included): for tests of lookup/forget balance.
    public var nodeCount: Int { nodes.withLock { $0.byID.count } }

    // MARK: Names

    public func lookup(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        try await io { [self] in
            try lookup(parentFD: fd(of: parent), name: name)
        }
    }

    /// Opens `name` under `parentFD` as `O_PATH` and returns its node, adding one lookup.
    private func lookup(parentFD: Int32, name: FuseName) throws -> FuseEntry {
        let fd = try call { name.withCString { openat(parentFD, $0, O_PATH | O_NOFOLLOW | O_CLOEXEC) } }
        var st = stat()
        do {
            _ = try call { fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) }
        } catch {
            close(fd)
            throw error
        }
        let key = SourceKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        let (id, known) = nodes.withLock { table -> (UInt64, Bool) in
            if let id = table.bySource[key] {
                table.byID[id]!.lookups += 1
                return (id, true)
            }
            let id = table.nextID
            table.nextID += 1
            table.byID[id] = Node(fd: fd, key: key, lookups: 1)
            table.bySource[key] = id
            return (id, false)
        }
        if known { close(fd) }
        return FuseEntry(node: id, attributes: FuseAttributes(st))
    }

    public func forget(node: UInt64, lookups: UInt64) async {
        guard node != 1 else { return }
        let closing = nodes.withLock { table -> Int32? in
            guard var entry = table.byID[node] else { return nil }
            precondition(entry.lookups >= lookups, "the kernel forgot more lookups than it made")
            entry.lookups -= lookups
            if entry.lookups > 0 {
                table.byID[node] = entry
                return nil
            }
            table.byID[node] = nil
            table.bySource[entry.key] = nil
            return entry.fd
        }
        if let closing { close(closing) }
    }

    /// The `O_PATH` descriptor of a node. The kernel holds a lookup on every node it sends a
    /// request for, so the descriptor stays open for the whole request.
    private func fd(of node: UInt64) throws(Errno) -> Int32 {
        guard let fd = nodes.withLock({ $0.byID[node]?.fd }) else { throw Errno.staleNFSFileHandle }
        return fd
    }

    // MARK: Attributes

    public func getattr(node: UInt64, handle: UInt64?, context: FuseRequestContext) async throws -> FuseAttributes {
        try await io { [self] in try attributes(node: node, handle: handle) }
    }

    /// `fstat` of the open file, else `fstatat` of the node's `O_PATH` descriptor.
    private func attributes(node: UInt64, handle: UInt64?) throws -> FuseAttributes {
        var st = stat()
        if let handle {
            _ = try call { fstat(Int32(handle), &st) }
        } else {
            let fd = try fd(of: node)
            _ = try call { fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) }
        }
        return FuseAttributes(st)
    }

    public func setattr(node: UInt64, changes: FuseAttributeChanges, handle: UInt64?, context: FuseRequestContext) async throws
        -> FuseAttributes {
        try await io { [self] in
            let fd = try fd(of: node)
            let path = procPath(fd)
            if let mode = changes.mode {
                if let handle {
                    _ = try call { fchmod(Int32(handle), mode) }
                } else {
                    _ = try call { chmod(path, mode) }
                }
            }
            if changes.uid != nil || changes.gid != nil {
                let uid = changes.uid ?? UInt32.max  // (uid_t)-1: unchanged
                let gid = changes.gid ?? UInt32.max
                _ = try call { fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) }
            }
            if let size = changes.size {
                if let handle {
                    _ = try call { ftruncate(Int32(handle), off_t(size)) }
                } else {
                    _ = try call { truncate(path, off_t(size)) }
                }
            }
            if changes.atime != .omit || changes.mtime != .omit {
                var times = [timespec(changes.atime), timespec(changes.mtime)]
                if let handle {
                    _ = try call { futimens(Int32(handle), &times) }
                } else {
                    _ = try call { utimensat(AT_FDCWD, path, &times, 0) }
                }
            }
            return try attributes(node: node, handle: handle)
        }
    }

    private func timespec(_ change: FuseTimeChange) -> Glibc.timespec {
        switch change {
        case .omit: Glibc.timespec(tv_sec: 0, tv_nsec: Int(UTIME_OMIT))
        case .now: Glibc.timespec(tv_sec: 0, tv_nsec: Int(UTIME_NOW))
        case .set(let time): Glibc.timespec(tv_sec: Int(time.seconds), tv_nsec: Int(time.nanoseconds))
        }
    }

    public func readlink(node: UInt64, context: FuseRequestContext) async throws -> [UInt8] {
        try await io { [self] in
            let fd = try fd(of: node)
            let capacity = Int(PATH_MAX) + 1
            var buffer = [UInt8](repeating: 0, count: capacity)
            let count = try callSized { buffer.withUnsafeMutableBytes { readlinkat(fd, "", $0.baseAddress!.assumingMemoryBound(to: CChar.self), capacity) } }
            guard count < capacity else { throw Errno.fileNameTooLong }
            return Array(buffer[..<count])
        }
    }

    // MARK: Creating and removing names

    public func mknod(parent: UInt64, name: FuseName, mode: UInt32, rdev: UInt64, context: FuseRequestContext) async throws -> FuseEntry {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            _ = try call { name.withCString { mknodat(parentFD, $0, mode, dev_t(rdev)) } }
            try giveToCaller(parentFD: parentFD, name: name, context: context)
            return try lookup(parentFD: parentFD, name: name)
        }
    }

    public func mkdir(parent: UInt64, name: FuseName, mode: UInt32, context: FuseRequestContext) async throws -> FuseEntry {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            _ = try call { name.withCString { mkdirat(parentFD, $0, mode) } }
            try giveToCaller(parentFD: parentFD, name: name, context: context)
            return try lookup(parentFD: parentFD, name: name)
        }
    }

    public func symlink(target: [UInt8], parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            let targetName = FuseName(bytes: target)
            _ = try call { targetName.withCString { t in name.withCString { symlinkat(t, parentFD, $0) } } }
            try giveToCaller(parentFD: parentFD, name: name, context: context)
            return try lookup(parentFD: parentFD, name: name)
        }
    }

    public func link(node: UInt64, newParent: UInt64, newName: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        try await io { [self] in
            let fd = try fd(of: node)
            let parentFD = try self.fd(of: newParent)
            // Following /proc/self/fd/N links the inode itself, symbolic links included.
            _ = try call { newName.withCString { linkat(AT_FDCWD, procPath(fd), parentFD, $0, AT_SYMLINK_FOLLOW) } }
            return try lookup(parentFD: parentFD, name: newName)
        }
    }

    public func unlink(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            _ = try call { name.withCString { unlinkat(parentFD, $0, 0) } }
        }
    }

    public func rmdir(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            _ = try call { name.withCString { unlinkat(parentFD, $0, AT_REMOVEDIR) } }
        }
    }

    public func rename(parent: UInt64, name: FuseName, newParent: UInt64, newName: FuseName, flags: FuseRenameFlags,
                       context: FuseRequestContext) async throws {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            let newParentFD = try fd(of: newParent)
            _ = try call { name.withCString { old in newName.withCString { cairn_renameat2(parentFD, old, newParentFD, $0, flags.rawValue) } } }
        }
    }

    /// Created as root, a new name is handed to the caller, as the kernel would have created it.
    /// In a set-group-ID directory the group it inherited stays.
    private func giveToCaller(parentFD: Int32, name: FuseName, context: FuseRequestContext) throws {
        guard runsAsRoot, context.uid != 0 || context.gid != 0 else { return }
        var parentStatus = stat()
        _ = try call { fstatat(parentFD, "", &parentStatus, AT_EMPTY_PATH) }
        let gid = parentStatus.st_mode & S_ISGID != 0 ? UInt32.max : context.gid
        _ = try call { name.withCString { fchownat(parentFD, $0, context.uid, gid, AT_SYMLINK_NOFOLLOW) } }
    }

    // MARK: Files

    public func open(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile {
        try await io { [self] in
            let fd = try fd(of: node)
            let opened = try call { Glibc.open(procPath(fd), (flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC) }
            return FuseOpenedFile(handle: UInt64(opened))
        }
    }

    public func create(parent: UInt64, name: FuseName, mode: UInt32, flags: Int32, context: FuseRequestContext) async throws
        -> (entry: FuseEntry, file: FuseOpenedFile) {
        try await io { [self] in
            let parentFD = try fd(of: parent)
            let opened = try call { name.withCString { openat(parentFD, $0, (flags | O_CREAT | O_CLOEXEC) & ~(O_NOFOLLOW | O_NOCTTY), mode) } }
            do {
                try giveToCaller(parentFD: parentFD, name: name, context: context)
                return (try lookup(parentFD: parentFD, name: name), FuseOpenedFile(handle: UInt64(opened)))
            } catch {
                close(opened)
                throw error
            }
        }
    }

    public func read(node: UInt64, handle: UInt64, offset: Int64, size: Int, context: FuseRequestContext) async throws -> [UInt8] {
        try await io {
            let fd = Int32(handle)
            var bytes = [UInt8](repeating: 0, count: size)
            var done = 0
            while done < size {
                let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(offset) + off_t(done)) }
                if n == -1 {
                    if errno == EINTR { continue }
                    throw Errno(rawValue: errno)
                }
                if n == 0 { break }
                done += n
            }
            if done < size { bytes.removeSubrange(done...) }
            return bytes
        }
    }

    public func write(node: UInt64, handle: UInt64, offset: Int64, bytes: [UInt8], context: FuseRequestContext) async throws -> Int {
        try await io {
            let fd = Int32(handle)
            return try bytes.withUnsafeBytes { buffer in
                var done = 0
                while done < buffer.count {
                    done += try callSized { pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
                }
                return done
            }
        }
    }

    public func flush(node: UInt64, handle: UInt64, lockOwner: UInt64, context: FuseRequestContext) async throws {
        try await io {
            // Closing a duplicate gives the source file system its close(2) (NFS commits there)
            // while the handle stays open for later requests.
            let duplicate = try call { dup(Int32(handle)) }
            _ = try call { close(duplicate) }
        }
    }

    public func release(node: UInt64, handle: UInt64, flags: Int32, context: FuseRequestContext) async throws {
        try await io { _ = close(Int32(handle)) }
    }

    public func fsync(node: UInt64, handle: UInt64, dataOnly: Bool, context: FuseRequestContext) async throws {
        try await io {
            _ = try call { dataOnly ? fdatasync(Int32(handle)) : Glibc.fsync(Int32(handle)) }
        }
    }

    // MARK: Directories

    public func opendir(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile {
        try await io { [self] in
            let fd = try fd(of: node)
            let opened = try call { openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            guard let dir = fdopendir(opened) else {
                let error = Errno(rawValue: errno)
                close(opened)
                throw error
            }
            let handle = nextDirectoryHandle.add(1, ordering: .relaxed).oldValue
            directories.withLock { $0[handle] = DirectoryStream(dir) }
            return FuseOpenedFile(handle: handle)
        }
    }

    public func releasedir(node: UInt64, handle: UInt64, context: FuseRequestContext) async throws {
        try await io { [self] in
            directories.withLock { $0.removeValue(forKey: handle) }?.close()
        }
    }

    public func readdir(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntry] {
        try await io { [self] in
            try stream(handle).entries(from: offset, bytesMax: bytesMax, plus: false)
        }
    }

    public func readdirplus(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntryPlus] {
        try await io { [self] in
            let entries = try stream(handle).entries(from: offset, bytesMax: bytesMax, plus: true)
            let parentFD = try fd(of: node)
            var result: [FuseDirectoryEntryPlus] = []
            result.reserveCapacity(entries.count)
            for entry in entries {
                if entry.name.isDotOrDotDot {
                    result.append(FuseDirectoryEntryPlus(entry: entry, lookup: nil))
                    continue
                }
                do {
                    result.append(FuseDirectoryEntryPlus(entry: entry, lookup: try lookup(parentFD: parentFD, name: entry.name)))
                } catch Errno.noSuchFileOrDirectory {
                    // Removed since it was listed: listed without attributes, as readdir would show it.
                    result.append(FuseDirectoryEntryPlus(entry: entry, lookup: nil))
                }
            }
            return result
        }
    }

    private func stream(_ handle: UInt64) throws(Errno) -> DirectoryStream {
        guard let stream = directories.withLock({ $0[handle] }) else { throw Errno.badFileDescriptor }
        return stream
    }

    // MARK: The file system

    public func statfs(node: UInt64, context: FuseRequestContext) async throws -> FuseVolumeStatus {
        try await io { [self] in
            let fd = try fd(of: node)
            var s = statvfs()
            _ = try call { fstatvfs(fd, &s) }
            return FuseVolumeStatus(blockSize: UInt64(s.f_bsize), fragmentSize: UInt64(s.f_frsize), blocks: UInt64(s.f_blocks),
                                    blocksFree: UInt64(s.f_bfree), blocksAvailable: UInt64(s.f_bavail), files: UInt64(s.f_files),
                                    filesFree: UInt64(s.f_ffree), filesAvailable: UInt64(s.f_favail), nameBytesMax: UInt64(s.f_namemax))
        }
    }

    // MARK: Extended attributes

    public func setxattr(node: UInt64, name: FuseName, value: [UInt8], flags: Int32, context: FuseRequestContext) async throws {
        try await io { [self] in
            let path = try procPath(fd(of: node))
            _ = try call { name.withCString { n in value.withUnsafeBytes { cairn_setxattr(path, n, $0.baseAddress, $0.count, flags) } } }
        }
    }

    public func getxattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws -> [UInt8] {
        try await io { [self] in
            let path = try procPath(fd(of: node))
            return try sizedRead { buffer in name.withCString { cairn_getxattr(path, $0, buffer.baseAddress, buffer.count) } }
        }
    }

    public func listxattr(node: UInt64, context: FuseRequestContext) async throws -> [FuseName] {
        try await io { [self] in
            let path = try procPath(fd(of: node))
            let list = try sizedRead { buffer in
                cairn_listxattr(path, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
            }
            return list.split(separator: 0).map { FuseName(bytes: Array($0)) }
        }
    }

    public func removexattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        try await io { [self] in
            let path = try procPath(fd(of: node))
            _ = try call { name.withCString { cairn_removexattr(path, $0) } }
        }
    }

    /// A size probe then a read, again if the value grew in between (`ERANGE`), at most 8 times.
    private func sizedRead(_ read: (UnsafeMutableRawBufferPointer) -> Int) throws -> [UInt8] {
        for _ in 0..<8 {
            let size = try callSized { read(UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
            if size == 0 { return [] }
            var buffer = [UInt8](repeating: 0, count: size)
            do {
                let count = try callSized { buffer.withUnsafeMutableBytes { read($0) } }
                return Array(buffer[..<count])
            } catch Errno.outOfRange {
                continue
            }
        }
        throw Errno.outOfRange
    }

    // MARK: System calls

    /// Runs `body` (blocking system calls) on an I/O thread and returns its result.
    ///
    /// - Throws: what `body` throws; `NIOThreadPoolError.ThreadPoolInactive` (→ `EIO`) once the
    ///   pool is shut down.
    private func io<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws -> Result {
        try await ioPool.runIfActive(body)
    }

    private func procPath(_ fd: Int32) -> String { "/proc/self/fd/\(fd)" }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying on `EINTR`.
@inline(__always)
func call(_ body: () -> Int32) throws -> Int32 {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: errno)
        if error != .interrupted { throw error }
    }
}

/// `call` for the calls that return a byte count (`ssize_t`).
@inline(__always)
func callSized(_ body: () -> Int) throws -> Int {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: errno)
        if error != .interrupted { throw error }
    }
}

// Linux ABI constants that Glibc exports only under _GNU_SOURCE, which Swift's Glibc module lacks.
/// `O_PATH`: a descriptor that names an inode without opening it for I/O.
let O_PATH: Int32 = 0o10000000
/// `AT_EMPTY_PATH`: an `*at` call with an empty path acts on the descriptor itself.
let AT_EMPTY_PATH: Int32 = 0x1000
/// `UTIME_NOW` / `UTIME_OMIT`: `utimensat(2)` nanosecond values meaning "now" and "leave as is".
let UTIME_NOW = (1 << 30) - 1
let UTIME_OMIT = (1 << 30) - 2
