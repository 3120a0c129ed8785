import CairnCore
import Placement

/// One replicated request: everything the leader must fix before proposing it (time,
/// credentials, the session and sequence for deduplication) travels inside, so every replica
/// applying it computes the same reply.
public struct MetaCommand: Sendable, Hashable {
    /// The client session; 0 for commands outside any session (session management itself).
    public var session: SessionID
    /// The client's sequence number within its session; 0 turns deduplication off.
    public var sequence: UInt64
    public var credentials: Credentials
    /// The leader's clock when it proposed the command.
    public var now: Timestamp
    public var operation: MetaOperation

    public init(session: SessionID = 0, sequence: UInt64 = 0, credentials: Credentials = .root, now: Timestamp,
                operation: MetaOperation) {
        self.session = session
        self.sequence = sequence
        self.credentials = credentials
        self.now = now
        self.operation = operation
    }
}

/// The operations of the state machine. Reads are commands too, so that a read can go
/// through the log when a caller wants it ordered with writes.
public enum MetaOperation: Sendable, Hashable {
    case openSession(ttlNanoseconds: UInt64)
    case heartbeat
    case closeSession
    case expireSessions
    case lookup(parent: InodeNumber, name: [UInt8])
    case getattr(InodeNumber)
    case readlink(InodeNumber)
    case readdir(InodeNumber, after: UInt64, count: UInt32)
    case statfs
    case getxattr(InodeNumber, name: [UInt8], sizeMax: UInt32?)
    case listxattr(InodeNumber, sizeMax: UInt32?)
    case mkdir(parent: InodeNumber, name: [UInt8], mode: UInt32)
    case mknod(parent: InodeNumber, name: [UInt8], type: FileType, mode: UInt32, rdev: UInt64)
    case symlink(parent: InodeNumber, name: [UInt8], target: [UInt8])
    case create(parent: InodeNumber, name: [UInt8], flags: OpenFlags, mode: UInt32)
    case open(InodeNumber, flags: OpenFlags)
    case close(HandleID)
    /// Closes several handles of the session at once (a client gathers the closes that pile up
    /// while one such command is in flight); handles already closed are skipped. At most
    /// `closeHandlesMax`.
    case closeHandles([HandleID])
    case link(InodeNumber, newParent: InodeNumber, newName: [UInt8])
    case unlink(parent: InodeNumber, name: [UInt8])
    case rmdir(parent: InodeNumber, name: [UInt8])
    case rename(oldParent: InodeNumber, oldName: [UInt8], newParent: InodeNumber, newName: [UInt8], flags: RenameFlags)
    case setattr(InodeNumber, AttributeChanges, handle: HandleID?)
    case commitWrite(handle: HandleID, extents: [Extent])
    case setxattr(InodeNumber, name: [UInt8], value: [UInt8], flags: XattrFlags)
    case removexattr(InodeNumber, name: [UInt8])
    /// A chunkserver joins (or re-registers after a restart): see `Namespace.registerChunkserver`.
    case registerChunkserver(identity: [UInt8], address: String, weight: UInt32, failureDomain: String)
    case setChunkserverState(ChunkserverID, ChunkserverState)
    case setChunkserverWeight(ChunkserverID, UInt32)
    /// The ring now and under recent epochs (a read).
    case ring
    /// The extents of a regular file overlapping a byte range (a read): see `Namespace.readExtents`.
    case readExtents(InodeNumber, offset: UInt64, length: UInt64)

    /// Most handles one `closeHandles` carries.
    public static let closeHandlesMax = 1024

    /// True for operations that change the state (and so are deduplicated by sequence).
    public var isMutation: Bool {
        switch self {
        case .lookup, .getattr, .readlink, .readdir, .statfs, .getxattr, .listxattr, .ring, .readExtents: false
        default: true
        }
    }

    /// The directories whose entries this operation adds or removes (and so whose size, link
    /// count and times it changes), in order, without repeats: what a client may want to know
    /// the attributes of right after it.
    public var changedDirectories: [InodeNumber] {
        switch self {
        case .mkdir(let parent, _, _), .mknod(let parent, _, _, _, _), .symlink(let parent, _, _), .create(let parent, _, _, _),
             .unlink(let parent, _), .rmdir(let parent, _):
            [parent]
        case .link(_, let newParent, _): [newParent]
        case .rename(let oldParent, _, let newParent, _, _): oldParent == newParent ? [oldParent] : [oldParent, newParent]
        default: []
        }
    }
}

/// What applying a command answers.
public enum MetaReply: Sendable, Hashable {
    case failure(FileSystemError)
    case done
    case session(SessionID)
    case attributes(Attributes)
    /// Attributes plus the chunks no operation references any more (truncate, write).
    case attributesReleased(Attributes, released: [ChunkID])
    case opened(OpenResult, released: [ChunkID])
    case released([ChunkID])
    case expired(sessions: [SessionID], released: [ChunkID])
    /// readlink's target or getxattr's value.
    case bytes([UInt8])
    case names([[UInt8]])
    case page(DirectoryPage)
    case statistics(NamespaceStatistics)
    /// A registered chunkserver's id and the ring epoch after the registration.
    case chunkserver(ChunkserverID, epoch: UInt64)
    case ring(RingState)
    /// Extents in file order (at most `extentsPerReadMax`) and the file size.
    case extents([Extent], size: UInt64)
}

// MARK: - Encoding

extension MetaCommand {
    static let formatVersion: UInt8 = 1

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        w.byte(Self.formatVersion)
        w.varint(session)
        w.varint(sequence)
        w.credentials(credentials)
        w.timestamp(now)
        operation.encode(&w)
        return w.bytes
    }

    /// Decodes a command; EBADMSG for anything malformed, truncated, or with trailing bytes.
    public init(decoding bytes: [UInt8]) throws(FileSystemError) {
        var r = ByteReader(bytes)
        guard try r.byte() == Self.formatVersion else { throw .EBADMSG }
        session = try r.varint()
        sequence = try r.varint()
        credentials = try r.credentials()
        now = try r.timestamp()
        operation = try MetaOperation.decode(&r)
        guard r.atEnd else { throw .EBADMSG }
    }
}

extension MetaOperation {
    func encode(_ w: inout ByteWriter) {
        switch self {
        case .openSession(let ttl): w.byte(1); w.varint(ttl)
        case .heartbeat: w.byte(2)
        case .closeSession: w.byte(3)
        case .expireSessions: w.byte(4)
        case .lookup(let p, let n): w.byte(5); w.varint(p); w.data(n)
        case .getattr(let i): w.byte(6); w.varint(i)
        case .readlink(let i): w.byte(7); w.varint(i)
        case .readdir(let i, let after, let count): w.byte(8); w.varint(i); w.varint(after); w.varint(count)
        case .statfs: w.byte(9)
        case .getxattr(let i, let n, let size):
            w.byte(10); w.varint(i); w.data(n); w.bool(size != nil); if let size { w.varint(size) }
        case .listxattr(let i, let size):
            w.byte(11); w.varint(i); w.bool(size != nil); if let size { w.varint(size) }
        case .mkdir(let p, let n, let mode): w.byte(12); w.varint(p); w.data(n); w.varint(mode)
        case .mknod(let p, let n, let type, let mode, let rdev):
            w.byte(13); w.varint(p); w.data(n); w.byte(type.rawValue); w.varint(mode); w.varint(rdev)
        case .symlink(let p, let n, let t): w.byte(14); w.varint(p); w.data(n); w.data(t)
        case .create(let p, let n, let flags, let mode): w.byte(15); w.varint(p); w.data(n); w.varint(flags.rawValue); w.varint(mode)
        case .open(let i, let flags): w.byte(16); w.varint(i); w.varint(flags.rawValue)
        case .close(let h): w.byte(17); w.varint(h)
        case .closeHandles(let handles):
            w.byte(31)
            w.varint(UInt64(handles.count))
            for h in handles { w.varint(h) }
        case .link(let i, let np, let nn): w.byte(18); w.varint(i); w.varint(np); w.data(nn)
        case .unlink(let p, let n): w.byte(19); w.varint(p); w.data(n)
        case .rmdir(let p, let n): w.byte(20); w.varint(p); w.data(n)
        case .rename(let op, let on, let np, let nn, let flags):
            w.byte(21); w.varint(op); w.data(on); w.varint(np); w.data(nn); w.varint(flags.rawValue)
        case .setattr(let i, let c, let handle):
            w.byte(22); w.varint(i)
            var present: UInt8 = 0
            if c.mode != nil { present |= 1 }
            if c.uid != nil { present |= 2 }
            if c.gid != nil { present |= 4 }
            if c.size != nil { present |= 8 }
            if handle != nil { present |= 16 }
            w.byte(present)
            if let v = c.mode { w.varint(v) }
            if let v = c.uid { w.varint(v) }
            if let v = c.gid { w.varint(v) }
            if let v = c.size { w.varint(v) }
            if let v = handle { w.varint(v) }
            for change in [c.atime, c.mtime] {
                switch change {
                case .omit: w.byte(0)
                case .now: w.byte(1)
                case .set(let t): w.byte(2); w.timestamp(t)
                }
            }
        case .commitWrite(let h, let extents):
            w.byte(23); w.varint(h); w.varint(extents.count)
            for e in extents { w.extent(e) }
        case .setxattr(let i, let n, let v, let flags): w.byte(24); w.varint(i); w.data(n); w.data(v); w.varint(flags.rawValue)
        case .removexattr(let i, let n): w.byte(25); w.varint(i); w.data(n)
        case .registerChunkserver(let identity, let address, let weight, let domain):
            w.byte(26); w.data(identity); w.string(address); w.varint(weight); w.string(domain)
        case .setChunkserverState(let id, let state): w.byte(27); w.varint(id.rawValue); w.byte(state.rawValue)
        case .setChunkserverWeight(let id, let weight): w.byte(28); w.varint(id.rawValue); w.varint(weight)
        case .ring: w.byte(29)
        case .readExtents(let i, let offset, let length): w.byte(30); w.varint(i); w.varint(offset); w.varint(length)
        }
    }

    static func decode(_ r: inout ByteReader) throws(FileSystemError) -> MetaOperation {
        switch try r.byte() {
        case 1: return .openSession(ttlNanoseconds: try r.varint())
        case 2: return .heartbeat
        case 3: return .closeSession
        case 4: return .expireSessions
        case 5: return .lookup(parent: try r.varint(), name: try r.data())
        case 6: return .getattr(try r.varint())
        case 7: return .readlink(try r.varint())
        case 8: return .readdir(try r.varint(), after: try r.varint(), count: try r.uint32())
        case 9: return .statfs
        case 10:
            let i = try r.varint(), n = try r.data()
            return .getxattr(i, name: n, sizeMax: try r.bool() ? try r.uint32() : nil)
        case 11:
            let i = try r.varint()
            return .listxattr(i, sizeMax: try r.bool() ? try r.uint32() : nil)
        case 12: return .mkdir(parent: try r.varint(), name: try r.data(), mode: try r.uint32())
        case 13: return .mknod(parent: try r.varint(), name: try r.data(), type: try r.fileType(), mode: try r.uint32(), rdev: try r.varint())
        case 14: return .symlink(parent: try r.varint(), name: try r.data(), target: try r.data())
        case 15: return .create(parent: try r.varint(), name: try r.data(), flags: OpenFlags(rawValue: try r.uint32()), mode: try r.uint32())
        case 16: return .open(try r.varint(), flags: OpenFlags(rawValue: try r.uint32()))
        case 17: return .close(try r.varint())
        case 18: return .link(try r.varint(), newParent: try r.varint(), newName: try r.data())
        case 19: return .unlink(parent: try r.varint(), name: try r.data())
        case 20: return .rmdir(parent: try r.varint(), name: try r.data())
        case 21:
            return .rename(oldParent: try r.varint(), oldName: try r.data(), newParent: try r.varint(), newName: try r.data(),
                           flags: RenameFlags(rawValue: try r.uint32()))
        case 22:
            let i = try r.varint()
            let present = try r.byte()
            guard present & ~31 == 0 else { throw .EBADMSG }
            var c = AttributeChanges()
            if present & 1 != 0 { c.mode = try r.uint32() }
            if present & 2 != 0 { c.uid = try r.uint32() }
            if present & 4 != 0 { c.gid = try r.uint32() }
            if present & 8 != 0 { c.size = try r.varint() }
            let handle: HandleID? = present & 16 != 0 ? try r.varint() : nil
            func time(_ r: inout ByteReader) throws(FileSystemError) -> TimeChange {
                switch try r.byte() {
                case 0: return .omit
                case 1: return .now
                case 2: return .set(try r.timestamp())
                default: throw .EBADMSG
                }
            }
            c.atime = try time(&r)
            c.mtime = try time(&r)
            return .setattr(i, c, handle: handle)
        case 23:
            let h = try r.varint()
            let n = try r.count(itemBytesMin: 3 + ChunkID.byteCount)
            var extents: [Extent] = []
            extents.reserveCapacity(n)
            for _ in 0..<n { extents.append(try r.extent()) }
            return .commitWrite(handle: h, extents: extents)
        case 24:
            return .setxattr(try r.varint(), name: try r.data(), value: try r.data(), flags: XattrFlags(rawValue: try r.uint32()))
        case 25: return .removexattr(try r.varint(), name: try r.data())
        case 26:
            return .registerChunkserver(identity: try r.data(), address: try r.string(), weight: try r.uint32(), failureDomain: try r.string())
        case 27:
            let id = ChunkserverID(try r.varint())
            guard let state = ChunkserverState(rawValue: try r.byte()) else { throw .EBADMSG }
            return .setChunkserverState(id, state)
        case 28: return .setChunkserverWeight(ChunkserverID(try r.varint()), try r.uint32())
        case 29: return .ring
        case 30: return .readExtents(try r.varint(), offset: try r.varint(), length: try r.varint())
        case 31:
            let count = try r.varint()
            guard count <= UInt64(MetaOperation.closeHandlesMax) else { throw .EBADMSG }
            var handles: [HandleID] = []
            handles.reserveCapacity(Int(count))
            for _ in 0..<count { handles.append(try r.varint()) }
            return .closeHandles(handles)
        default: throw .EBADMSG
        }
    }
}

extension MetaReply {
    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        switch self {
        case .failure(let e): w.byte(0); w.signed(Int64(e.errno))
        case .done: w.byte(1)
        case .session(let s): w.byte(2); w.varint(s)
        case .attributes(let a): w.byte(3); w.attributes(a)
        case .attributesReleased(let a, let released): w.byte(4); w.attributes(a); w.chunkIDs(released)
        case .opened(let o, let released):
            w.byte(5); w.attributes(o.attributes); w.varint(o.handle); w.bool(o.created); w.chunkIDs(released)
        case .released(let ids): w.byte(6); w.chunkIDs(ids)
        case .expired(let sessions, let released):
            w.byte(7); w.varint(sessions.count)
            for s in sessions { w.varint(s) }
            w.chunkIDs(released)
        case .bytes(let b): w.byte(8); w.data(b)
        case .names(let names):
            w.byte(9); w.varint(names.count)
            for n in names { w.data(n) }
        case .page(let page):
            w.byte(10); w.bool(page.end); w.varint(page.entries.count)
            for e in page.entries { w.data(e.name); w.varint(e.inode); w.byte(e.type.rawValue); w.varint(e.cookie) }
        case .statistics(let s):
            w.byte(11); w.varint(s.inodesUsed); w.varint(s.inodesMax); w.varint(s.fileBytes); w.varint(s.chunksReferenced)
            w.varint(s.nameBytesMax)
        case .chunkserver(let id, let epoch): w.byte(12); w.varint(id.rawValue); w.varint(epoch)
        case .ring(let state): w.byte(13); w.ringState(state)
        case .extents(let extents, let size):
            w.byte(14); w.varint(extents.count)
            for e in extents { w.extent(e) }
            w.varint(size)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(FileSystemError) {
        var r = ByteReader(bytes)
        switch try r.byte() {
        case 0:
            let errno = try r.signed()
            guard let e = Int32(exactly: errno) else { throw .EBADMSG }
            self = .failure(FileSystemError(errno: e))
        case 1: self = .done
        case 2: self = .session(try r.varint())
        case 3: self = .attributes(try r.attributes())
        case 4: self = .attributesReleased(try r.attributes(), released: try r.chunkIDs())
        case 5:
            let a = try r.attributes(), h = try r.varint(), created = try r.bool()
            self = .opened(OpenResult(attributes: a, handle: h, created: created), released: try r.chunkIDs())
        case 6: self = .released(try r.chunkIDs())
        case 7:
            let n = try r.count(itemBytesMin: 1)
            var sessions: [SessionID] = []
            for _ in 0..<n { sessions.append(try r.varint()) }
            self = .expired(sessions: sessions, released: try r.chunkIDs())
        case 8: self = .bytes(try r.data())
        case 9:
            let n = try r.count(itemBytesMin: 1)
            var names: [[UInt8]] = []
            for _ in 0..<n { names.append(try r.data()) }
            self = .names(names)
        case 10:
            let end = try r.bool()
            let n = try r.count(itemBytesMin: 4)
            var entries: [DirectoryEntry] = []
            for _ in 0..<n {
                entries.append(DirectoryEntry(name: try r.data(), inode: try r.varint(), type: try r.fileType(), cookie: try r.varint()))
            }
            self = .page(DirectoryPage(entries: entries, end: end))
        case 11:
            self = .statistics(NamespaceStatistics(inodesUsed: try r.varint(), inodesMax: try r.varint(), fileBytes: try r.varint(),
                                                   chunksReferenced: try r.varint(), nameBytesMax: try r.uint32()))
        case 12: self = .chunkserver(ChunkserverID(try r.varint()), epoch: try r.varint())
        case 13: self = .ring(try r.ringState())
        case 14:
            let n = try r.count(itemBytesMin: 3 + ChunkID.byteCount)
            var extents: [Extent] = []
            extents.reserveCapacity(n)
            for _ in 0..<n { extents.append(try r.extent()) }
            self = .extents(extents, size: try r.varint())
        default: throw .EBADMSG
        }
        guard r.atEnd else { throw .EBADMSG }
    }
}
