import CairnCore
import ChunkTransfer
import FuseKernel
import Glibc
import Logging
import MetaService
import MetaState
import NIOCore
import Synchronization
import SystemPackage

/// Cairn as the kernel sees it through FUSE: every namespace operation goes to the metadata
/// service as the calling user (in this mount's session, deduplicated across retries); file
/// data goes to and from the chunkservers in content-addressed chunks, verified before a byte
/// is returned.
///
/// FUSE node IDs are Cairn inode numbers (the root is 1 in both); file handles are the
/// session's handles on the metadata service.
public final class CairnFileSystem: FuseFileSystem {
    let session: MetaSession
    let map: ClusterMap
    let pool: ChunkserverPool
    let cache: ChunkCache
    let options: CairnMountOptions
    let logger: Logger
    private let uploadPermits: AsyncSemaphore
    /// The inodes open in this mount and how many handles each has. Counted here, under one
    /// lock, so an open racing with the (asynchronous) release of another handle of the same
    /// inode always finds the same `OpenFile`.
    private let openFiles = Mutex<[InodeNumber: (file: OpenFile, opens: Int)]>([:])
    /// Handles open for writing, by handle (so write/flush know which handles may commit).
    private let handles = Mutex<[HandleID: (inode: InodeNumber, writable: Bool)]>([:])
    /// Directories' attributes as this mount's last mutation in each left them.
    let directories: DirectoryAttributes
    /// The kernel asks for this attribute before every write() (to drop file capabilities on
    /// write). The service stores no security.* attributes and answers EOPNOTSUPP for them on
    /// any inode, so the mount answers so itself instead of a metadata read per write.
    static let capabilityName = Array("security.capability".utf8)

    /// - Parameter attributeTimeout: how long the kernel caches attributes (FUSE's
    ///   `attr_timeout`); a directory's attributes from this mount's own mutations answer a
    ///   getattr for no longer than that.
    /// Metadata requests run on the metadata client's thread (`FuseFileSystem.metadataExecutor`).
    public var metadataExecutor: (any TaskExecutor)? { session.client.executor }
    /// Where small reads run (see `readExecutor(size:)`).
    private let smallReadExecutor: (any TaskExecutor)?
    /// Reads up to this size run on `smallReadExecutor`: the kernel asks for 4 KiB pages of a
    /// file read at random, and for readahead windows (128 KiB and up) of one read in sequence.
    public static let smallReadBytesMax = 32 << 10

    /// Small reads — random ones, whose range fetches go through `rangePool` — run on the
    /// range pool's event loop: the fetch is sent, its answer received and the kernel answered
    /// on that one thread. Larger reads (sequential, whole chunks hashed as they arrive) stay on
    /// the global pool and the main pool's loops.
    public func readExecutor(size: Int) -> (any TaskExecutor)? {
        size <= Self.smallReadBytesMax ? smallReadExecutor : nil
    }

    /// - Parameters:
    ///   - rangePool: connections for range reads (a 4 KiB random read's blocks), apart from the
    ///     whole-chunk traffic of `pool`; nil: `pool`.
    ///   - smallReadExecutor: where small reads run; the event loop of `rangePool`'s connections.
    public init(session: MetaSession, map: ClusterMap, pool: ChunkserverPool, rangePool: ChunkserverPool? = nil,
                smallReadExecutor: (any TaskExecutor)? = nil, options: CairnMountOptions, attributeTimeout: Duration, logger: Logger) {
        self.smallReadExecutor = smallReadExecutor
        directories = DirectoryAttributes(keptFor: attributeTimeout)
        self.session = session
        self.map = map
        self.pool = pool
        self.options = options
        self.logger = logger
        uploadPermits = AsyncSemaphore(limit: options.uploadsInflightMax)
        let client = session.client
        cache = ChunkCache(pool: pool, rangePool: rangePool, bytesMax: options.chunkCacheBytes,
                           prefetchesInflightMax: max(1, options.readaheadChunks)) { id, server, error in
            // A missing or corrupt replica is skipped (the next one serves) and reported.
            logger.warning("bad chunk replica skipped", metadata: ["chunk": "\(id.hex)", "server": "\(server)", "error": "\(error)"])
            Task { try? await client.reportBadReplica(chunk: id, server: server, reason: "\(error)") }
        }
    }

    // MARK: Plumbing

    func perform(_ operation: MetaOperation, as credentials: Credentials) async throws -> MetaReply {
        do {
            let (reply, changed) = try await session.performReportingDirectories(operation, as: credentials)
            directories.record(changed)
            return reply
        } catch {
            logger.error("metadata service call failed", metadata: ["error": "\(error)"])
            throw Errno(rawValue: EIO)
        }
    }

    func attributes(_ reply: MetaReply) throws -> Attributes {
        guard case .attributes(let attributes) = reply else { throw unexpected(reply) }
        return attributes
    }

    /// The entry of an inode this call created (nothing of it is buffered here yet).
    func entry(_ attributes: Attributes) -> FuseEntry {
        FuseEntry(node: attributes.inode, attributes: attributes.fuse())
    }

    /// Attributes with this mount's buffered size when it holds unwritten data of the inode.
    func displayed(_ attributes: Attributes) async -> FuseAttributes {
        guard let file = existingFile(attributes.inode), let size = await file.bufferedSize else { return attributes.fuse() }
        return attributes.fuse(size: size)
    }

    /// The open file of `inode`, counting one more handle on it.
    func acquireFile(_ inode: InodeNumber) -> OpenFile {
        openFiles.withLock { files in
            let file = files[inode]?.file ?? OpenFile(inode: inode, fileSystem: self)
            files[inode] = (file, (files[inode]?.opens ?? 0) + 1)
            return file
        }
    }

    /// Counts one handle of `inode` less; forgets the file when none is left (its last release
    /// has flushed it, and no other handle can write to it).
    func releaseFile(_ inode: InodeNumber) {
        openFiles.withLock { files in
            guard let entry = files[inode] else { return }
            files[inode] = entry.opens > 1 ? (entry.file, entry.opens - 1) : nil
        }
    }

    func existingFile(_ inode: InodeNumber) -> OpenFile? { openFiles.withLock { $0[inode]?.file } }

    /// Hashes, places and uploads one sealed chunk; returns its extent.
    func upload(_ sealed: SealedChunk) async throws -> Extent {
        try await uploadPermits.withPermit {
            let id = SHA256.hash(sealed.bytes)
            let bytes = ByteBuffer(bytes: sealed.bytes)
            let plan = map.uploadPlan(id)
            _ = try await pool.upload(id, bytes: bytes, candidates: plan.candidates, replicas: plan.replicas)
            cache.insert(id, bytes: bytes)
            return Extent(fileOffset: sealed.fileOffset, length: UInt64(sealed.bytes.count), chunkID: id, chunkOffset: 0)
        }
    }

    /// `length` bytes at `offset` of a committed manifest: extents from verified chunks, holes as zeros.
    func readCommitted(_ manifest: FileManifest, offset: UInt64, length: Int, wholeChunks: Bool = true) async throws -> [UInt8] {
        let end = min(offset + UInt64(length), manifest.size)
        guard offset < end else { return [] }
        var out = [UInt8](repeating: 0, count: Int(end - offset))
        var index = manifest.firstExtent(endingAfter: offset)
        while index < manifest.extents.count, manifest.extents[index].fileOffset < end {
            let extent = manifest.extents[index]
            let from = max(offset, extent.fileOffset), to = min(end, extent.fileEnd)
            let bytes: ByteBuffer
            do {
                bytes = try await cache.read(extent.chunkID, offset: Int(extent.chunkOffset + (from - extent.fileOffset)),
                                             length: Int(to - from), candidates: map.readCandidates(extent.chunkID), wholeChunk: wholeChunks)
            } catch {
                logger.error("chunk unreadable", metadata: ["chunk": "\(extent.chunkID.hex)", "error": "\(error)"])
                throw Errno(rawValue: EIO)
            }
            guard bytes.readableBytes == Int(to - from) else {
                logger.error("chunk shorter than its extent", metadata: ["chunk": "\(extent.chunkID.hex)"])
                throw Errno(rawValue: EIO)
            }
            out.withUnsafeMutableBytes { target in
                bytes.withUnsafeReadableBytes { source in
                    target.baseAddress!.advanced(by: Int(from - offset)).copyMemory(from: source.baseAddress!, byteCount: source.count)
                }
            }
            index += 1
        }
        return out
    }

    /// Starts fetching the chunks of the next `readaheadChunks` extents after `offset`.
    func readAhead(_ manifest: FileManifest, after offset: UInt64) {
        var index = manifest.firstExtent(endingAfter: offset)
        var started = 0
        var last: ChunkID?
        while index < manifest.extents.count, started < options.readaheadChunks {
            let id = manifest.extents[index].chunkID
            if id != last, !cache.contains(id) {
                _ = cache.prefetch(id, candidates: map.readCandidates(id))
                started += 1
            }
            last = id
            index += 1
        }
    }

    // MARK: Names and attributes

    public func lookup(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        let found = try attributes(try await perform(.lookup(parent: parent, name: name.bytes), as: Credentials(context)))
        return FuseEntry(node: found.inode, attributes: await displayed(found))
    }

    public func getattr(node: UInt64, handle: UInt64?, context: FuseRequestContext) async throws -> FuseAttributes {
        if let known = directories.take(node) { return known.fuse() }
        let found = try attributes(try await perform(.getattr(node), as: Credentials(context)))
        return await displayed(found)
    }

    public func setattr(node: UInt64, changes: FuseAttributeChanges, handle: UInt64?, context: FuseRequestContext) async throws -> FuseAttributes {
        directories.forget(node)
        defer { directories.forget(node) }
        let converted = AttributeChanges(mode: changes.mode, uid: changes.uid, gid: changes.gid, size: changes.size,
                                         atime: changes.atime.timeChange, mtime: changes.mtime.timeChange)
        var credentials = Credentials(context)
        if try await isKillingSetIDBits(node: node, changes: changes, credentials) {
            // Before a write by someone other than the owner the kernel clears the set-user-ID and
            // set-group-ID bits with a chmod sent as that writer (as Linux does on local file systems).
            // The mount runs with default_permissions, so the kernel has already refused any chmod
            // the caller may not make: a mode change from a non-owner that only clears set-ID bits
            // is that kill, and is applied as the file system itself.
            credentials = .root
        }
        if changes.size != nil, let file = existingFile(node) {
            return try await file.truncate(converted, handle: handle, as: credentials).fuse()
        }
        let reply = try await perform(.setattr(node, converted, handle: handle), as: credentials)
        guard case .attributesReleased(let updated, _) = reply else { throw unexpected(reply) }
        return await displayed(updated)
    }

    /// Whether a setattr is the kernel clearing set-ID bits for a writer who does not own the file.
    private func isKillingSetIDBits(node: UInt64, changes: FuseAttributeChanges, _ credentials: Credentials) async throws -> Bool {
        // A truncate by a non-owner carries the kill in the same setattr as the new size and
        // times (do_truncate), which the kernel has already checked the caller may make.
        guard let mode = changes.mode, !credentials.isRoot, changes.uid == nil, changes.gid == nil else { return false }
        let current = try attributes(try await perform(.getattr(node), as: credentials))
        let setID: UInt32 = 0o6000
        let requested = mode & 0o7777, existing = current.mode & 0o7777
        let otherBitsKept = requested & ~setID == existing & ~setID
        let setIDOnlyCleared = requested & setID & ~existing == 0 && requested & setID != existing & setID
        return current.uid != credentials.uid && current.type == .regular && otherBitsKept && setIDOnlyCleared
    }

    public func readlink(node: UInt64, context: FuseRequestContext) async throws -> [UInt8] {
        let reply = try await perform(.readlink(node), as: Credentials(context))
        guard case .bytes(let target) = reply else { throw unexpected(reply) }
        return target
    }

    public func mknod(parent: UInt64, name: FuseName, mode: UInt32, rdev: UInt64, context: FuseRequestContext) async throws -> FuseEntry {
        guard let type = FileType(modeBits: mode & 0o170000) ?? (mode & 0o170000 == 0 ? .regular : nil) else { throw Errno(rawValue: EINVAL) }
        return entry(try attributes(try await perform(.mknod(parent: parent, name: name.bytes, type: type, mode: mode & 0o7777, rdev: rdev),
                                                      as: Credentials(context))))
    }

    public func mkdir(parent: UInt64, name: FuseName, mode: UInt32, context: FuseRequestContext) async throws -> FuseEntry {
        entry(try attributes(try await perform(.mkdir(parent: parent, name: name.bytes, mode: mode & 0o7777), as: Credentials(context))))
    }

    public func unlink(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        let reply = try await perform(.unlink(parent: parent, name: name.bytes), as: Credentials(context))
        guard case .released = reply else { throw unexpected(reply) }
    }

    public func rmdir(parent: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        let reply = try await perform(.rmdir(parent: parent, name: name.bytes), as: Credentials(context))
        guard case .done = reply else { throw unexpected(reply) }
    }

    public func symlink(target: [UInt8], parent: UInt64, name: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        entry(try attributes(try await perform(.symlink(parent: parent, name: name.bytes, target: target), as: Credentials(context))))
    }

    public func rename(parent: UInt64, name: FuseName, newParent: UInt64, newName: FuseName, flags: FuseRenameFlags,
                       context: FuseRequestContext) async throws {
        guard flags.subtracting([.noReplace, .exchange]).isEmpty else { throw Errno(rawValue: EINVAL) }
        let reply = try await perform(.rename(oldParent: parent, oldName: name.bytes, newParent: newParent, newName: newName.bytes,
                                              flags: RenameFlags(rawValue: flags.rawValue)), as: Credentials(context))
        guard case .released = reply else { throw unexpected(reply) }
    }

    public func link(node: UInt64, newParent: UInt64, newName: FuseName, context: FuseRequestContext) async throws -> FuseEntry {
        let linked = try attributes(try await perform(.link(node, newParent: newParent, newName: newName.bytes), as: Credentials(context)))
        return FuseEntry(node: linked.inode, attributes: await displayed(linked))
    }

    // MARK: Files

    public func open(node: UInt64, flags: Int32, context: FuseRequestContext) async throws -> FuseOpenedFile {
        let openFlags = OpenFlags(posix: flags)
        let file = acquireFile(node)
        do {
            if openFlags.contains(.truncate) { try await file.flush(handle: nil) }
            let reply = try await perform(.open(node, flags: openFlags), as: Credentials(context))
            guard case .opened(let opened, _) = reply else { throw unexpected(reply) }
            await registered(opened.handle, file: file, flags: openFlags, size: opened.attributes.size)
            return FuseOpenedFile(handle: opened.handle)
        } catch {
            releaseFile(node)
            throw error
        }
    }

    public func create(parent: UInt64, name: FuseName, mode: UInt32, flags: Int32, context: FuseRequestContext) async throws
        -> (entry: FuseEntry, file: FuseOpenedFile) {
        let openFlags = OpenFlags(posix: flags).union(.create)
        let reply = try await perform(.create(parent: parent, name: name.bytes, flags: openFlags, mode: mode & 0o7777), as: Credentials(context))
        guard case .opened(let opened, _) = reply else { throw unexpected(reply) }
        let file = acquireFile(opened.attributes.inode)
        await registered(opened.handle, file: file, flags: openFlags, size: opened.attributes.size)
        return (FuseEntry(node: opened.attributes.inode, attributes: opened.attributes.fuse()), FuseOpenedFile(handle: opened.handle))
    }

    /// - Parameter size: the file's size as the open left it (its reply).
    private func registered(_ handle: HandleID, file: OpenFile, flags: OpenFlags, size: UInt64) async {
        handles.withLock { $0[handle] = (file.inode, flags.contains(.write)) }
        await file.opened(handle: handle, writable: flags.contains(.write), truncated: flags.contains(.truncate), size: size)
    }

    public func read(node: UInt64, handle: UInt64, offset: Int64, size: Int, context: FuseRequestContext) async throws -> [UInt8] {
        guard offset >= 0 else { throw Errno(rawValue: EINVAL) }
        guard let file = existingFile(node) else { throw Errno(rawValue: EBADF) }
        let manifest = try await file.manifestForRead()
        let end = UInt64(offset) + UInt64(size)
        // A read that continues the previous one fetches whole chunks (cached, and the next ones
        // prefetched); one that jumps fetches only the blocks it needs.
        let sequential = await file.noteRead(offset: UInt64(offset), end: end)
        let bytes = try await readCommitted(manifest, offset: UInt64(offset), length: size, wholeChunks: sequential)
        if sequential { readAhead(manifest, after: UInt64(offset) + UInt64(bytes.count)) }
        return bytes
    }

    public func write(node: UInt64, handle: UInt64, offset: Int64, bytes: [UInt8], context: FuseRequestContext) async throws -> Int {
        guard offset >= 0 else { throw Errno(rawValue: EINVAL) }
        guard handles.withLock({ $0[handle]?.writable }) == true else { throw Errno(rawValue: EBADF) }
        guard let file = existingFile(node) else { throw Errno(rawValue: EBADF) }
        try await file.write(offset: UInt64(offset), bytes: bytes, handle: handle, as: Credentials(context))
        return bytes.count
    }

    public func flush(node: UInt64, handle: UInt64, lockOwner: UInt64, context: FuseRequestContext) async throws {
        guard let file = existingFile(node) else { return }
        try await file.flush(handle: handle, reportsLostUploads: true)
    }

    public func fsync(node: UInt64, handle: UInt64, dataOnly: Bool, context: FuseRequestContext) async throws {
        guard let file = existingFile(node) else { return }
        try await file.flush(handle: handle, reportsLostUploads: true)
    }

    public func release(node: UInt64, handle: UInt64, flags: Int32, context: FuseRequestContext) async throws {
        let file = existingFile(node)
        var flushError: (any Error)?
        if let file {
            do { try await file.flush(handle: handle, reportsLostUploads: true) } catch { flushError = error }
            await file.released(handle: handle)
        }
        handles.withLock { _ = $0.removeValue(forKey: handle) }
        session.closeLater(handle)
        releaseFile(node)
        if let flushError { throw flushError }
    }

    // MARK: Directories

    public func readdir(node: UInt64, handle: UInt64, offset: Int64, bytesMax: Int, context: FuseRequestContext) async throws
        -> [FuseDirectoryEntry] {
        let count = UInt32(max(1, min(bytesMax / 32, 4096)))
        let reply = try await perform(.readdir(node, after: UInt64(max(offset, 0)), count: count), as: Credentials(context))
        guard case .page(let page) = reply else { throw unexpected(reply) }
        return page.entries.map {
            FuseDirectoryEntry(name: FuseName(bytes: $0.name), ino: $0.inode, fileType: $0.type.modeBits, nextOffset: Int64($0.cookie))
        }
    }

    // MARK: The rest

    public func statfs(node: UInt64, context: FuseRequestContext) async throws -> FuseVolumeStatus {
        let reply = try await perform(.statfs, as: Credentials(context))
        guard case .statistics(let statistics) = reply else { throw unexpected(reply) }
        let view = map.current
        let replicas = UInt64(max(1, min(options.replicas, max(view.live.count, 1))))
        let blockSize: UInt64 = 4096
        let total = view.capacityBytes / replicas / blockSize
        let free = (view.capacityBytes - min(view.usedBytes, view.capacityBytes)) / replicas / blockSize
        let filesFree = statistics.inodesMax - min(statistics.inodesUsed, statistics.inodesMax)
        return FuseVolumeStatus(blockSize: blockSize, fragmentSize: blockSize, blocks: total, blocksFree: free, blocksAvailable: free,
                                files: statistics.inodesMax, filesFree: filesFree, filesAvailable: filesFree,
                                nameBytesMax: UInt64(statistics.nameBytesMax))
    }

    public func setxattr(node: UInt64, name: FuseName, value: [UInt8], flags: Int32, context: FuseRequestContext) async throws {
        directories.forget(node)
        defer { directories.forget(node) }
        let reply = try await perform(.setxattr(node, name: name.bytes, value: value, flags: XattrFlags(rawValue: UInt32(flags & 3))),
                                      as: Credentials(context))
        guard case .done = reply else { throw unexpected(reply) }
    }

    public func getxattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws -> [UInt8] {
        if name.bytes == Self.capabilityName && !Namespace.storesXattrNamespace(of: name.bytes) { throw Errno(rawValue: EOPNOTSUPP) }
        let reply = try await perform(.getxattr(node, name: name.bytes, sizeMax: nil), as: Credentials(context))
        guard case .bytes(let value) = reply else { throw unexpected(reply) }
        return value
    }

    public func listxattr(node: UInt64, context: FuseRequestContext) async throws -> [FuseName] {
        let reply = try await perform(.listxattr(node, sizeMax: nil), as: Credentials(context))
        guard case .names(let names) = reply else { throw unexpected(reply) }
        return names.map { FuseName(bytes: $0) }
    }

    public func removexattr(node: UInt64, name: FuseName, context: FuseRequestContext) async throws {
        directories.forget(node)
        defer { directories.forget(node) }
        let reply = try await perform(.removexattr(node, name: name.bytes), as: Credentials(context))
        guard case .done = reply else { throw unexpected(reply) }
    }

    public func access(node: UInt64, mask: Int32, context: FuseRequestContext) async throws {
        let found = try attributes(try await perform(.getattr(node), as: Credentials(context)))
        guard permits(found, mask: mask, Credentials(context)) else { throw Errno(rawValue: EACCES) }
    }
}
