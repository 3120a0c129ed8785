import CairnCore
import SystemPackage

/// One chunk being stored: bytes stream into a temp file while they are hashed and
/// block-checksummed; `commit` installs the file only if the hash equals the claimed ID.
///
/// Used by one caller at a time (hence `@unchecked Sendable`: it moves between the threads of a
/// pool, never runs on two at once). Dropping an uncommitted session removes its temp file.
public final class PutSession: @unchecked Sendable {
    public let id: ChunkID
    public let length: Int
    private let store: ChunkStore
    private var temp: (fd: FileDescriptor, path: FilePath)?
    private let hasher = SHA256()
    private var checksums: BlockChecksums.Builder
    private var received = 0
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

    /// Writes the next bytes of the chunk.
    ///
    /// - Throws: `.invalidArgument` past the declared length; `.insufficientSpace` on ENOSPC;
    ///   `.io`. The session is aborted on any error.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(CairnError) {
        precondition(!finished, "append after commit or abort")
        guard received + bytes.count <= length else {
            abort()
            throw CairnError(.invalidArgument, "chunk \(id) got more than its declared \(length) bytes")
        }
        hasher.update(bytes)
        checksums.append(bytes)
        received += bytes.count
        guard let temp else { return }
        do {
            _ = try temp.fd.writeAll(bytes)
        } catch {
            abort()
            throw ChunkStore.writeError("cannot write chunk \(id)", error)
        }
    }

    /// Verifies the hash, makes the chunk durable and installs it.
    ///
    /// - Throws: `.hashMismatch` (nothing kept) when the bytes do not hash to the ID;
    ///   `.invalidArgument` when fewer bytes than declared arrived; `.insufficientSpace`; `.io`.
    @discardableResult
    public func commit() throws(CairnError) -> PutOutcome {
        precondition(!finished, "commit after commit or abort")
        guard received == length else {
            abort()
            throw CairnError(.invalidArgument, "chunk \(id) got \(received) of its declared \(length) bytes")
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
