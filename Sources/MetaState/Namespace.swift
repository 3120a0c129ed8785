import CairnCore

/// One inode as the namespace stores it.
struct InodeRecord: Sendable, Equatable {
    var type: FileType
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var nlink: UInt32
    var size: UInt64
    var atime: Timestamp
    var mtime: Timestamp
    var ctime: Timestamp
    var rdev: UInt64
    /// Symlink target; empty for other types.
    var target: [UInt8] = []
    /// Extended attributes. Listed and encoded sorted by name, never in dictionary order.
    var xattrs: [[UInt8]: [UInt8]] = [:]
    /// Regular files only: the manifest (see `Manifest`).
    var extents: [Extent] = []
    /// Directories only.
    var directory: DirectoryRecord?
    /// Handles open on this inode across all sessions: an unlinked inode lives while this is > 0.
    var openCount: Int = 0

    var xattrBytes: Int { xattrs.reduce(0) { $0 + $1.key.count + $1.value.count } }
}

/// A directory's entries, each with a cookie that never changes while the entry exists: a
/// readdir resumed at a cookie continues after it whatever was inserted or removed since.
struct DirectoryRecord: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        var inode: InodeNumber
        var cookie: UInt64
    }
    /// The parent directory (root's parent is root).
    var parent: InodeNumber
    var entries: [[UInt8]: Entry] = [:]
    /// (cookie, name) sorted by cookie: the readdir order.
    var order: [Cookied] = []
    /// The next cookie to hand out; 1 and 2 are "." and "..".
    var nextCookie: UInt64 = 3

    struct Cookied: Sendable, Equatable {
        var cookie: UInt64
        var name: [UInt8]
    }

    init(parent: InodeNumber) { self.parent = parent }

    /// Index in `order` of the first entry with a cookie above `cookie`.
    func firstIndex(after cookie: UInt64) -> Int {
        var low = 0, high = order.count
        while low < high {
            let mid = (low + high) / 2
            if order[mid].cookie <= cookie { low = mid + 1 } else { high = mid }
        }
        return low
    }

    mutating func insert(_ name: [UInt8], inode: InodeNumber) {
        precondition(entries[name] == nil, "directory entry inserted twice")
        entries[name] = Entry(inode: inode, cookie: nextCookie)
        order.append(Cookied(cookie: nextCookie, name: name))
        nextCookie += 1
    }

    mutating func remove(_ name: [UInt8]) {
        guard let entry = entries.removeValue(forKey: name) else { preconditionFailure("removing a missing entry") }
        let index = firstIndex(after: entry.cookie - 1)
        precondition(index < order.count && order[index].cookie == entry.cookie, "directory order out of step")
        order.remove(at: index)
    }
}

/// A client session: a mount that heartbeats, holds open handles and has its retried
/// mutations deduplicated by sequence number.
struct SessionRecord: Sendable, Equatable {
    struct Handle: Sendable, Equatable {
        var inode: InodeNumber
        var flags: OpenFlags
    }
    var lastHeartbeat: Timestamp
    /// How long the session lives without a heartbeat, in nanoseconds.
    var ttlNanoseconds: UInt64
    var handles: [HandleID: Handle] = [:]
    var nextHandle: HandleID = 1
    /// Replies of the most recent mutations, by sequence number (bounded by `dedupRepliesPerSessionMax`).
    var replies: [UInt64: [UInt8]] = [:]
    /// Sequence numbers at or below this whose replies were dropped: a retry of one is refused.
    var forgottenThrough: UInt64 = 0
}

/// The metadata namespace: inodes, directory entries, sessions, and the chunkserver registry. A pure, deterministic value:
/// every mutating method takes the time and credentials from its caller (the leader fixed them
/// in the log entry), allocates inode numbers from a counter, and never depends on dictionary
/// order. Each operation checks everything before it changes anything: it applies wholly or not at all.
public struct Namespace: Sendable, Equatable {
    public static let rootInode: InodeNumber = 1

    public let limits: MetaLimits
    var inodes: [InodeNumber: InodeRecord] = [:]
    var nextInode: InodeNumber = 2
    var sessions: [SessionID: SessionRecord] = [:]
    var nextSession: SessionID = 1
    /// References to each chunk from all extents of all files (derived; rebuilt on restore).
    var chunkReferences: [ChunkID: UInt64] = [:]
    /// The chunkservers and the placement ring (see `ChunkserverRegistry`).
    var registry = ChunkserverRegistry()

    /// A fresh namespace: root directory 0755 root:root created at `now`.
    public init(limits: MetaLimits = MetaLimits(), now: Timestamp = .zero) {
        self.limits = limits
        var root = InodeRecord(type: .directory, mode: 0o755, uid: 0, gid: 0, nlink: 2, size: 0,
                               atime: now, mtime: now, ctime: now, rdev: 0)
        root.directory = DirectoryRecord(parent: Self.rootInode)
        inodes[Self.rootInode] = root
    }

    init(limits: MetaLimits, empty: Void) { self.limits = limits }

    // MARK: Queries

    public var inodeCount: Int { inodes.count }

    public func getattr(_ inode: InodeNumber) -> Result<Attributes, FileSystemError> {
        guard let record = inodes[inode] else { return .failure(.ENOENT) }
        return .success(attributes(inode, record))
    }

    public func lookup(_ parent: InodeNumber, _ name: [UInt8], _ cred: Credentials) -> Result<Attributes, FileSystemError> {
        attempt { () throws(FileSystemError) in
            let inode = try lookupInode(parent, name, cred)
            return attributes(inode, inodes[inode]!)
        }
    }

    public func readlink(_ inode: InodeNumber) -> Result<[UInt8], FileSystemError> {
        guard let record = inodes[inode] else { return .failure(.ENOENT) }
        guard record.type == .symlink else { return .failure(.EINVAL) }
        return .success(record.target)
    }

    /// Up to `count` entries after `cookie` (0 starts at ".", which has cookie 1; ".." has 2).
    public func readdir(_ inode: InodeNumber, after cookie: UInt64, count: Int, _ cred: Credentials) -> Result<DirectoryPage, FileSystemError> {
        attempt { () throws(FileSystemError) in
            let record = try directoryRecord(inode)
            guard permitted(record, 4, cred) else { throw .EACCES }
            let dir = record.directory!
            let wanted = max(1, min(count, limits.readdirPageEntriesMax))
            var out: [DirectoryEntry] = []
            if cookie < 1 { out.append(DirectoryEntry(name: Self.dot, inode: inode, type: .directory, cookie: 1)) }
            if cookie < 2 {
                if out.count == wanted { return DirectoryPage(entries: out, end: false) }
                out.append(DirectoryEntry(name: Self.dotDot, inode: dir.parent, type: .directory, cookie: 2))
            }
            var index = dir.firstIndex(after: max(cookie, 2))
            while index < dir.order.count, out.count < wanted {
                let item = dir.order[index]
                let child = dir.entries[item.name]!.inode
                out.append(DirectoryEntry(name: item.name, inode: child, type: inodes[child]!.type, cookie: item.cookie))
                index += 1
            }
            return DirectoryPage(entries: out, end: index >= dir.order.count)
        }
    }

    public func statistics() -> NamespaceStatistics {
        var bytes: UInt64 = 0
        for record in inodes.values where record.type == .regular { bytes &+= record.size }
        return NamespaceStatistics(inodesUsed: UInt64(inodes.count), inodesMax: UInt64(limits.inodesMax), fileBytes: bytes,
                                   chunksReferenced: UInt64(chunkReferences.count), nameBytesMax: UInt32(limits.nameBytesMax))
    }

    /// The extents of a regular file, in file order.
    public func extents(_ inode: InodeNumber) -> Result<[Extent], FileSystemError> {
        guard let record = inodes[inode] else { return .failure(.ENOENT) }
        guard record.type == .regular else { return .failure(record.type == .directory ? .EISDIR : .EINVAL) }
        return .success(record.extents)
    }

    /// getxattr(2): the value, or ERANGE if it is longer than `sizeMax` (pass nil to get it whole;
    /// getxattr with size 0 is a size query the client answers from the value's length).
    public func getxattr(_ inode: InodeNumber, _ name: [UInt8], sizeMax: Int?, _ cred: Credentials) -> Result<[UInt8], FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard let record = inodes[inode] else { throw .ENOENT }
            try checkXattrName(name)
            try xattrPermission(record, name, write: false, cred)
            try checkXattrNamespace(name)
            guard let value = record.xattrs[name] else { throw .ENODATA }
            if let sizeMax, value.count > sizeMax { throw .ERANGE }
            return value
        }
    }

    /// listxattr(2): names in byte order (as tmpfs lists them), trusted.* hidden from non-root.
    public func listxattr(_ inode: InodeNumber, sizeMax: Int?, _ cred: Credentials) -> Result<[[UInt8]], FileSystemError> {
        guard let record = inodes[inode] else { return .failure(.ENOENT) }
        let names = record.xattrs.keys.filter { cred.isRoot || !$0.starts(with: Self.trustedPrefix) }.sorted { $0.lexicographicallyPrecedes($1) }
        let bytes = names.reduce(0) { $0 + $1.count + 1 }
        if let sizeMax, bytes > sizeMax { return .failure(.ERANGE) }
        return .success(names)
    }

    // MARK: Creating

    /// mkdir(2) of `name` in `parent`.
    public mutating func mkdir(_ parent: InodeNumber, _ name: [UInt8], mode: UInt32, _ cred: Credentials, now: Timestamp) -> Result<Attributes, FileSystemError> {
        attempt { () throws(FileSystemError) in
            try prepareCreate(parent, name, cred, dotError: .EEXIST)
            let inode = try makeInode(parent, name, .directory, mode: mode & 0o1777, cred, now)
            return attributes(inode, inodes[inode]!)
        }
    }

    /// mknod(2): regular file, FIFO, socket or device (devices need root).
    public mutating func mknod(_ parent: InodeNumber, _ name: [UInt8], type: FileType, mode: UInt32, rdev: UInt64,
                               _ cred: Credentials, now: Timestamp) -> Result<Attributes, FileSystemError> {
        attempt { () throws(FileSystemError) in
            switch type {
            case .directory: throw .EPERM
            case .symlink: throw .EINVAL
            default: break
            }
            try prepareCreate(parent, name, cred, dotError: .EEXIST)
            if type == .characterDevice || type == .blockDevice, !cred.isRoot { throw .EPERM }
            let isDevice = type == .characterDevice || type == .blockDevice
            let inode = try makeInode(parent, name, type, mode: mode & ModeBits.all, cred, now, rdev: isDevice ? rdev : 0)
            return attributes(inode, inodes[inode]!)
        }
    }

    /// symlink(2): `name` in `parent` pointing at `target`.
    public mutating func symlink(_ parent: InodeNumber, _ name: [UInt8], target: [UInt8], _ cred: Credentials, now: Timestamp) -> Result<Attributes, FileSystemError> {
        attempt { () throws(FileSystemError) in
            if target.isEmpty { throw .ENOENT }
            if target.count > limits.symlinkTargetBytesMax { throw .ENAMETOOLONG }
            if target.contains(0) { throw .EINVAL }
            try prepareCreate(parent, name, cred, dotError: .EEXIST)
            let inode = try makeInode(parent, name, .symlink, mode: 0o777, cred, now, target: target)
            return attributes(inode, inodes[inode]!)
        }
    }

    /// open(2) of `name` in `parent`, creating it with O_CREAT (O_EXCL: it must not exist).
    /// The handle belongs to `session`.
    public mutating func create(_ parent: InodeNumber, _ name: [UInt8], flags: OpenFlags, mode: UInt32, session: SessionID,
                                _ cred: Credentials, now: Timestamp) -> Result<(OpenResult, [ChunkID]), FileSystemError> {
        attempt { () throws(FileSystemError) in
            let dirRecord = try directoryRecord(parent)
            guard permitted(dirRecord, 1, cred) else { throw .EACCES }
            try checkSessionHasRoom(session)
            if isDotName(name) {
                if flags.contains(.create) && flags.contains(.exclusive) { throw .EEXIST }
                if flags.contains(.create) { throw .EISDIR }
                let target = try lookupInode(parent, name, cred)
                return try openExisting(target, flags: flags, session: session, cred, now)
            }
            try checkName(name)
            if let existing = dirRecord.directory!.entries[name]?.inode {
                if flags.contains(.create) && flags.contains(.exclusive) { throw .EEXIST }
                if flags.contains(.create), inodes[existing]!.type == .directory { throw .EISDIR }
                if flags.contains(.create) { try mayCreateInSticky(dirRecord, inodes[existing]!, cred) }
                return try openExisting(existing, flags: flags, session: session, cred, now)
            }
            guard flags.contains(.create) else { throw .ENOENT }
            guard permitted(dirRecord, 3, cred) else { throw .EACCES }
            try checkDirectoryHasRoom(parent, addingDirectory: false)
            let inode = try makeInode(parent, name, .regular, mode: mode & ModeBits.all, cred, now)
            let handle = addHandle(session, inode, flags)
            return (OpenResult(attributes: attributes(inode, inodes[inode]!), handle: handle, created: true), [])
        }
    }

    /// open(2) of an existing inode (the kernel resolved the path), in `session`.
    public mutating func open(_ inode: InodeNumber, flags: OpenFlags, session: SessionID, _ cred: Credentials,
                              now: Timestamp) -> Result<(OpenResult, [ChunkID]), FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard inodes[inode] != nil else { throw .ENOENT }
            try checkSessionHasRoom(session)
            return try openExisting(inode, flags: flags, session: session, cred, now)
        }
    }

    /// close(2) of a handle. Returns the chunks no longer referenced if this closed the last
    /// handle of an unlinked file.
    public mutating func close(session: SessionID, handle: HandleID) -> Result<[ChunkID], FileSystemError> {
        guard let record = sessions[session] else { return .failure(.ESTALE) }
        guard let open = record.handles[handle] else { return .failure(.EBADF) }
        sessions[session]!.handles[handle] = nil
        return .success(releaseHandle(open.inode))
    }

    /// Closes each of `handles` still open in the session (one already closed is skipped: a
    /// retried batch is harmless); returns every chunk released.
    public mutating func closeHandles(session: SessionID, handles: [HandleID]) -> Result<[ChunkID], FileSystemError> {
        guard sessions[session] != nil else { return .failure(.ESTALE) }
        var released: [ChunkID] = []
        for handle in handles {
            if case .success(let chunks) = close(session: session, handle: handle) { released += chunks }
        }
        return .success(released)
    }

    /// link(2): a new name `newName` in `newParent` for `inode`.
    public mutating func link(_ inode: InodeNumber, _ newParent: InodeNumber, _ newName: [UInt8], _ cred: Credentials,
                              now: Timestamp) -> Result<Attributes, FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard let source = inodes[inode] else { throw .ENOENT }
            let parentRecord = try directoryRecord(newParent)
            guard permitted(parentRecord, 1, cred) else { throw .EACCES }
            if isDotName(newName) { throw .EEXIST }
            try checkName(newName)
            if parentRecord.directory!.entries[newName] != nil { throw .EEXIST }
            if limits.protectedHardlinks, !cred.isRoot, cred.uid != source.uid {
                let safe = source.type == .regular && source.mode & ModeBits.setUID == 0
                    && source.mode & (ModeBits.setGID | ModeBits.groupExecute) != (ModeBits.setGID | ModeBits.groupExecute)
                    && permitted(source, 6, cred)
                if !safe { throw .EPERM }
            }
            guard permitted(parentRecord, 3, cred) else { throw .EACCES }
            if source.type == .directory { throw .EPERM }
            if source.nlink == 0 { throw .ENOENT }
            if source.nlink >= limits.linksMax { throw .EMLINK }
            try checkDirectoryHasRoom(newParent, addingDirectory: false)
            inodes[inode]!.nlink += 1
            inodes[inode]!.ctime = now
            inodes[newParent]!.directory!.insert(newName, inode: inode)
            touchDirectory(newParent, now)
            return attributes(inode, inodes[inode]!)
        }
    }

    // MARK: Removing

    /// unlink(2). Returns the chunks no longer referenced (none while the file is still open).
    public mutating func unlink(_ parent: InodeNumber, _ name: [UInt8], _ cred: Credentials, now: Timestamp) -> Result<[ChunkID], FileSystemError> {
        attempt { () throws(FileSystemError) in
            let dirRecord = try directoryRecord(parent)
            guard permitted(dirRecord, 1, cred) else { throw .EACCES }
            if isDotName(name) { throw .EISDIR }
            try checkName(name)
            guard let victim = dirRecord.directory!.entries[name]?.inode else { throw .ENOENT }
            try mayDelete(parent, victim, isDirectory: false, cred)
            inodes[parent]!.directory!.remove(name)
            touchDirectory(parent, now)
            return dropLink(victim, now)
        }
    }

    /// rmdir(2) of an empty directory.
    public mutating func rmdir(_ parent: InodeNumber, _ name: [UInt8], _ cred: Credentials, now: Timestamp) -> Result<Void, FileSystemError> {
        attempt { () throws(FileSystemError) in
            let dirRecord = try directoryRecord(parent)
            guard permitted(dirRecord, 1, cred) else { throw .EACCES }
            if name == Self.dot { throw .EINVAL }
            if name == Self.dotDot { throw .ENOTEMPTY }
            try checkName(name)
            guard let victim = dirRecord.directory!.entries[name]?.inode else { throw .ENOENT }
            try mayDelete(parent, victim, isDirectory: true, cred)
            guard inodes[victim]!.directory!.entries.isEmpty else { throw .ENOTEMPTY }
            inodes[parent]!.directory!.remove(name)
            inodes[parent]!.nlink -= 1
            touchDirectory(parent, now)
            _ = dropLink(victim, now)
        }
    }

    /// rename(2)/renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE. Returns the chunks no
    /// longer referenced when a replaced file lost its last link.
    public mutating func rename(_ oldParent: InodeNumber, _ oldName: [UInt8], _ newParent: InodeNumber, _ newName: [UInt8],
                                flags: RenameFlags, _ cred: Credentials, now: Timestamp) -> Result<[ChunkID], FileSystemError> {
        attempt { () throws(FileSystemError) in
            if let error = Self.checkRenameFlags(flags) { throw error }
            let oldDir = try directoryRecord(oldParent)
            let newDir = try directoryRecord(newParent)
            guard permitted(oldDir, 1, cred), permitted(newDir, 1, cred) else { throw .EACCES }
            if isDotName(oldName) { throw .EBUSY }
            if isDotName(newName) { throw flags.contains(.noReplace) ? .EEXIST : .EBUSY }
            try checkName(oldName)
            guard let source = oldDir.directory!.entries[oldName]?.inode else { throw .ENOENT }
            try checkName(newName)
            let target = newDir.directory!.entries[newName]?.inode
            if flags.contains(.exchange), target == nil { throw .ENOENT }
            if flags.contains(.noReplace), target != nil { throw .EEXIST }
            let sourceIsDir = inodes[source]!.type == .directory
            let targetIsDir = target.map { inodes[$0]!.type == .directory } ?? false
            if oldParent != newParent {
                if sourceIsDir, isAncestor(source, of: newParent) { throw .EINVAL }
                if let target, targetIsDir, isAncestor(target, of: oldParent) { throw flags.contains(.exchange) ? .EINVAL : .ENOTEMPTY }
            }
            if source == target { return [] }
            try mayDelete(oldParent, source, isDirectory: sourceIsDir, cred)
            if let target {
                try mayDelete(newParent, target, isDirectory: flags.contains(.exchange) ? targetIsDir : sourceIsDir, cred)
            } else {
                guard permitted(newDir, 3, cred) else { throw .EACCES }
            }
            if oldParent != newParent {
                if sourceIsDir, !permitted(inodes[source]!, 2, cred) { throw .EACCES }
                if flags.contains(.exchange), let target, targetIsDir, !permitted(inodes[target]!, 2, cred) { throw .EACCES }
                if sourceIsDir, !targetIsDir, newDir.nlink >= limits.linksMax { throw .EMLINK }
                if flags.contains(.exchange), !sourceIsDir, targetIsDir, oldDir.nlink >= limits.linksMax { throw .EMLINK }
            }
            if !flags.contains(.exchange), let target, targetIsDir, !inodes[target]!.directory!.entries.isEmpty { throw .ENOTEMPTY }
            if target == nil { try checkDirectoryHasRoom(newParent, addingDirectory: false) }

            // Checks done: change the state.
            if flags.contains(.exchange), let target {
                inodes[oldParent]!.directory!.entries[oldName]!.inode = target
                inodes[newParent]!.directory!.entries[newName]!.inode = source
                if oldParent != newParent {
                    if sourceIsDir { reparent(source, from: oldParent, to: newParent) }
                    if targetIsDir { reparent(target, from: newParent, to: oldParent) }
                }
                inodes[source]!.ctime = now
                inodes[target]!.ctime = now
                touchDirectory(oldParent, now)
                touchDirectory(newParent, now)
                return []
            }
            var released: [ChunkID] = []
            if let target {
                inodes[newParent]!.directory!.remove(newName)
                if targetIsDir { inodes[newParent]!.nlink -= 1 }
                released = dropLink(target, now)
            }
            inodes[oldParent]!.directory!.remove(oldName)
            inodes[newParent]!.directory!.insert(newName, inode: source)
            if sourceIsDir, oldParent != newParent { reparent(source, from: oldParent, to: newParent) }
            inodes[source]!.ctime = now
            touchDirectory(oldParent, now)
            touchDirectory(newParent, now)
            return released
        }
    }

    /// The xattr syscalls check their arguments before they look at the path: flags (EINVAL),
    /// then the name (empty or longer than the bound: ERANGE), then the value's size (E2BIG).
    public func checkXattrArguments(name: [UInt8], valueCount: Int = 0, flags: XattrFlags = []) -> FileSystemError? {
        if flags.rawValue & ~(XattrFlags.create.rawValue | XattrFlags.replace.rawValue) != 0 { return .EINVAL }
        if name.isEmpty || name.count > limits.xattrNameBytesMax { return .ERANGE }
        if name.contains(0) { return .EINVAL }
        if valueCount > limits.xattrValueBytesMax { return .E2BIG }
        return nil
    }

    /// renameat2 refuses bad flags before it looks at any path: EINVAL for unknown bits
    /// (RENAME_WHITEOUT, which only overlay file systems use, is not supported) and for
    /// RENAME_NOREPLACE together with RENAME_EXCHANGE.
    public static func checkRenameFlags(_ flags: RenameFlags) -> FileSystemError? {
        if flags.rawValue & ~(RenameFlags.noReplace.rawValue | RenameFlags.exchange.rawValue) != 0
            || flags.contains([.noReplace, .exchange]) { return .EINVAL }
        return nil
    }

    // MARK: Changing

    /// setattr: chmod, chown/chgrp, truncate, utimensat, with the kernel's permission rules.
    /// `handle` names an open handle of `session` when the change comes through a file
    /// (ftruncate: write permission was checked at open). Returns released chunks (truncate).
    public mutating func setattr(_ inode: InodeNumber, _ changes: AttributeChanges, handle: (SessionID, HandleID)? = nil,
                                 _ cred: Credentials, now: Timestamp) -> Result<(Attributes, [ChunkID]), FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard var record = inodes[inode] else { throw .ENOENT }
            if let size = changes.size {
                if let (session, handleID) = handle.map({ ($0.0, $0.1) }) {
                    // ftruncate: the handle must be open for writing on a regular file (EINVAL otherwise).
                    guard let open = sessions[session]?.handles[handleID], open.inode == inode else { throw .EBADF }
                    guard open.flags.contains(.write), record.type == .regular else { throw .EINVAL }
                } else {
                    // truncate: EISDIR for a directory, EINVAL for other non-regular files, then write permission.
                    switch record.type {
                    case .directory: throw .EISDIR
                    case .regular: break
                    default: throw .EINVAL
                    }
                    if !permitted(record, 2, cred) { throw .EACCES }
                }
                if size > limits.fileBytesMax { throw .EFBIG }
            }
            if changes.mode != nil {
                // chmod: symlinks have no mode of their own (fchmodat2 AT_SYMLINK_NOFOLLOW gives EOPNOTSUPP).
                if record.type == .symlink { throw .EOPNOTSUPP }
                if !ownerOrRoot(record, cred) { throw .EPERM }
            }
            // chown: root may give anything away; the owner may only "change" the uid to itself
            // and the gid to a group it is in. On anything but a directory it also kills
            // set-user-ID, and set-group-ID when group-executable or the caller is outside the
            // file's group (ATTR_KILL_SUID, setattr_should_drop_sgid); changing the mode that
            // way needs the owner or root, as any mode change does.
            var chownMode: UInt32?
            if changes.uid != nil || changes.gid != nil {
                if let uid = changes.uid, !(cred.isRoot || (cred.uid == record.uid && uid == record.uid)) { throw .EPERM }
                if let gid = changes.gid, !(cred.isRoot || (cred.uid == record.uid && (gid == record.gid || cred.inGroup(gid)))) { throw .EPERM }
                if record.type != .directory, changes.mode == nil {
                    var m = record.mode & ~ModeBits.setUID
                    if m & ModeBits.setGID != 0, m & ModeBits.groupExecute != 0 || !(cred.isRoot || cred.inGroup(record.gid)) {
                        m &= ~ModeBits.setGID
                    }
                    if m != record.mode {
                        if !ownerOrRoot(record, cred) { throw .EPERM }
                        if !cred.isRoot, !cred.inGroup(changes.gid ?? record.gid) { m &= ~ModeBits.setGID }
                        chownMode = m
                    }
                }
            }
            // utimensat: both UTIME_NOW is a "touch" anyone with write permission may do; any
            // other change of a time (one NOW and one OMIT included) is for the owner only.
            let touches = changes.atime != .omit || changes.mtime != .omit
            let explicitTime = touches && !(changes.atime == .now && changes.mtime == .now)
            if explicitTime {
                if !ownerOrRoot(record, cred) { throw .EPERM }
            } else if touches {
                if !ownerOrRoot(record, cred), !permitted(record, 2, cred) { throw .EACCES }
            }

            // Checks done: change the record.
            var released: [ChunkID] = []
            if let size = changes.size {
                if size < record.size {
                    var refs: [ChunkID: Int64] = [:]
                    Manifest.punch(&record.extents, from: size, to: UInt64.max, refs: &refs)
                    released = applyReferences(refs)
                }
                record.size = size
                record.mtime = now
                record.ctime = now
                killPrivileges(&record, cred)
            }
            if let mode = changes.mode {
                var newMode = mode & ModeBits.all
                if !cred.isRoot, !cred.inGroup(changes.gid ?? record.gid) { newMode &= ~ModeBits.setGID }
                record.mode = newMode
                record.ctime = now
            }
            if changes.uid != nil || changes.gid != nil {
                if let uid = changes.uid { record.uid = uid }
                if let gid = changes.gid { record.gid = gid }
                if let chownMode { record.mode = chownMode }
                record.ctime = now
            }
            switch changes.atime {
            case .omit: break
            case .now: record.atime = now
            case .set(let t): record.atime = t
            }
            switch changes.mtime {
            case .omit: break
            case .now: record.mtime = now
            case .set(let t): record.mtime = t
            }
            if touches { record.ctime = now }
            inodes[inode] = record
            return (attributes(inode, record), released)
        }
    }

    /// Commits data a client wrote through `handle`: each extent overwrites what it covers, in
    /// order, and the size grows to the end of the last byte written. Returns the chunks no
    /// longer referenced by any file.
    public mutating func commitWrite(session: SessionID, handle: HandleID, extents newExtents: [Extent], _ cred: Credentials,
                                     now: Timestamp) -> Result<(Attributes, [ChunkID]), FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard let sessionRecord = sessions[session] else { throw .ESTALE }
            guard let open = sessionRecord.handles[handle] else { throw .EBADF }
            guard open.flags.contains(.write) else { throw .EBADF }
            var record = inodes[open.inode]!
            guard record.type == .regular else { throw .EINVAL }
            if newExtents.count > limits.extentsPerCommitMax { throw .E2BIG }
            var end = record.size
            for e in newExtents {
                let (chunkEnd, chunkOverflow) = e.chunkOffset.addingReportingOverflow(e.length)
                let (fileEnd, fileOverflow) = e.fileOffset.addingReportingOverflow(e.length)
                if e.length == 0 || chunkOverflow || chunkEnd > limits.chunkBytesMax { throw .EINVAL }
                if fileOverflow || fileEnd > limits.fileBytesMax { throw .EFBIG }
                end = max(end, fileEnd)
            }
            // Each extent adds itself and may split one old extent in two: a bound that needs no trial run.
            if record.extents.count + 2 * newExtents.count > limits.extentsPerFileMax { throw .ENOSPC }
            var refs: [ChunkID: Int64] = [:]
            for e in newExtents { Manifest.overwrite(&record.extents, with: e, refs: &refs) }
            record.size = end
            if !newExtents.isEmpty {
                record.mtime = now
                record.ctime = now
                killPrivileges(&record, cred)
            }
            inodes[open.inode] = record
            return (attributes(open.inode, record), applyReferences(refs))
        }
    }

    /// setxattr(2) with XATTR_CREATE / XATTR_REPLACE.
    public mutating func setxattr(_ inode: InodeNumber, _ name: [UInt8], _ value: [UInt8], flags: XattrFlags,
                                  _ cred: Credentials, now: Timestamp) -> Result<Void, FileSystemError> {
        attempt { () throws(FileSystemError) in
            if let error = checkXattrArguments(name: name, valueCount: value.count, flags: flags) { throw error }
            guard let record = inodes[inode] else { throw .ENOENT }
            try xattrPermission(record, name, write: true, cred)
            try checkXattrNamespace(name)
            let old = record.xattrs[name]
            if flags.contains(.create), old != nil { throw .EEXIST }
            if flags.contains(.replace), old == nil { throw .ENODATA }
            let bytes = record.xattrBytes - (old.map { $0.count + name.count } ?? 0) + name.count + value.count
            if bytes > limits.xattrBytesPerInodeMax { throw .ENOSPC }
            inodes[inode]!.xattrs[name] = value
            inodes[inode]!.ctime = now
        }
    }

    /// removexattr(2).
    public mutating func removexattr(_ inode: InodeNumber, _ name: [UInt8], _ cred: Credentials, now: Timestamp) -> Result<Void, FileSystemError> {
        attempt { () throws(FileSystemError) in
            guard let record = inodes[inode] else { throw .ENOENT }
            try checkXattrName(name)
            try xattrPermission(record, name, write: true, cred)
            try checkXattrNamespace(name)
            guard record.xattrs[name] != nil else { throw .ENODATA }
            inodes[inode]!.xattrs[name] = nil
            inodes[inode]!.ctime = now
        }
    }

    // MARK: Sessions

    /// Registers a client session that lives `ttlNanoseconds` past each heartbeat.
    public mutating func openSession(ttlNanoseconds: UInt64, now: Timestamp) -> Result<SessionID, FileSystemError> {
        if sessions.count >= limits.sessionsMax { return .failure(.ENOSPC) }
        if ttlNanoseconds == 0 { return .failure(.EINVAL) }
        let id = nextSession
        nextSession += 1
        sessions[id] = SessionRecord(lastHeartbeat: now, ttlNanoseconds: ttlNanoseconds)
        return .success(id)
    }

    public mutating func heartbeat(_ session: SessionID, now: Timestamp) -> Result<Void, FileSystemError> {
        guard sessions[session] != nil else { return .failure(.ESTALE) }
        sessions[session]!.lastHeartbeat = max(sessions[session]!.lastHeartbeat, now)
        return .success(())
    }

    /// Ends a session: closes its handles; returns the chunks this released.
    public mutating func closeSession(_ session: SessionID) -> Result<[ChunkID], FileSystemError> {
        guard let record = sessions.removeValue(forKey: session) else { return .failure(.ESTALE) }
        var released: [ChunkID] = []
        for handle in record.handles.keys.sorted() { released += releaseHandle(record.handles[handle]!.inode) }
        return .success(released.sorted())
    }

    /// Ends every session whose last heartbeat is more than its ttl before `now` (the leader's
    /// time in the command). Returns the sessions ended and the chunks released.
    public mutating func expireSessions(now: Timestamp) -> (sessions: [SessionID], released: [ChunkID]) {
        var ended: [SessionID] = []
        var released: [ChunkID] = []
        for id in sessions.keys.sorted() {
            let record = sessions[id]!
            let (deadline, overflow) = Self.nanoseconds(record.lastHeartbeat).addingReportingOverflow(Int64(clamping: record.ttlNanoseconds))
            if !overflow, Self.nanoseconds(now) > deadline {
                ended.append(id)
                if case .success(let chunks) = closeSession(id) { released += chunks }
            }
        }
        return (ended, released.sorted())
    }

    public var sessionIDs: [SessionID] { sessions.keys.sorted() }

    /// The remembered reply of `(session, sequence)`, `.failure(ESTALE)` if that sequence was
    /// forgotten or the session is unknown, nil if it was never applied.
    func rememberedReply(session: SessionID, sequence: UInt64) -> Result<[UInt8], FileSystemError>? {
        guard let record = sessions[session] else { return .failure(.ESTALE) }
        if let reply = record.replies[sequence] { return .success(reply) }
        if sequence <= record.forgottenThrough { return .failure(.ESTALE) }
        return nil
    }

    /// Remembers the reply of `(session, sequence)`, forgetting the oldest beyond the bound.
    mutating func remember(session: SessionID, sequence: UInt64, reply: [UInt8]) {
        guard sessions[session] != nil else { return }
        sessions[session]!.replies[sequence] = reply
        while sessions[session]!.replies.count > limits.dedupRepliesPerSessionMax {
            let oldest = sessions[session]!.replies.keys.min()!
            sessions[session]!.replies[oldest] = nil
            sessions[session]!.forgottenThrough = max(sessions[session]!.forgottenThrough, oldest)
        }
    }

    /// Inodes that are unlinked but still open.
    public var orphans: [InodeNumber] { inodes.filter { $0.value.nlink == 0 }.keys.sorted() }

    /// Chunks referenced by any file, sorted (what gc marks).
    public var referencedChunks: [ChunkID] { chunkReferences.keys.sorted() }
}

// MARK: - Internals

extension Namespace {
    static let dot: [UInt8] = [UInt8(ascii: ".")]
    static let dotDot: [UInt8] = [UInt8(ascii: "."), UInt8(ascii: ".")]
    static let userPrefix = Array("user.".utf8)
    static let trustedPrefix = Array("trusted.".utf8)
    static let securityPrefix = Array("security.".utf8)


    static func nanoseconds(_ t: Timestamp) -> Int64 {
        t.seconds.multipliedReportingOverflow(by: 1_000_000_000).partialValue &+ Int64(t.nanoseconds)
    }

    func attributes(_ inode: InodeNumber, _ r: InodeRecord) -> Attributes {
        Attributes(inode: inode, type: r.type, mode: r.mode, uid: r.uid, gid: r.gid, nlink: r.nlink, size: r.size,
                   atime: r.atime, mtime: r.mtime, ctime: r.ctime, rdev: r.rdev)
    }

    func isDotName(_ name: [UInt8]) -> Bool { name == Self.dot || name == Self.dotDot }

    /// The name rules every operation shares: empty → ENOENT (as an empty path gives), "/" or
    /// NUL inside → EINVAL (the kernel never sends them), too long → ENAMETOOLONG.
    func checkName(_ name: [UInt8]) throws(FileSystemError) {
        if name.isEmpty { throw .ENOENT }
        if name.contains(UInt8(ascii: "/")) || name.contains(0) { throw .EINVAL }
        if name.count > limits.nameBytesMax { throw .ENAMETOOLONG }
    }

    /// The record of a live directory: ENOENT for unknown inodes and for a directory already
    /// removed but still open (Linux IS_DEADDIR), ENOTDIR for other types.
    func directoryRecord(_ inode: InodeNumber) throws(FileSystemError) -> InodeRecord {
        guard let record = inodes[inode] else { throw .ENOENT }
        guard record.type == .directory else { throw .ENOTDIR }
        guard record.nlink > 0 else { throw .ENOENT }
        return record
    }

    /// Linux generic_permission for `want` (4 read, 2 write, 1 execute/search, or a sum).
    func permitted(_ r: InodeRecord, _ want: UInt32, _ cred: Credentials) -> Bool {
        if cred.isRoot {
            // CAP_DAC_OVERRIDE: anything on directories; on files, execute needs some x bit.
            if r.type == .directory || want & 1 == 0 { return true }
            return r.mode & ModeBits.anyExecute != 0
        }
        let bits: UInt32
        if cred.uid == r.uid { bits = (r.mode >> 6) & 7 } else if cred.inGroup(r.gid) { bits = (r.mode >> 3) & 7 } else { bits = r.mode & 7 }
        return bits & want == want
    }

    /// inode_owner_or_capable: the owner, or root (CAP_FOWNER).
    func ownerOrRoot(_ r: InodeRecord, _ cred: Credentials) -> Bool { cred.isRoot || cred.uid == r.uid }

    /// Resolves one name in a directory, checking search permission first as the path walk does.
    func lookupInode(_ parent: InodeNumber, _ name: [UInt8], _ cred: Credentials) throws(FileSystemError) -> InodeNumber {
        let record = try directoryRecord(parent)
        guard permitted(record, 1, cred) else { throw .EACCES }
        if name == Self.dot { return parent }
        if name == Self.dotDot { return record.directory!.parent }
        try checkName(name)
        guard let entry = record.directory!.entries[name] else { throw .ENOENT }
        return entry.inode
    }

    /// The checks before creating `name` in `parent` (filename_create, then may_create).
    func prepareCreate(_ parent: InodeNumber, _ name: [UInt8], _ cred: Credentials, dotError: FileSystemError) throws(FileSystemError) {
        let record = try directoryRecord(parent)
        guard permitted(record, 1, cred) else { throw .EACCES }
        if isDotName(name) { throw dotError }
        try checkName(name)
        if record.directory!.entries[name] != nil { throw .EEXIST }
        guard permitted(record, 3, cred) else { throw .EACCES }
    }

    func checkDirectoryHasRoom(_ parent: InodeNumber, addingDirectory: Bool) throws(FileSystemError) {
        let record = inodes[parent]!
        if record.directory!.entries.count >= limits.directoryEntriesMax { throw .ENOSPC }
        if addingDirectory, record.nlink >= limits.linksMax { throw .EMLINK }
    }

    func checkSessionHasRoom(_ session: SessionID) throws(FileSystemError) {
        guard let record = sessions[session] else { throw .ESTALE }
        if record.handles.count >= limits.handlesPerSessionMax { throw .EMFILE }
    }

    /// Allocates and links a new inode, with Linux's owner rules: the caller's uid; the
    /// directory's gid if it is set-group-ID (and S_ISGID on new subdirectories), else the
    /// caller's gid; S_ISGID dropped from a group-executable file created in a set-group-ID
    /// directory by someone outside its group (mode_strip_sgid).
    mutating func makeInode(_ parent: InodeNumber, _ name: [UInt8], _ type: FileType, mode requested: UInt32, _ cred: Credentials,
                            _ now: Timestamp, rdev: UInt64 = 0, target: [UInt8] = []) throws(FileSystemError) -> InodeNumber {
        try checkDirectoryHasRoom(parent, addingDirectory: type == .directory)
        if inodes.count >= limits.inodesMax { throw .ENOSPC }
        let dir = inodes[parent]!
        var mode = requested
        var gid = cred.gid
        if dir.mode & ModeBits.setGID != 0 {
            gid = dir.gid
            if type == .directory {
                mode |= ModeBits.setGID
            } else if mode & (ModeBits.setGID | ModeBits.groupExecute) == (ModeBits.setGID | ModeBits.groupExecute),
                      !cred.isRoot, !cred.inGroup(dir.gid) {
                mode &= ~ModeBits.setGID
            }
        }
        let inode = nextInode
        nextInode += 1
        var record = InodeRecord(type: type, mode: mode, uid: cred.uid, gid: gid, nlink: type == .directory ? 2 : 1,
                                 size: type == .symlink ? UInt64(target.count) : 0, atime: now, mtime: now, ctime: now, rdev: rdev)
        record.target = target
        if type == .directory {
            record.directory = DirectoryRecord(parent: parent)
            inodes[parent]!.nlink += 1
        }
        inodes[inode] = record
        inodes[parent]!.directory!.insert(name, inode: inode)
        touchDirectory(parent, now)
        return inode
    }

    mutating func touchDirectory(_ inode: InodeNumber, _ now: Timestamp) {
        inodes[inode]!.mtime = now
        inodes[inode]!.ctime = now
    }

    mutating func reparent(_ directory: InodeNumber, from oldParent: InodeNumber, to newParent: InodeNumber) {
        inodes[directory]!.directory!.parent = newParent
        inodes[oldParent]!.nlink -= 1
        inodes[newParent]!.nlink += 1
    }

    /// may_delete: write and search on the directory, the sticky rule, then the type rule.
    func mayDelete(_ parent: InodeNumber, _ victim: InodeNumber, isDirectory: Bool, _ cred: Credentials) throws(FileSystemError) {
        let dir = inodes[parent]!
        let record = inodes[victim]!
        guard permitted(dir, 3, cred) else { throw .EACCES }
        if dir.mode & ModeBits.sticky != 0, !cred.isRoot, cred.uid != record.uid, cred.uid != dir.uid { throw .EPERM }
        if isDirectory {
            if record.type != .directory { throw .ENOTDIR }
        } else if record.type == .directory {
            throw .EISDIR
        }
    }

    /// True if `ancestor` is `inode` or one of its parents (directories have one parent each).
    func isAncestor(_ ancestor: InodeNumber, of inode: InodeNumber) -> Bool {
        var current = inode
        // The depth of the tree bounds the walk; inodes.count bounds the depth.
        for _ in 0...inodes.count {
            if current == ancestor { return true }
            if current == Self.rootInode { return false }
            current = inodes[current]!.directory!.parent
        }
        preconditionFailure("directory parent chain loops")
    }

    /// Drops one link (a directory: its only one). Frees the inode when no link and no handle
    /// is left, returning the chunks no longer referenced.
    mutating func dropLink(_ inode: InodeNumber, _ now: Timestamp) -> [ChunkID] {
        if inodes[inode]!.type == .directory {
            inodes[inode]!.nlink = 0
        } else {
            inodes[inode]!.nlink -= 1
        }
        inodes[inode]!.ctime = now
        if inodes[inode]!.nlink == 0, inodes[inode]!.openCount == 0 { return free(inode) }
        return []
    }

    mutating func free(_ inode: InodeNumber) -> [ChunkID] {
        guard let record = inodes.removeValue(forKey: inode) else { return [] }
        var refs: [ChunkID: Int64] = [:]
        for e in record.extents { refs[e.chunkID, default: 0] -= 1 }
        return applyReferences(refs)
    }

    mutating func releaseHandle(_ inode: InodeNumber) -> [ChunkID] {
        inodes[inode]!.openCount -= 1
        if inodes[inode]!.openCount == 0, inodes[inode]!.nlink == 0 { return free(inode) }
        return []
    }

    mutating func addHandle(_ session: SessionID, _ inode: InodeNumber, _ flags: OpenFlags) -> HandleID {
        let handle = sessions[session]!.nextHandle
        sessions[session]!.nextHandle += 1
        sessions[session]!.handles[handle] = SessionRecord.Handle(inode: inode, flags: flags.intersection([.read, .write]))
        inodes[inode]!.openCount += 1
        return handle
    }

    /// Applies reference deltas; returns the chunks that dropped to no reference, sorted.
    mutating func applyReferences(_ deltas: [ChunkID: Int64]) -> [ChunkID] {
        var released: [ChunkID] = []
        for (chunk, delta) in deltas where delta != 0 {
            let count = Int64(chunkReferences[chunk] ?? 0) + delta
            precondition(count >= 0, "chunk reference count below zero")
            if count == 0 {
                chunkReferences[chunk] = nil
                released.append(chunk)
            } else {
                chunkReferences[chunk] = UInt64(count)
            }
        }
        return released.sorted()
    }

    /// Linux clears set-user-ID, and set-group-ID if group-executable or the writer is outside
    /// the file's group, when someone without CAP_FSETID writes or truncates a regular file.
    func killPrivileges(_ record: inout InodeRecord, _ cred: Credentials) {
        guard record.type == .regular, !cred.isRoot else { return }
        record.mode &= ~ModeBits.setUID
        if record.mode & ModeBits.setGID != 0, record.mode & ModeBits.groupExecute != 0 || !cred.inGroup(record.gid) {
            record.mode &= ~ModeBits.setGID
        }
    }

    /// Linux may_create_in_sticky (with fs.protected_regular and fs.protected_fifos at 0): an
    /// O_CREAT open that finds an existing symlink, socket or device in a sticky directory
    /// writable by others is refused, even to root, unless the caller or the directory's owner
    /// owns it (a defence against planted entries in /tmp).
    func mayCreateInSticky(_ dir: InodeRecord, _ r: InodeRecord, _ cred: Credentials) throws(FileSystemError) {
        guard dir.mode & ModeBits.sticky != 0 else { return }
        if r.type == .regular || r.type == .fifo { return }
        if r.uid == dir.uid || r.uid == cred.uid { return }
        if dir.mode & 0o002 != 0 { throw .EACCES }
    }

    /// Opens an existing inode as do_open and may_open do.
    mutating func openExisting(_ inode: InodeNumber, flags: OpenFlags, session: SessionID, _ cred: Credentials,
                               _ now: Timestamp) throws(FileSystemError) -> (OpenResult, [ChunkID]) {
        var record = inodes[inode]!
        var want: UInt32 = 0
        if flags.contains(.read) { want |= 4 }
        if flags.contains(.write) || flags.contains(.truncate) { want |= 2 }
        switch record.type {
        case .symlink: throw .ELOOP
        case .directory: if want & 2 != 0 { throw .EISDIR }
        default: break
        }
        guard permitted(record, want, cred) else { throw .EACCES }
        if record.type == .socket { throw .ENXIO }
        var released: [ChunkID] = []
        if flags.contains(.truncate), record.type == .regular {
            var refs: [ChunkID: Int64] = [:]
            Manifest.punch(&record.extents, from: 0, to: UInt64.max, refs: &refs)
            record.size = 0
            record.mtime = now
            record.ctime = now
            killPrivileges(&record, cred)
            inodes[inode] = record
            released = applyReferences(refs)
        }
        let handle = addHandle(session, inode, flags)
        return (OpenResult(attributes: attributes(inode, inodes[inode]!), handle: handle, created: false), released)
    }

    func checkXattrName(_ name: [UInt8]) throws(FileSystemError) {
        if let error = checkXattrArguments(name: name) { throw error }
    }

    /// Namespaces the state machine stores: user.* and trusted.* (security.* and system.* need
    /// policy modules and ACL support this file system does not have).
    func checkXattrNamespace(_ name: [UInt8]) throws(FileSystemError) {
        guard Self.storesXattrNamespace(of: name) else { throw .EOPNOTSUPP }
        if name == Self.userPrefix || name == Self.trustedPrefix { throw .EINVAL }
    }

    /// Whether a name's namespace is one the state machine stores. For a valid name outside
    /// them, every get, set and remove of an existing inode answers EOPNOTSUPP (a client may
    /// answer so without asking).
    public static func storesXattrNamespace(of name: [UInt8]) -> Bool {
        name.starts(with: userPrefix) || name.starts(with: trustedPrefix)
    }

    /// Linux xattr_permission.
    func xattrPermission(_ r: InodeRecord, _ name: [UInt8], write: Bool, _ cred: Credentials) throws(FileSystemError) {
        if name.starts(with: Self.securityPrefix) { return }
        if name.starts(with: Self.trustedPrefix) {
            if !cred.isRoot { throw write ? .EPERM : .ENODATA }
            return
        }
        if name.starts(with: Self.userPrefix) {
            if r.type != .regular && r.type != .directory { throw write ? .EPERM : .ENODATA }
            if r.type == .directory, r.mode & ModeBits.sticky != 0, write, !ownerOrRoot(r, cred) { throw .EPERM }
        }
        guard permitted(r, write ? 2 : 4, cred) else { throw .EACCES }
    }
}

/// Runs an operation body and turns its typed error into a `Result`. A free function, so a
/// mutating operation's closure may change `self` while it runs.
func attempt<T>(_ body: () throws(FileSystemError) -> T) -> Result<T, FileSystemError> {
    do { return .success(try body()) } catch { return .failure(error) }
}
