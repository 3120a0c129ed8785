import CCairnLinux
import CairnCore
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One stored chunk as `list` reports it.
public struct ChunkInfo: Sendable, Equatable {
    public var id: ChunkID
    public var sizeBytes: Int64
    /// When the chunk was stored (the file's modification time), nanoseconds since the epoch.
    public var storedAtNanoseconds: Int64

    public init(id: ChunkID, sizeBytes: Int64, storedAtNanoseconds: Int64) {
        self.id = id
        self.sizeBytes = sizeBytes
        self.storedAtNanoseconds = storedAtNanoseconds
    }
}

/// What a store holds and has seen, for `stat` and for the metadata service's heartbeats.
public struct ChunkStoreStats: Sendable, Equatable {
    public var capacityBytes: Int64 = 0
    public var availableBytes: Int64 = 0
    public var reserveBytes: Int64 = 0
    /// Bytes of chunk data stored (not counting checksum files).
    public var usedBytes: Int64 = 0
    public var chunkCount: Int64 = 0
    /// Chunks moved to quarantine since start-up (by reads, verifies or the scrubber).
    public var quarantinedTotal: Int64 = 0
    /// Puts refused because the bytes did not hash to the claimed ID.
    public var rejectedPutTotal: Int64 = 0
    /// Reads that found corrupt bytes (never served).
    public var corruptReadTotal: Int64 = 0

    public init() {}
}

public enum PutOutcome: Sendable, Equatable {
    case stored
    /// The chunk was already stored; the bytes were checked but not written again.
    case alreadyPresent
}

/// A content-addressed chunk store on one local directory.
///
/// Layout under the data directory:
/// - `chunks/ab/abcd…` — each chunk in a file named by its full hex SHA-256, fanned out by the
///   first two hex digits; `sha256sum` of the file equals its name.
/// - `sums/ab/abcd…` — the chunk's per-block CRC-32C checksums (`BlockChecksums`).
/// - `tmp/` — puts in progress; emptied at start-up, the only recovery the store needs.
/// - `quarantine/` — chunks that failed verification, kept for an operator to inspect.
///
/// A put writes a temp file while hashing, is rejected (and the temp file removed) unless the
/// SHA-256 equals the claimed ID, then fsyncs, renames into place and fsyncs the directory, so a
/// crash never leaves a partial chunk under a valid name. The checksum file is written without
/// fsync: one a crash damaged is detected by its own CRC and rebuilt after a SHA-256 check.
///
/// All methods do blocking I/O: call them from a thread pool, not from an event loop.
/// Thread-safe.
public final class ChunkStore: Sendable {
    public struct Configuration: Sendable {
        public var directory: FilePath
        public var limits: ChunkLimits
        /// Puts are refused when they would leave less free space than this.
        public var reserveBytes: Int64
        /// fsync chunk files and directories before acknowledging a put. Only tests of
        /// non-durability paths turn this off.
        public var syncWrites: Bool
        /// Chunks kept open after a range read (one descriptor each), for the next range reads
        /// of them (`readIfCached`); 0 keeps none.
        public var openChunksMax: Int
        /// Write chunk files with O_DIRECT where the file system allows it (not tmpfs): the bytes
        /// go from an aligned staging buffer to the device instead of through the page cache,
        /// and the commit's fdatasync has only the device cache and the metadata left to flush.
        /// Measured here, 128 files of 4 MiB written in 1 MiB pieces, each with fdatasync and a
        /// directory fsync: page cache 333-498 MB/s at 1.6-2.7 CPU seconds per GiB (most of it
        /// the kernel's copy into new page-cache pages), O_DIRECT 1,763-1,917 MB/s at 0.1.
        public var directWrites: Bool

        public init(directory: FilePath, limits: ChunkLimits = ChunkLimits(), reserveBytes: Int64 = 256 << 20,
                    syncWrites: Bool = true, openChunksMax: Int = 128, directWrites: Bool = true) {
            self.directory = directory
            self.limits = limits
            self.reserveBytes = reserveBytes
            self.syncWrites = syncWrites
            self.openChunksMax = openChunksMax
            self.directWrites = directWrites
        }
    }

    public let configuration: Configuration
    let logger: Logger
    let paths: Paths
    private let counters: Mutex<Counters>
    private let tempSequence = Atomic<UInt64>(0)
    private let openChunks: Mutex<OpenChunks>
    /// Cleared if the file system refuses RWF_NOWAIT reads: `readIfCached` then always declines.
    private let nowaitReads = Atomic<Bool>(true)
    /// Cleared if the file system refuses O_DIRECT: puts then write through the page cache.
    private let directCreates = Atomic<Bool>(true)

    /// Whether puts write chunk files with O_DIRECT (`directWrites`, and the file system has
    /// not refused it).
    public var writesDirectly: Bool { configuration.directWrites && directCreates.load(ordering: .relaxed) }

    struct Counters {
        var chunkCount: Int64 = 0
        var usedBytes: Int64 = 0
        /// Bytes of puts in progress, counted against free space so that concurrent puts
        /// cannot together overrun the reserve.
        var inflightPutBytes: Int64 = 0
        var quarantinedTotal: Int64 = 0
        var rejectedPutTotal: Int64 = 0
        var corruptReadTotal: Int64 = 0
    }

    struct Paths: Sendable {
        let root: FilePath
        var chunks: FilePath { root.appending("chunks") }
        var sums: FilePath { root.appending("sums") }
        var tmp: FilePath { root.appending("tmp") }
        var quarantine: FilePath { root.appending("quarantine") }
        var format: FilePath { root.appending("FORMAT") }

        static func fanout(_ hex: String) -> String { String(hex.prefix(2)) }
        func chunk(_ id: ChunkID) -> FilePath {
            let hex = id.hex
            return chunks.appending(Self.fanout(hex)).appending(hex)
        }
        func sum(_ id: ChunkID) -> FilePath {
            let hex = id.hex
            return sums.appending(Self.fanout(hex)).appending(hex)
        }
    }

    static let formatLine = "cairn-chunkstore 1\n"
    static let fanoutNames: [String] = (0..<256).map { byte in
        let digits = Array("0123456789abcdef")
        return String([digits[byte >> 4], digits[byte & 0xf]])
    }

    /// Opens (creating if needed) the store at `configuration.directory`: checks the format
    /// marker, removes leftover temp files and counts what is stored.
    ///
    /// - Throws: `CairnError` `.invalidArgument` for bad limits or a directory holding something
    ///   else; `.io` when the directory cannot be set up.
    public init(configuration: Configuration, logger: Logger) throws(CairnError) {
        try configuration.limits.validate()
        guard configuration.reserveBytes >= 0 else {
            throw CairnError(.invalidArgument, "reserveBytes must not be negative")
        }
        guard (0...65_536).contains(configuration.openChunksMax) else {
            throw CairnError(.invalidArgument, "openChunksMax must be in 0...65536")
        }
        self.openChunks = Mutex(OpenChunks(limit: configuration.openChunksMax))
        self.configuration = configuration
        self.logger = logger
        self.paths = Paths(root: configuration.directory)
        self.counters = Mutex(Counters())
        try setUpLayout()
        try removeLeftoverTempFiles()
        try countStoredChunks()
    }

    // MARK: Start-up

    private func setUpLayout() throws(CairnError) {
        do {
            try FileSystemCalls.mkdir(paths.root)
            if let existing = try FileSystemCalls.status(paths.format) {
                let text = try FileSystemCalls.readFile(paths.format, bytesMax: 4096)
                guard existing.isRegular, String(decoding: text, as: UTF8.self) == Self.formatLine else {
                    throw CairnError(.invalidArgument, "\(paths.root) holds a different format: \(paths.format) does not say \(Self.formatLine.dropLast())")
                }
            } else {
                let entries = try FileSystemCalls.directoryEntries(paths.root)
                guard entries.isEmpty else {
                    throw CairnError(.invalidArgument, "\(paths.root) is not empty and is not a chunk store (no FORMAT file)")
                }
            }
            for dir in [paths.chunks, paths.sums, paths.tmp, paths.quarantine] { try FileSystemCalls.mkdir(dir) }
            for name in Self.fanoutNames {
                try FileSystemCalls.mkdir(paths.chunks.appending(name))
                try FileSystemCalls.mkdir(paths.sums.appending(name))
            }
            if try FileSystemCalls.status(paths.format) == nil {
                try writeFileDurably(paths.format, bytes: Array(Self.formatLine.utf8))
            }
        } catch let error as CairnError {
            throw error
        } catch {
            throw CairnError(.io, "cannot set up chunk store at \(paths.root)", cause: error)
        }
    }

    private func removeLeftoverTempFiles() throws(CairnError) {
        do {
            let leftovers = try FileSystemCalls.directoryEntries(paths.tmp)
            for name in leftovers { try FileSystemCalls.unlink(paths.tmp.appending(name)) }
            if !leftovers.isEmpty {
                if configuration.syncWrites { try FileSystemCalls.fsyncDirectory(paths.tmp) }
                logger.info("removed leftover temp files", metadata: ["count": "\(leftovers.count)"])
            }
        } catch {
            throw CairnError(.io, "cannot clean \(paths.tmp)", cause: error)
        }
    }

    private func countStoredChunks() throws(CairnError) {
        var count: Int64 = 0
        var bytes: Int64 = 0
        do {
            for fanout in Self.fanoutNames {
                let dir = paths.chunks.appending(fanout)
                for name in try FileSystemCalls.directoryEntries(dir) {
                    guard ChunkID(hex: name) != nil, let st = try FileSystemCalls.status(dir.appending(name)), st.isRegular else {
                        logger.warning("ignoring unexpected file in chunk directory", metadata: ["path": "\(dir.appending(name))"])
                        continue
                    }
                    count += 1
                    bytes += st.size
                }
            }
        } catch {
            throw CairnError(.io, "cannot scan \(paths.chunks)", cause: error)
        }
        counters.withLock {
            $0.chunkCount = count
            $0.usedBytes = bytes
        }
        logger.info("chunk store open", metadata: ["path": "\(paths.root)", "chunks": "\(count)", "bytes": "\(bytes)"])
    }

    // MARK: Put

    /// Starts storing a chunk of `length` bytes under `id`. Feed it with `append`, then `commit`.
    ///
    /// - Throws: `.tooLarge` past `chunkBytesMax`; `.insufficientSpace` when the put would
    ///   leave less than the reserve free; `.io` when the temp file cannot be created.
    public func beginPut(id: ChunkID, length: Int) throws(CairnError) -> PutSession {
        guard length >= 0, length <= configuration.limits.chunkBytesMax else {
            throw CairnError(.tooLarge, "chunk of \(length) bytes exceeds chunkBytesMax \(configuration.limits.chunkBytesMax)")
        }
        if has(id) {
            return PutSession(store: self, id: id, length: length, temp: nil)
        }
        try reserveSpace(length)
        let tempPath = paths.tmp.appending("\(id.hex).\(getpid()).\(tempSequence.add(1, ordering: .relaxed).newValue)")
        do {
            if writesDirectly {
                let fd = tempPath.withPlatformString { cairn_create_direct($0, 0o644) }
                if fd >= 0 { return PutSession(store: self, id: id, length: length, temp: (FileDescriptor(rawValue: fd), tempPath), direct: true) }
                let error = Errno(rawValue: errno)
                guard error == .invalidArgument else { throw error }
                // This file system takes no O_DIRECT (the file may have been created before the refusal).
                directCreates.store(false, ordering: .relaxed)
                _ = try? FileSystemCalls.unlink(tempPath)
                logger.info("the chunk directory's file system refuses O_DIRECT; chunks are written through the page cache")
            }
            let fd = try FileDescriptor.open(tempPath, .writeOnly, options: [.create, .exclusiveCreate, .truncate],
                                             permissions: [.ownerReadWrite, .groupRead, .otherRead])
            return PutSession(store: self, id: id, length: length, temp: (fd, tempPath))
        } catch {
            releaseSpace(length)
            throw Self.writeError("cannot create temp file \(tempPath)", error)
        }
    }

    /// Stores a whole chunk held in memory.
    @discardableResult
    public func put(id: ChunkID, bytes: UnsafeRawBufferPointer) throws(CairnError) -> PutOutcome {
        let session = try beginPut(id: id, length: bytes.count)
        try session.append(bytes)
        return try session.commit()
    }

    @discardableResult
    public func put(id: ChunkID, bytes: [UInt8]) throws(CairnError) -> PutOutcome {
        try typedCairnErrors { try bytes.withUnsafeBytes { raw in try put(id: id, bytes: raw) } }
    }

    private func reserveSpace(_ length: Int) throws(CairnError) {
        let volume: FileSystemCalls.VolumeStatus
        do {
            volume = try FileSystemCalls.volumeStatus(paths.root)
        } catch {
            throw CairnError(.io, "statvfs \(paths.root) failed", cause: error)
        }
        // Checksum file and directory blocks need room too: count a page per file.
        let needed = Int64(length) + 8192
        try counters.withLock { (c) throws(CairnError) in
            let free = volume.availableBytes - c.inflightPutBytes
            if free - needed < configuration.reserveBytes {
                throw CairnError(.insufficientSpace,
                                 "refusing put of \(length) bytes: \(max(free, 0)) bytes free, reserve is \(configuration.reserveBytes)")
            }
            c.inflightPutBytes += needed
        }
    }

    func releaseSpace(_ length: Int) {
        counters.withLock { $0.inflightPutBytes -= Int64(length) + 8192 }
    }

    func countRejectedPut() {
        counters.withLock { $0.rejectedPutTotal += 1 }
    }

    /// Moves a verified temp file into place. Called by `PutSession.commit`.
    func install(id: ChunkID, tempPath: FilePath, length: Int, checksums: BlockChecksums) throws(CairnError) {
        let finalPath = paths.chunk(id)
        let sumPath = paths.sum(id)
        let sumTemp = FilePath(tempPath.string + ".sum")
        do {
            // The checksum file is neither fsynced nor is its directory: a crash may leave it
            // missing, empty or torn, and that is safe because every reader checks it (magic,
            // lengths and its own CRC-32C; `loadChecksums`) and, when it does not decode,
            // verifies the whole chunk with SHA-256 and rewrites it (`read`, `verify`). Only
            // the chunk file and its name are made durable before a put is acknowledged.
            try writeFile(sumTemp, bytes: checksums.encoded(), sync: false)
            // The checksums land first: a chunk under its final name has them unless a crash
            // lost them (see above).
            try FileSystemCalls.rename(sumTemp, sumPath)
            let added = try counters.withLock { (c) throws(Errno) -> Bool in
                let existed = try FileSystemCalls.status(finalPath) != nil
                try FileSystemCalls.rename(tempPath, finalPath)
                if !existed {
                    c.chunkCount += 1
                    c.usedBytes += Int64(length)
                }
                return !existed
            }
            if configuration.syncWrites {
                try FileSystemCalls.fsyncDirectory(finalPath.removingLastComponent())
            }
            if added { logger.trace("stored chunk", metadata: ["id": "\(id)", "bytes": "\(length)"]) }
        } catch {
            _ = try? FileSystemCalls.unlink(sumTemp)
            throw Self.writeError("cannot install chunk \(id)", error)
        }
    }

    // MARK: Read

    /// Whether `id` is stored.
    public func has(_ id: ChunkID) -> Bool {
        (try? FileSystemCalls.status(paths.chunk(id))) != nil
    }

    public func has(_ ids: [ChunkID]) -> [Bool] { ids.map { has($0) } }

    /// Reads a whole chunk and re-hashes it before returning a byte.
    ///
    /// - Throws: `.notFound`; `.corrupt` (the chunk is quarantined) when the bytes do not hash to
    ///   `id`; `.io` on a read error.
    public func get(_ id: ChunkID) throws(CairnError) -> [UInt8] {
        let bytes = try readChunkFile(id)
        let actual = bytes.withUnsafeBytes { SHA256.hash($0) }
        guard actual == id else {
            counters.withLock { $0.corruptReadTotal += 1 }
            quarantine(id, reason: "content hashes to \(actual)")
            throw CairnError(.corrupt, "chunk \(id) is corrupt (hashes to \(actual)); quarantined")
        }
        return bytes
    }

    /// Reads `length` bytes from `offset` (nil: to the end), checked against the per-block
    /// checksums of every block it touches. Returns the bytes and the chunk's full length.
    ///
    /// - Throws: `.notFound`; `.invalidArgument` for a range outside the chunk; `.corrupt` (the
    ///   chunk is quarantined) when a block fails its checksum; `.io`.
    public func read(_ id: ChunkID, offset: Int, length: Int?) throws(CairnError) -> (bytes: [UInt8], chunkLength: Int) {
        let read = try read(id, offset: offset, length: length) { (count, fill) throws(CairnError) -> [UInt8] in
            var buffer = [UInt8](repeating: 0, count: count)
            try typedCairnErrors { try buffer.withUnsafeMutableBytes { raw in try fill(raw) } }
            return buffer
        }
        return (Array(read.output[read.range]), read.chunkLength)
    }

    /// Reads `length` bytes from `offset` (nil: to the end) straight into storage the caller
    /// makes, so a server can read into its network buffer without another copy.
    ///
    /// `output(byteCount, fill)` is called once: it makes a buffer of `byteCount` bytes, calls
    /// `fill` once with exactly that many writable bytes, and returns the buffer. `fill` reads
    /// the blocks covering the range and checks each against its CRC-32C; it throws (after
    /// quarantining the chunk) if one fails, so a buffer that `output` returns holds only
    /// verified bytes. The requested bytes are `output[range]`.
    ///
    /// When the checksum file is missing or damaged (it is written without fsync, and its own
    /// CRC catches damage), the whole chunk is re-hashed with SHA-256 instead and the file is
    /// rewritten; a chunk that does not hash to its ID is quarantined and nothing is returned.
    ///
    /// - Throws: as `read(_:offset:length:)`, plus what `output` throws.
    public func read<Output>(_ id: ChunkID, offset: Int, length: Int?,
                             into output: (_ byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> Output)
        throws(CairnError) -> (output: Output, range: Range<Int>, chunkLength: Int, blocks: VerifiedBlocks) {
        if let open = openChunks.withLock({ $0.get(id) }) {
            let end = try Self.rangeEnd(offset: offset, length: length, size: open.size, id: id)
            return try readBlocks(open, id, offset: offset, end: end, into: output)
        }
        let fd = try openChunk(id)
        var keptOpen = false
        defer { if !keptOpen { try? fd.close() } }
        let size = try chunkSize(fd, id)
        let end = try Self.rangeEnd(offset: offset, length: length, size: size, id: id)
        if let sums = loadChecksums(id, chunkLength: size) {
            let open = OpenChunk(fd: fd, size: size, sums: sums)
            keptOpen = true
            // Kept before the blocks are checked: one that fails is quarantined, which drops it.
            openChunks.withLock { $0.insert(id, open) }
            return try readBlocks(open, id, offset: offset, end: end, into: output)
        }
        // No usable checksum file: verify the whole chunk, rewrite the checksums, serve.
        let whole = try get(id)
        let rebuilt = rewriteChecksums(id, bytes: whole)
        let blocks = rebuilt.blocks(covering: offset..<end)
        let start = blocks.lowerBound * rebuilt.blockBytes
        let stop = min(blocks.upperBound * rebuilt.blockBytes, size)
        let out = try output(stop - start) { (raw) throws(CairnError) in
            precondition(raw.count == stop - start, "output must hand fill exactly the bytes asked for")
            whole.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<stop])) }
        }
        return (out, (offset - start)..<(end - start), size,
                VerifiedBlocks(offset: start, blockBytes: rebuilt.blockBytes, checksums: Array(rebuilt.checksums[blocks])))
    }

    /// The same read as `read(_:offset:length:into:)`, but one that never blocks, for an event
    /// loop: it is served only from a chunk kept open by an earlier range read, only when every
    /// byte of its blocks is in the page cache (`preadv2` with `RWF_NOWAIT`), and only when the
    /// blocks check out. Otherwise nil, and the caller does `read` on an I/O thread — which is
    /// also where a block that fails its checksum is found again and the chunk quarantined.
    public func readIfCached<Output>(_ id: ChunkID, offset: Int, length: Int?,
                                     into output: (_ byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> Output)
        -> (output: Output, range: Range<Int>, chunkLength: Int, blocks: VerifiedBlocks)? {
        guard nowaitReads.load(ordering: .relaxed), let open = openChunks.withLock({ $0.get(id) }),
              let end = try? Self.rangeEnd(offset: offset, length: length, size: open.size, id: id) else { return nil }
        return try? readCovering(open, offset: offset, end: end, into: output) { (raw, start, blocks) throws(CairnError) in
            let n = cairn_pread_nowait(open.fd.rawValue, raw.baseAddress, raw.count, Int64(start))
            if n < 0 && errno == EOPNOTSUPP { nowaitReads.store(false, ordering: .relaxed) }
            guard n == raw.count,
                  CRC32C.blocks(UnsafeRawBufferPointer(raw), blockBytes: open.sums.blockBytes) == Array(open.sums.checksums[blocks])
            else { throw CairnError(.unavailable, "not in the page cache") }
        }
    }

    /// The end of the range `offset`, `length` (nil: to the end) in a chunk of `size` bytes.
    /// - Throws: `.invalidArgument` for a range outside the chunk.
    private static func rangeEnd(offset: Int, length: Int?, size: Int, id: ChunkID) throws(CairnError) -> Int {
        let length = length ?? (size - offset)
        guard offset >= 0, offset <= size, length >= 0, length <= size - offset else {
            throw CairnError(.invalidArgument, "range \(offset)+\(length) is outside chunk \(id) of \(size) bytes")
        }
        return offset + length
    }

    /// Reads and checks the blocks of an open chunk covering `offset..<end`.
    private func readBlocks<Output>(_ open: OpenChunk, _ id: ChunkID, offset: Int, end: Int,
                                    into output: (_ byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> Output)
        throws(CairnError) -> (output: Output, range: Range<Int>, chunkLength: Int, blocks: VerifiedBlocks) {
        try readCovering(open, offset: offset, end: end, into: output) { (raw, start, blocks) throws(CairnError) in
            try preadFully(open.fd, into: raw, at: start, id: id)
            try checkBlocks(UnsafeRawBufferPointer(raw), blocks: blocks, against: open.sums, of: id)
        }
    }

    /// The whole blocks of an open chunk that cover `offset..<end`, made by `output` and filled
    /// by `fill(raw, start, blocks)` (the bytes from chunk offset `start`), which throws unless
    /// they are read whole and check out; with where the range lies in them and their checksums.
    private func readCovering<Output>(_ open: OpenChunk, offset: Int, end: Int,
                                      into output: (_ byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> Output,
                                      fill: (UnsafeMutableRawBufferPointer, _ start: Int, _ blocks: Range<Int>) throws(CairnError) -> Void)
        throws(CairnError) -> (output: Output, range: Range<Int>, chunkLength: Int, blocks: VerifiedBlocks) {
        let sums = open.sums
        let blocks = sums.blocks(covering: offset..<end)
        let start = blocks.lowerBound * sums.blockBytes
        let stop = min(blocks.upperBound * sums.blockBytes, open.size)
        // Both closures are non-escaping; the compiler cannot see that `output` does not call
        // back into `fill` re-entrantly, so `fill` is lent as escaping for the call.
        let out = try withoutActuallyEscaping(fill) { (fill) throws(CairnError) -> Output in
            try output(stop - start) { (raw) throws(CairnError) in
                precondition(raw.count == stop - start, "output must hand fill exactly the bytes asked for")
                try fill(raw, start, blocks)
            }
        }
        return (out, (offset - start)..<(end - start), open.size,
                VerifiedBlocks(offset: start, blockBytes: sums.blockBytes, checksums: Array(sums.checksums[blocks])))
    }

    /// How much of a chunk `openChecked` reads and checks at a time (whole checksum blocks).
    public static let checkPieceBytes = 256 << 10

    /// Opens a whole chunk to be sent as it is on disk (`sendfile`), after checking every
    /// block against its CRC-32C: the chunk is read once, a piece at a time through one small
    /// buffer that stays in the processor's cache, and never copied whole into memory or into
    /// the socket. nil when the checksum file is missing or damaged: then `get` reads the
    /// chunk whole, re-hashes it and rewrites the file.
    ///
    /// The bytes sent are the page cache's, checked a moment before. A chunk file is never
    /// written in place once installed, so they are the checked bytes; and the client re-hashes
    /// every chunk it gets against its ID (`ChunkClient.get`) in any case.
    ///
    /// - Throws: `.notFound`; `.corrupt` (the chunk is quarantined) when a block fails its
    ///   checksum, the file is oversized or it shrank; `.io`.
    public func openChecked(_ id: ChunkID) throws(CairnError) -> CheckedChunkFile? {
        let fd = try openChunk(id)
        do {
            let size = try chunkSize(fd, id)
            guard let sums = loadChecksums(id, chunkLength: size) else {
                try? fd.close()
                return nil
            }
            let pieceBlocks = max(1, Self.checkPieceBytes / sums.blockBytes)
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: pieceBlocks * sums.blockBytes, alignment: 64)
            defer { scratch.deallocate() }
            var first = 0
            while first < sums.checksums.count {
                let blocks = first..<min(first + pieceBlocks, sums.checksums.count)
                let start = blocks.lowerBound * sums.blockBytes
                let stop = min(blocks.upperBound * sums.blockBytes, size)
                let piece = UnsafeMutableRawBufferPointer(rebasing: scratch[..<(stop - start)])
                try preadFully(fd, into: piece, at: start, id: id)
                try checkBlocks(UnsafeRawBufferPointer(piece), blocks: blocks, against: sums, of: id)
                first = blocks.upperBound
            }
            return CheckedChunkFile(length: size, descriptor: OwnedFileDescriptor(fd))
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// Checks `raw`, the bytes of `blocks` (read from the first one's start), against their
    /// checksums; quarantines the chunk and throws `.corrupt` at the first that fails.
    fileprivate func checkBlocks(_ raw: UnsafeRawBufferPointer, blocks: Range<Int>,
                                 against sums: BlockChecksums, of id: ChunkID) throws(CairnError) {
        let actual = CRC32C.blocks(raw, blockBytes: sums.blockBytes)
        precondition(actual.count == blocks.count, "the bytes read cover exactly the blocks checked")
        for (block, checksum) in zip(blocks, actual) {
            if checksum != sums.checksums[block] {
                counters.withLock { $0.corruptReadTotal += 1 }
                quarantine(id, reason: "a block failed its checksum")
                throw CairnError(.corrupt, "chunk \(id) is corrupt (block checksum mismatch); quarantined")
            }
        }
    }

    /// Re-hashes a stored chunk and checks its block checksums, quarantining it if either fails.
    /// Returns the chunk's size.
    ///
    /// - Throws: `.notFound`, `.corrupt`, `.io`.
    @discardableResult
    public func verify(_ id: ChunkID) throws(CairnError) -> Int {
        let bytes = try get(id)
        let expected = bytes.withUnsafeBytes { BlockChecksums(of: $0, blockBytes: configuration.limits.checksumBlockBytes) }
        if loadChecksums(id, chunkLength: bytes.count) != expected {
            // The chunk is sound (it hashes to its name); only its checksum file is bad.
            logger.warning("rewriting damaged checksum file", metadata: ["id": "\(id)"])
            rewriteChecksums(id, bytes: bytes)
        }
        return bytes.count
    }

    // MARK: Delete, list, stats

    /// Deletes a chunk; returns whether it was stored.
    @discardableResult
    public func delete(_ id: ChunkID) throws(CairnError) -> Bool {
        openChunks.withLock { $0.remove(id) }
        do {
            let removed = try counters.withLock { (c) throws(Errno) -> Bool in
                guard let st = try FileSystemCalls.status(paths.chunk(id)) else { return false }
                try FileSystemCalls.unlink(paths.chunk(id))
                c.chunkCount -= 1
                c.usedBytes -= st.size
                return true
            }
            try FileSystemCalls.unlink(paths.sum(id))
            if removed && configuration.syncWrites {
                try FileSystemCalls.fsyncDirectory(paths.chunk(id).removingLastComponent())
            }
            return removed
        } catch {
            throw CairnError(.io, "cannot delete chunk \(id)", cause: error)
        }
    }

    /// One page of stored chunks in ID order, starting after `after`. `more` tells whether
    /// another page follows.
    public func list(after: ChunkID?, limit: Int) throws(CairnError) -> (entries: [ChunkInfo], more: Bool) {
        let limit = min(max(limit, 1), configuration.limits.listPageEntriesMax)
        var entries: [ChunkInfo] = []
        let afterHex = after?.hex
        let startFanout = afterHex.map { Paths.fanout($0) } ?? "00"
        do {
            for fanout in Self.fanoutNames where fanout >= startFanout {
                let dir = paths.chunks.appending(fanout)
                for name in try FileSystemCalls.directoryEntries(dir) {
                    guard let id = ChunkID(hex: name), name == id.hex else { continue }
                    if let after, id <= after { continue }
                    guard let st = try FileSystemCalls.status(dir.appending(name)) else { continue }
                    if entries.count == limit { return (entries, true) }
                    entries.append(ChunkInfo(id: id, sizeBytes: st.size, storedAtNanoseconds: st.modificationTimeNanoseconds))
                }
            }
        } catch {
            throw CairnError(.io, "cannot list \(paths.chunks)", cause: error)
        }
        return (entries, false)
    }

    /// Capacity, usage and counters.
    public func stats() throws(CairnError) -> ChunkStoreStats {
        let volume: FileSystemCalls.VolumeStatus
        do {
            volume = try FileSystemCalls.volumeStatus(paths.root)
        } catch {
            throw CairnError(.io, "statvfs \(paths.root) failed", cause: error)
        }
        return counters.withLock { c in
            var s = ChunkStoreStats()
            s.capacityBytes = volume.capacityBytes
            s.availableBytes = volume.availableBytes
            s.reserveBytes = configuration.reserveBytes
            s.usedBytes = c.usedBytes
            s.chunkCount = c.chunkCount
            s.quarantinedTotal = c.quarantinedTotal
            s.rejectedPutTotal = c.rejectedPutTotal
            s.corruptReadTotal = c.corruptReadTotal
            return s
        }
    }

    /// The chunks currently in quarantine (file names: `<id>.<unix-ns>`).
    public func quarantinedFiles() throws(CairnError) -> [String] {
        do {
            return try FileSystemCalls.directoryEntries(paths.quarantine)
        } catch {
            throw CairnError(.io, "cannot list \(paths.quarantine)", cause: error)
        }
    }

    // MARK: Internals

    /// Moves a chunk that failed verification out of the way so it is never served again.
    func quarantine(_ id: ChunkID, reason: String) {
        openChunks.withLock { $0.remove(id) }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let target = paths.quarantine.appending("\(id.hex).\(Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec))")
        do {
            try counters.withLock { (c) throws(Errno) in
                guard let st = try FileSystemCalls.status(paths.chunk(id)) else { return }
                try FileSystemCalls.rename(paths.chunk(id), target)
                c.chunkCount -= 1
                c.usedBytes -= st.size
                c.quarantinedTotal += 1
            }
            try FileSystemCalls.unlink(paths.sum(id))
            if configuration.syncWrites { try FileSystemCalls.fsyncDirectory(paths.chunk(id).removingLastComponent()) }
            logger.error("chunk failed verification and was quarantined",
                         metadata: ["id": "\(id)", "reason": "\(reason)", "moved-to": "\(target)"])
        } catch {
            logger.critical("cannot quarantine corrupt chunk", metadata: ["id": "\(id)", "error": "\(error)"])
        }
    }

    private func openChunk(_ id: ChunkID) throws(CairnError) -> FileDescriptor {
        do {
            return try FileDescriptor.open(paths.chunk(id), .readOnly)
        } catch Errno.noSuchFileOrDirectory {
            throw CairnError(.notFound, "chunk \(id) is not stored here")
        } catch {
            throw CairnError(.io, "cannot open chunk \(id)", cause: error)
        }
    }

    private func chunkSize(_ fd: FileDescriptor, _ id: ChunkID) throws(CairnError) -> Int {
        let size: Int64
        do {
            size = try FileSystemCalls.status(fd).size
        } catch {
            throw CairnError(.io, "cannot stat chunk \(id)", cause: error)
        }
        guard size <= Int64(configuration.limits.chunkBytesMax) else {
            counters.withLock { $0.corruptReadTotal += 1 }
            quarantine(id, reason: "file of \(size) bytes exceeds chunkBytesMax")
            throw CairnError(.corrupt, "chunk \(id) is corrupt (\(size) bytes exceeds chunkBytesMax); quarantined")
        }
        return Int(size)
    }

    private func readChunkFile(_ id: ChunkID) throws(CairnError) -> [UInt8] {
        let fd = try openChunk(id)
        defer { try? fd.close() }
        let size = try chunkSize(fd, id)
        var bytes = [UInt8](repeating: 0, count: size)
        try typedCairnErrors { try bytes.withUnsafeMutableBytes { raw in try preadFully(fd, into: raw, at: 0, id: id) } }
        return bytes
    }

    fileprivate func preadFully(_ fd: FileDescriptor, into raw: UnsafeMutableRawBufferPointer, at offset: Int, id: ChunkID) throws(CairnError) {
        var done = 0
        while done < raw.count {
            let n: Int
            do {
                n = try fd.read(fromAbsoluteOffset: Int64(offset + done), into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]))
            } catch {
                throw CairnError(.io, "cannot read chunk \(id)", cause: error)
            }
            if n == 0 {
                counters.withLock { $0.corruptReadTotal += 1 }
                quarantine(id, reason: "file shrank while being read")
                throw CairnError(.corrupt, "chunk \(id) is truncated; quarantined")
            }
            done += n
        }
    }

    private func loadChecksums(_ id: ChunkID, chunkLength: Int) -> BlockChecksums? {
        guard let bytes = try? FileSystemCalls.readFile(paths.sum(id), bytesMax: 64 + 4 * (configuration.limits.chunkBytesMax / 4096 + 1)) else {
            return nil
        }
        guard let sums = BlockChecksums(decoding: bytes, blockBytesMax: configuration.limits.chunkBytesMax,
                                        chunkBytesMax: configuration.limits.chunkBytesMax),
              sums.chunkLength == chunkLength else { return nil }
        return sums
    }

    @discardableResult
    private func rewriteChecksums(_ id: ChunkID, bytes: [UInt8]) -> BlockChecksums {
        let sums = bytes.withUnsafeBytes { BlockChecksums(of: $0, blockBytes: configuration.limits.checksumBlockBytes) }
        let temp = paths.tmp.appending("\(id.hex).\(getpid()).\(tempSequence.add(1, ordering: .relaxed).newValue).sum")
        do {
            try writeFileDurably(temp, bytes: sums.encoded())
            try FileSystemCalls.rename(temp, paths.sum(id))
        } catch {
            _ = try? FileSystemCalls.unlink(temp)
            logger.warning("cannot rewrite checksum file", metadata: ["id": "\(id)", "error": "\(error)"])
        }
        return sums
    }

    func writeFileDurably(_ path: FilePath, bytes: [UInt8]) throws {
        try writeFile(path, bytes: bytes, sync: configuration.syncWrites)
    }

    /// Writes a whole small file, fsyncing it when `sync` is set.
    func writeFile(_ path: FilePath, bytes: [UInt8], sync: Bool) throws {
        let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate],
                                         permissions: [.ownerReadWrite, .groupRead, .otherRead])
        do {
            _ = try fd.writeAll(bytes)
            if sync { try FileSystemCalls.fsync(fd) }
            try fd.close()
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// Maps a write-side failure to the error a client should see.
    static func writeError(_ message: String, _ error: any Error) -> CairnError {
        if let error = error as? CairnError { return error }
        if let errno = error as? Errno, errno == .noSpace || errno == .diskQuotaExceeded {
            return CairnError(.insufficientSpace, "\(message): disk full", cause: errno)
        }
        return CairnError(.io, message, cause: error)
    }
}

/// A chunk file checked whole against its block checksums (`ChunkStore.openChecked`), open
/// for whoever sends its first `length` bytes (and then closes `descriptor`).
public struct CheckedChunkFile: Sendable {
    public let length: Int
    public let descriptor: OwnedFileDescriptor
}
