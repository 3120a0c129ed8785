import CairnCore
import ChunkTransfer
import Glibc
import MetaState
import NIOCore
import SystemPackage

/// A file's committed manifest as last read from the metadata service: the extents and size.
struct FileManifest: Sendable {
    var size: UInt64
    var extents: [Extent]

    /// Index of the first extent ending after `offset`.
    func firstExtent(endingAfter offset: UInt64) -> Int {
        var low = 0, high = extents.count
        while low < high {
            let mid = (low + high) / 2
            if extents[mid].fileEnd <= offset { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

/// One open inode of this mount: its write buffer, the uploads and commits in progress, and
/// its cached manifest. Every handle of the inode in this mount shares it, so a read through
/// any handle sees what was written through another.
///
/// Writes, flushes and truncates take `gate` for their whole run, so none interleaves with
/// another across a suspension point; uploads run in the background and are awaited by the
/// next flush (or when too many are pending).
actor OpenFile {
    let inode: InodeNumber
    unowned let fileSystem: CairnFileSystem
    private let gate = AsyncSemaphore(limit: 1)
    private var buffer: FileWriteBuffer?
    private var uploads: [Task<Extent, any Error>] = []
    /// Uploaded extents not yet committed, in the order they were sealed (later ones win).
    private var pending: [Extent] = []
    /// An upload failed (its bytes are lost) and no flush has reported it yet: the write that
    /// noticed it got EIO, but the lost bytes may be earlier writes' (acknowledged when
    /// buffered), so the next fsync or close fails too — once, as a local file system's does.
    private var unreportedUploadFailure = false
    private var manifest: FileManifest?
    /// Meta handles open for writing (a commit needs one).
    private var writableHandles: Set<HandleID> = []
    private var credentials = Credentials.root
    /// Where the last read ended (sequential detection for readahead).
    private var lastReadEnd: UInt64 = .max
    /// Bytes read back to back so far, ending at `lastReadEnd`.
    private var sequentialRun: UInt64 = 0
    /// A run this long makes reads sequential (whole chunks, cached, the next ones prefetched).
    /// One continuation is not enough: the kernel follows a random 4 KiB read with a readahead
    /// request that starts where it ended, and treating that as a stream would fetch a whole
    /// chunk per random read.
    static let sequentialRunBytes: UInt64 = 1 << 20

    init(inode: InodeNumber, fileSystem: CairnFileSystem) {
        self.inode = inode
        self.fileSystem = fileSystem
    }

    var isDirty: Bool { !(buffer?.isClean ?? true) || !pending.isEmpty || !uploads.isEmpty }

    /// A new open: close-to-open consistency — a clean file forgets its cached manifest so the
    /// next read sees what other mounts committed before this open. An empty file (just
    /// created or truncated, as the open's reply says) has nothing to fetch: its manifest is
    /// known, and the first write need not ask for it.
    func opened(handle: HandleID, writable: Bool, truncated: Bool, size: UInt64) {
        if writable { writableHandles.insert(handle) }
        if !isDirty || truncated {
            if truncated { buffer = nil }
            manifest = size == 0 ? FileManifest(size: 0, extents: []) : nil
        }
    }

    /// A handle is released (after its last flush): it can no longer commit.
    func released(handle: HandleID) {
        writableHandles.remove(handle)
    }

    /// The size this mount sees: the buffered size while it holds unwritten data.
    var bufferedSize: UInt64? { isDirty ? buffer?.fileSize : nil }

    // MARK: Writing

    func write(offset: UInt64, bytes: [UInt8], handle: HandleID, as credentials: Credentials) async throws {
        try await withGate {
            self.credentials = credentials
            if buffer == nil {
                buffer = FileWriteBuffer(fileSize: try await committedManifest().size, chunkBytes: fileSystem.options.chunkBytes,
                                         dirtyBytesMax: fileSystem.options.dirtyBytesPerFileMax)
            }
            if buffer!.dirtyBytes + bytes.count > buffer!.dirtyBytesMax {
                try await flushLocked(handle: handle)
            }
            try buffer!.write(offset: offset, bytes: bytes)
            for index in buffer!.sealableChunkIndexes { startUpload(buffer!.seal(index, base: nil)) }
            if uploads.count + pending.count >= fileSystem.options.pendingExtentsMax {
                // Commit the older half and keep the younger uploading: waiting for all of them
                // left the chunkservers idle while the last few finished and the commit ran.
                try await drainUploads(keepingNewest: fileSystem.options.pendingExtentsMax / 2)
                try await commit(handle: handle)
            }
        }
    }

    /// Makes everything written so far durable on the chunkservers and committed to the
    /// metadata service (fsync, flush on close, release).
    /// - Parameter reportsLostUploads: an fsync, flush or release: it also fails, once, when an
    ///   upload was lost under an earlier write.
    func flush(handle: HandleID?, reportsLostUploads: Bool = false) async throws {
        try await withGate { try await flushLocked(handle: handle, reportsLostUploads: reportsLostUploads) }
    }

    /// Applies a setattr that changes the size (truncate, or ftruncate through `handle`) after
    /// committing what is buffered, so no buffered byte past the new size is committed later.
    func truncate(_ changes: AttributeChanges, handle: HandleID?, as credentials: Credentials) async throws -> Attributes {
        try await withGate {
            try await flushLocked(handle: handle)
            let reply = try await fileSystem.perform(.setattr(inode, changes, handle: handle), as: credentials)
            guard case .attributesReleased(let attributes, _) = reply else { throw unexpected(reply) }
            manifest = nil
            buffer = nil
            return attributes
        }
    }

    /// Uploads and commits what is buffered. `reportsLostUploads`: this is an fsync, flush or
    /// release, which also fails (once) for an upload lost under an earlier write.
    private func flushLocked(handle: HandleID?, reportsLostUploads: Bool = false) async throws {
        do {
            try await flushDirty(handle: handle)
        } catch {
            if reportsLostUploads { unreportedUploadFailure = false }
            throw error
        }
        if reportsLostUploads && unreportedUploadFailure {
            unreportedUploadFailure = false
            throw Errno(rawValue: EIO)
        }
    }

    private func flushDirty(handle: HandleID?) async throws {
        guard isDirty else { return }
        let writer = handle.flatMap { writableHandles.contains($0) ? $0 : nil } ?? writableHandles.min()
        guard let writer else { throw Errno(rawValue: EBADF) }
        try await drainUploads()
        try await commit(handle: writer)
        if var current = buffer, !current.isClean {
            for index in current.dirtyChunkIndexes {
                let base = current.needsBase(index) ? try await committedContent(chunk: index, chunkBytes: current.chunkBytes) : nil
                startUpload(current.seal(index, base: base))
            }
            buffer = current
        }
        try await drainUploads()
        try await commit(handle: writer)
    }

    private func startUpload(_ sealed: SealedChunk) {
        let fileSystem = self.fileSystem
        uploads.append(Task {
            try await fileSystem.upload(sealed)
        })
    }

    /// Waits for every upload but the `keepingNewest` started last, oldest first (so their
    /// extents commit in the order they were written); the first failure is thrown after all of
    /// those have finished (EIO to the application: the data did not reach enough chunkservers).
    private func drainUploads(keepingNewest: Int = 0) async throws {
        var failure: (any Error)?
        let running = uploads.dropLast(keepingNewest)
        uploads.removeFirst(running.count)
        for task in running {
            do {
                pending.append(try await task.value)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure {
            fileSystem.logger.error("upload failed", metadata: ["inode": "\(inode)", "error": "\(failure)"])
            unreportedUploadFailure = true
            throw Errno(rawValue: EIO)
        }
    }

    private func commit(handle: HandleID) async throws {
        guard !pending.isEmpty else { return }
        let limit = MetaLimits().extentsPerCommitMax
        while !pending.isEmpty {
            let batch = Array(pending.prefix(limit))
            let reply = try await fileSystem.perform(.commitWrite(handle: handle, extents: batch), as: credentials)
            guard case .attributesReleased = reply else { throw unexpected(reply) }
            pending.removeFirst(batch.count)
        }
        manifest = nil
    }

    private func withGate<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await gate.acquire()
        defer { gate.release() }
        return try await body()
    }

    // MARK: Reading

    /// The committed manifest (after committing this mount's own writes), cached until the
    /// next commit, truncate or open.
    func manifestForRead() async throws -> FileManifest {
        if isDirty { try await flush(handle: nil) }
        return try await committedManifest()
    }

    private func committedManifest() async throws -> FileManifest {
        if let manifest { return manifest }
        var extents: [Extent] = []
        var size: UInt64 = 0
        var offset: UInt64 = 0
        while true {
            let reply = try await fileSystem.perform(.readExtents(inode, offset: offset, length: .max - offset), as: .root)
            guard case .extents(let page, let fileSize) = reply else { throw unexpected(reply) }
            size = fileSize
            extents += page
            guard let last = page.last, last.fileEnd < fileSize, last.fileEnd > offset else { break }
            offset = last.fileEnd
        }
        let loaded = FileManifest(size: size, extents: extents)
        manifest = loaded
        return loaded
    }

    /// The committed content of chunk `index` (holes as zeros), nil when the file ends before it.
    private func committedContent(chunk index: Int, chunkBytes: Int) async throws -> [UInt8]? {
        let current = try await committedManifest()
        let start = UInt64(index) * UInt64(chunkBytes)
        guard start < current.size else { return nil }
        let length = Int(min(UInt64(chunkBytes), current.size - start))
        return try await fileSystem.readCommitted(current, offset: start, length: length)
    }

    /// Notes a read: true once reads have gone on back to back for `sequentialRunBytes`.
    func noteRead(offset: UInt64, end: UInt64) -> Bool {
        sequentialRun = (offset == lastReadEnd ? sequentialRun : 0) + (end - offset)
        lastReadEnd = end
        return sequentialRun >= Self.sequentialRunBytes
    }
}
