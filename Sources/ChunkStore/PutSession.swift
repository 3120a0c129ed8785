import CairnCore
import SystemPackage

/// One chunk being stored: bytes stream into a temp file while they are hashed and
/// block-checksummed; `commit` installs the file only if the hash equals the claimed ID.
///
/// The work on each piece of the chunk has two halves that can run on two threads at once:
/// `hash(_:)` feeds the SHA-256, `write(_:)` checksums the blocks and writes the temp file.
/// SHA-256 cannot be split across cores, so running the disk half beside it is what lets one
/// stream go faster than hashing plus writing one after the other. `append(_:)` does both in
/// turn.
///
/// Used by one caller per half at a time (hence `@unchecked Sendable`: each half moves between
/// the threads of a pool, never runs on two at once, and the halves share no mutable state);
/// `commit` and `abort` run once both halves are idle. Dropping an uncommitted session removes
/// its temp file.
public final class PutSession: @unchecked Sendable {
    public let id: ChunkID
    public let length: Int
    private let store: ChunkStore
    /// Hashing half.
    private let hasher = SHA256()
    private var hashedBytes = 0
    /// Writing half.
    private var temp: (fd: FileDescriptor, path: FilePath)?
    private var checksums: BlockChecksums.Builder
    private var writtenBytes = 0
    private var finished = false
    /// With an O_DIRECT temp file: bytes wait here, aligned, until a whole buffer (or, at the
    /// commit, the rest padded to whole blocks) goes to the device; nil writes through the page cache.
    private var staging: UnsafeMutableRawBufferPointer?
    private var stagedBytes = 0
    /// Where the next direct write starts in the temp file (a multiple of the buffer's size).
    private var directOffset = 0
    /// Alignment of direct writes' buffers, offsets and lengths (covers 512 B and 4 KiB devices).
    static let directBlockBytes = 4096
    /// Size of the staging buffer at most (a chunk smaller than this gets one of its own size).
    static let stagingBytesMax = 1 << 20

    /// `temp` nil means the chunk is already stored: bytes are still checked, not written.
    /// `direct`: `temp` was opened with O_DIRECT.
    init(store: ChunkStore, id: ChunkID, length: Int, temp: (FileDescriptor, FilePath)?, direct: Bool = false) {
        self.store = store
        self.id = id
        self.length = length
        self.temp = temp.map { (fd: $0.0, path: $0.1) }
        self.checksums = BlockChecksums.Builder(blockBytes: store.configuration.limits.checksumBlockBytes)
        if direct && temp != nil {
            let block = Self.directBlockBytes
            let size = min(Self.stagingBytesMax, max(block, (length + block - 1) / block * block))
            staging = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: block)
        }
    }

    deinit {
        abort()
        staging?.deallocate()
    }

    /// Hashes and writes the next bytes of the chunk.
    ///
    /// - Throws: `.invalidArgument` past the declared length; `.insufficientSpace` on ENOSPC;
    ///   `.io`. The session is aborted on any error.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(CairnError) {
        do {
            try hash(bytes)
            try write(bytes)
        } catch {
            abort()
            throw error
        }
    }

    /// Feeds the next bytes of the chunk to the SHA-256 (the hashing half of `append`). May run
    /// while `write(_:)` runs on another thread.
    ///
    /// - Throws: `.invalidArgument` past the declared length. The caller must then `abort()`
    ///   (or drop) the session once the writing half is idle.
    public func hash(_ bytes: UnsafeRawBufferPointer) throws(CairnError) {
        precondition(!finished, "hash after commit or abort")
        guard hashedBytes + bytes.count <= length else {
            throw CairnError(.invalidArgument, "chunk \(id) got more than its declared \(length) bytes")
        }
        hasher.update(bytes)
        hashedBytes += bytes.count
    }

    /// Checksums the blocks of the next bytes and writes them to the temp file (the writing
    /// half of `append`). May run while `hash(_:)` runs on another thread.
    ///
    /// - Throws: `.invalidArgument` past the declared length; `.insufficientSpace` on ENOSPC;
    ///   `.io`. The caller must then `abort()` (or drop) the session once the hashing half is
    ///   idle.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(CairnError) {
        precondition(!finished, "write after commit or abort")
        guard writtenBytes + bytes.count <= length else {
            throw CairnError(.invalidArgument, "chunk \(id) got more than its declared \(length) bytes")
        }
        checksums.append(bytes)
        writtenBytes += bytes.count
        guard let temp else { return }
        do {
            guard let staging else {
                _ = try temp.fd.writeAll(bytes)
                return
            }
            var rest = bytes
            while !rest.isEmpty {
                let count = min(rest.count, staging.count - stagedBytes)
                UnsafeMutableRawBufferPointer(rebasing: staging[stagedBytes..<(stagedBytes + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: rest[..<count]))
                stagedBytes += count
                rest = UnsafeRawBufferPointer(rebasing: rest[count...])
                if stagedBytes == staging.count { try writeStaged(temp.fd) }
            }
        } catch {
            throw ChunkStore.writeError("cannot write chunk \(id)", error)
        }
    }

    /// Writes the staging buffer's bytes to the device at `directOffset`, padded with zeros to
    /// whole blocks (the commit cuts the file back to the chunk's length).
    private func writeStaged(_ fd: FileDescriptor) throws {
        guard let staging, stagedBytes > 0 else { return }
        let block = Self.directBlockBytes
        let padded = (stagedBytes + block - 1) / block * block
        UnsafeMutableRawBufferPointer(rebasing: staging[stagedBytes..<padded]).initializeMemory(as: UInt8.self, repeating: 0)
        // swift-system's writeAll hands the buffer's own memory to pwrite: its alignment holds.
        _ = try fd.writeAll(toAbsoluteOffset: Int64(directOffset), UnsafeRawBufferPointer(rebasing: staging[..<padded]))
        directOffset += padded
        stagedBytes = 0
    }

    /// Starts the bytes written so far on their way to the disk (`fdatasync` of the temp file),
    /// so that the sync in `commit` has only the last bytes left to wait for. It guarantees
    /// nothing by itself: `commit` still syncs the whole file before the chunk is installed.
    /// May run while `hash(_:)` and `write(_:)` run on other threads (the kernel orders a sync
    /// and a write on one file); not while `commit` or `abort` runs.
    ///
    /// - Throws: `.insufficientSpace`; `.io`. The caller must then `abort()` (or drop) the session.
    public func syncWritten() throws(CairnError) {
        precondition(!finished, "sync after commit or abort")
        // Direct writes leave nothing in the page cache to start early.
        guard store.configuration.syncWrites, staging == nil, let temp else { return }
        do {
            try FileSystemCalls.fdatasync(temp.fd)
        } catch {
            throw ChunkStore.writeError("cannot sync chunk \(id)", error)
        }
    }

    /// Verifies the hash, makes the chunk durable and installs it.
    ///
    /// - Throws: `.hashMismatch` (nothing kept) when the bytes do not hash to the ID;
    ///   `.invalidArgument` when fewer bytes than declared arrived; `.insufficientSpace`; `.io`.
    @discardableResult
    public func commit() throws(CairnError) -> PutOutcome {
        precondition(!finished, "commit after commit or abort")
        guard hashedBytes == length, writtenBytes == length else {
            abort()
            throw CairnError(.invalidArgument, "chunk \(id) got \(min(hashedBytes, writtenBytes)) of its declared \(length) bytes")
        }
        let actual = hasher.finalize()
        guard actual == id else {
            abort()
            store.countRejectedPut()
            throw CairnError(.hashMismatch, "bytes hash to \(actual), not to the claimed \(id); nothing stored")
        }
        guard let temp else {
            finished = true
            // Confirm it is still there (a concurrent delete may have raced the put).
            if store.has(id) { return .alreadyPresent }
            throw CairnError(.notFound, "chunk \(id) was deleted while being re-put; put it again")
        }
        do {
            if staging != nil {
                try writeStaged(temp.fd)
                // The last block was padded: cut the file back to the chunk's length.
                if directOffset != length { try temp.fd.resize(to: Int64(length)) }
            }
            if store.configuration.syncWrites { try FileSystemCalls.fdatasync(temp.fd) }
            try temp.fd.close()
        } catch {
            self.temp = (FileDescriptor(rawValue: -1), temp.path)
            abort()
            throw ChunkStore.writeError("cannot sync chunk \(id)", error)
        }
        self.temp = nil
        finished = true
        defer { store.releaseSpace(length) }
        do {
            try store.install(id: id, tempPath: temp.path, length: length, checksums: checksums.finish())
        } catch {
            _ = try? FileSystemCalls.unlink(temp.path)
            throw error
        }
        return .stored
    }

    /// Drops the put: closes and removes the temp file. Safe to call more than once.
    public func abort() {
        guard !finished else { return }
        finished = true
        if let temp {
            if temp.fd.rawValue >= 0 { try? temp.fd.close() }
            _ = try? FileSystemCalls.unlink(temp.path)
            store.releaseSpace(length)
            self.temp = nil
        }
    }
}
