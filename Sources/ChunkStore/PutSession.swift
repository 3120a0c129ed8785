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

    /// `temp` nil means the chunk is already stored: bytes are still checked, not written.
    init(store: ChunkStore, id: ChunkID, length: Int, temp: (FileDescriptor, FilePath)?) {
        self.store = store
        self.id = id
        self.length = length
        self.temp = temp.map { (fd: $0.0, path: $0.1) }
        self.checksums = BlockChecksums.Builder(blockBytes: store.configuration.limits.checksumBlockBytes)
    }

    deinit { abort() }

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
            _ = try temp.fd.writeAll(bytes)
        } catch {
            throw ChunkStore.writeError("cannot write chunk \(id)", error)
        }
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
        guard store.configuration.syncWrites, let temp else { return }
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
