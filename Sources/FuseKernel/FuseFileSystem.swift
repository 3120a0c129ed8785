import SystemPackage

/// A file system the kernel reaches through FUSE's low-level, inode-based protocol.
///
/// Nodes are 64-bit IDs the implementation chooses (1 is the root). The kernel holds a count of
/// lookups per node (each `FuseEntry` returned by lookup, mknod, mkdir, symlink, link, create and
/// readdirplus adds one) and returns them with `forget`; a node must stay valid until its count
/// drops to 0. Opened files and directories are `FuseOpenedFile.handle`s the implementation
/// chooses.
///
/// Errors: every throwing method reports failure by throwing `SystemPackage.Errno` with the
/// Linux errno the system call should fail with (`ENOENT`, `EEXIST`, `ENOTEMPTY`, …). A thrown
/// `CairnError` is mapped by its code (see `FuseErrorMapping`); any other error becomes `EIO`
/// and is logged. Methods are called concurrently, from many tasks at once.
public protocol FuseFileSystem: Sendable {
    /// Where the tasks answering metadata requests run (every request but read, write, flush,
    /// release and fsync, which may hash or copy megabytes): a metadata client's event loop
    /// (`SharedEventLoop`) lets a lookup go from the kernel to the wire and back without a
    /// thread hand-off in between. nil: the global pool.
    var metadataExecutor: (any TaskExecutor)? { get }
    /// Where the task answering a read of `size` bytes runs: the event loop of the connections
    /// the bytes come from lets a read that goes to the network send and receive there and
    /// answer the kernel without a thread hand-off. nil: the global pool (as for the other data
    /// requests).
    func readExecutor(size: Int) -> (any TaskExecutor)?
    /// The entry `name` in directory `parent`. Throws `ENOENT` if there is none.
    func lookup(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry
    /// The kernel dropped `lookups` of its references to `node` (never throws; no reply).
    func forget(node: UInt64, lookups: UInt64) async
    /// Attributes of `node`; `handle` is set when the caller has the file open (`fstat`).
    func getattr(node: UInt64, handle: UInt64?, context: FuseRequestContext) async throws -> FuseAttributes
    /// Applies `changes` (chmod, chown, truncate, utimensat) and returns the new attributes.
    func setattr(node: UInt64, changes: FuseAttributeChanges, handle: UInt64?, context: FuseRequestContext) async throws -> FuseAttributes
    /// The target of symbolic link `node`. Throws `EINVAL` for other file types.
    func readlink(node: UInt64, context: FuseRequestContext) async throws -> [UInt8]
    /// Creates a regular file, device, FIFO or socket (`mode` holds the type bits, umask applied).
    func mknod(parent: UInt64, name: FuseName, mode: UInt32, rdev: UInt64, context: FuseRequestContext) async throws -> FuseEntry
    /// Creates a directory (`mode` without type bits, umask applied). Throws `EEXIST`.
    func mkdir(parent: UInt64, name: FuseName, mode: UInt32, context: FuseRequestContext) async throws -> FuseEntry
    /// Removes a non-directory name. Throws `ENOENT`, `EISDIR`.
    func unlink(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws
    /// Removes an empty directory. Throws `ENOENT`, `ENOTDIR`, `ENOTEMPTY`.
    func rmdir(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws
    /// Creates a symbolic link `name` in `parent` pointing at `target`.
    func symlink(target: [UInt8], parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry
    /// `renameat2(2)`. Throws `EEXIST` (`.noReplace`), `ENOENT`, `ENOTEMPTY`, `EINVAL` (unsupported flags).
    func rename(parent: UInt64, name: FuseName, newParent: UInt64, newName: FuseName, flags: FuseRenameFlags,
                context: FuseRequestContext) async throws
    /// A hard link to `node` named `newName` in `newParent`.
    func link(node: UInt64, newParent: UInt64, newName: FuseName, context: FuseRequestContext) async throws -> FuseEntry
    /// Opens `node` with `open(2)` `flags` (no `O_CREAT`/`O_EXCL`/`O_NOCTTY`).
    func open(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile
    /// Creates and opens a regular file. Throws `EEXIST` when `flags` holds `O_EXCL` and it exists.
    func create(parent: UInt64, name: FuseName, mode: UInt32, flags: Int32, context: FuseRequestContext) async throws
        -> (entry: FuseEntry, file: FuseOpenedFile)
    /// Up to `size` bytes at `offset`; fewer only at end of file (or with direct I/O).
    func read(node: UInt64, handle: UInt64, offset: Int64, size: Int, context: FuseRequestContext) async throws -> [UInt8]
    /// Writes `bytes` at `offset`; returns how many were written (all, unless an error stops it).
    func write(node: UInt64, handle: UInt64, offset: Int64, bytes: [UInt8], context: FuseRequestContext) async throws -> Int
    /// Called on every `close(2)` of a descriptor of the file (possibly several per open).
    func flush(node: UInt64, handle: UInt64, lockOwner: UInt64, context: FuseRequestContext) async throws
    /// The last descriptor of an open file is gone; its handle is never used again. Errors are not seen by anyone.
    func release(node: UInt64, handle: UInt64, flags: Int32, context: FuseRequestContext) async throws
    /// `fsync(2)` (`dataOnly`: `fdatasync(2)`).
    func fsync(node: UInt64, handle: UInt64, dataOnly: Bool, context: FuseRequestContext) async throws
    /// Opens directory `node` for listing.
    func opendir(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile
    /// Entries of the directory after `offset` (0: from the start, including `.` and `..`), in
    /// order. Return what fits in `bytesMax` (see `FuseDirectoryEntry.recordBytes`); entries past it
    /// are dropped by the bridge and asked for again from their offset. An empty array ends the listing.
    func readdir(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntry]
    /// `readdir` with a lookup of each entry. Each non-nil `lookup` counts as a lookup; the bridge
    /// calls `forget` for those it could not fit in the reply.
    func readdirplus(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntryPlus]
    /// The directory handle is no longer used.
    func releasedir(node: UInt64, handle: UInt64, context: FuseRequestContext) async throws
    /// `statfs(2)` of the file system holding `node`.
    func statfs(node: UInt64, context: FuseRequestContext) async throws -> FuseVolumeStatus
    /// Sets an extended attribute (`flags`: `XATTR_CREATE` 1 → `EEXIST`, `XATTR_REPLACE` 2 → `ENODATA`).
    func setxattr(node: UInt64, name: FuseName, value: [UInt8], flags: Int32, context: FuseRequestContext) async throws
    /// The whole value of an extended attribute. Throws `ENODATA` if absent. (The bridge answers
    /// size probes and raises `ERANGE` for a caller's buffer that is too small.)
    func getxattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws -> [UInt8]
    /// Names of the extended attributes (the bridge handles size probes and `ERANGE`).
    func listxattr(node: UInt64, context: FuseRequestContext) async throws -> [FuseName]
    /// Removes an extended attribute. Throws `ENODATA` if absent.
    func removexattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws
    /// `access(2)`: throws `EACCES` unless the caller may access `node` with `mask` (`R_OK|W_OK|X_OK`,
    /// or `F_OK` 0). Not called on mounts with `default_permissions`.
    func access(node: UInt64, mask: Int32, context: FuseRequestContext) async throws
}

extension FuseFileSystem {
    public var metadataExecutor: (any TaskExecutor)? { nil }
    public func readExecutor(size: Int) -> (any TaskExecutor)? { nil }
    public func forget(node: UInt64, lookups: UInt64) async {}
    public func flush(node: UInt64, handle: UInt64, lockOwner: UInt64, context: FuseRequestContext) async throws {}
    public func opendir(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile {
        FuseOpenedFile(handle: 0)
    }
    public func releasedir(node: UInt64, handle: UInt64, context: FuseRequestContext) async throws {}
    public func access(node: UInt64, mask: Int32, context: FuseRequestContext) async throws {}
    public func mknod(parent: UInt64, name: FuseName, mode: UInt32, rdev: UInt64, context: FuseRequestContext) async throws -> FuseEntry {
        throw Errno.notSupported
    }
    public func link(node: UInt64, newParent: UInt64, newName: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        throw Errno.notPermitted
    }
    public func setxattr(node: UInt64, name: FuseName, value: [UInt8], flags: Int32, context: FuseRequestContext) async throws {
        throw Errno.notSupported
    }
    public func getxattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws -> [UInt8] {
        throw Errno.notSupported
    }
    public func listxattr(node: UInt64, context: FuseRequestContext) async throws -> [FuseName] { [] }
    public func removexattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        throw Errno.notSupported
    }

    /// `readdir`, then a `lookup` of every entry but `.` and `..` (where the caller may search the
    /// directory), stopping at `bytesMax`.
    public func readdirplus(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntryPlus] {
        var result: [FuseDirectoryEntryPlus] = []
        var bytes = 0
        var searchable = true
        for entry in try await readdir(node: node, handle: handle, offset: offset, bytesMax: bytesMax, context: context) {
            bytes += FuseDirectoryEntry.recordBytes(nameBytes: entry.name.bytes.count, plus: true)
            if bytes > bytesMax { break }
            if entry.name.isDotOrDotDot || !searchable {
                result.append(FuseDirectoryEntryPlus(entry: entry, lookup: nil))
                continue
            }
            do {
                let found = try await lookup(parent: node, name: entry.name, context: context)
                result.append(FuseDirectoryEntryPlus(entry: entry, lookup: found))
            } catch Errno.noSuchFileOrDirectory {
                // Removed since it was listed: skip it; a later listing will not show it.
                continue
            } catch Errno.permissionDenied {
                // A directory the caller may read but not search (r without x): readdir(3)
                // still lists its names; only looking them up is denied. The entry goes
                // without attributes, as a plain readdir entry.
                searchable = false
                result.append(FuseDirectoryEntryPlus(entry: entry, lookup: nil))
            }
        }
        return result
    }
}
