/// The values a `FuseFileSystem` takes and returns: plain Swift, no libfuse types.

/// A directory entry name or extended attribute name, as the bytes the kernel sent (Linux names
/// are bytes, not necessarily UTF-8), without the terminating NUL.
public struct FuseName: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(!bytes.contains(0), "a name holds no NUL byte")
        self.bytes = bytes
    }

    public init(_ string: String) { self.init(bytes: Array(string.utf8)) }
    public init(stringLiteral value: String) { self.init(value) }

    /// The name decoded as UTF-8 (invalid sequences replaced): for logs and messages.
    public var string: String { String(decoding: bytes, as: UTF8.self) }
    public var description: String { string }

    public var isDotOrDotDot: Bool { bytes == [0x2E] || bytes == [0x2E, 0x2E] }

    /// Calls `body` with the name as a NUL-terminated C string.
    public func withCString<R>(_ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
        try (bytes + [0]).withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }
}

/// A point in time as `struct timespec` holds it: seconds since the Unix epoch and nanoseconds.
public struct FuseTime: Sendable, Hashable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32 = 0) {
        precondition(nanoseconds < 1_000_000_000, "nanoseconds out of range")
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// What `stat(2)` reports about an inode.
public struct FuseAttributes: Sendable, Hashable {
    /// The inode number `stat` shows (`st_ino`); it need not equal the FUSE node ID.
    public var ino: UInt64
    /// File type bits (`S_IFMT`) and permission bits.
    public var mode: UInt32
    public var nlink: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    /// 512-byte blocks allocated.
    public var blocks: UInt64
    /// The preferred I/O size (`st_blksize`); 0 lets the kernel choose.
    public var blockSize: UInt32
    public var atime: FuseTime
    public var mtime: FuseTime
    public var ctime: FuseTime

    public init(ino: UInt64, mode: UInt32, nlink: UInt64 = 1, uid: UInt32 = 0, gid: UInt32 = 0, rdev: UInt64 = 0,
                size: UInt64 = 0, blocks: UInt64 = 0, blockSize: UInt32 = 0,
                atime: FuseTime = .init(seconds: 0), mtime: FuseTime = .init(seconds: 0), ctime: FuseTime = .init(seconds: 0)) {
        self.ino = ino
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.blocks = blocks
        self.blockSize = blockSize
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
    }

    /// The file type bits of `mode` (`mode & S_IFMT`).
    public var fileType: UInt32 { mode & 0o170000 }
}

/// The answer to a name lookup (and to mknod, mkdir, symlink, link, create): the node the kernel
/// will refer to from now on, and how long it may cache what it learned.
///
/// Every entry returned counts as one lookup of `node`; the kernel balances it with `forget`.
public struct FuseEntry: Sendable, Hashable {
    /// The FUSE node ID (never 0; 1 is the root).
    public var node: UInt64
    /// Distinguishes successive uses of one node ID (for NFS export); 0 is fine otherwise.
    public var generation: UInt64
    public var attributes: FuseAttributes
    /// Seconds the kernel may cache `attributes`; nil takes the mount's `attributeTimeout`.
    public var attributeTimeout: Double?
    /// Seconds the kernel may cache the name → node binding; nil takes the mount's `entryTimeout`.
    public var entryTimeout: Double?

    public init(node: UInt64, generation: UInt64 = 0, attributes: FuseAttributes,
                attributeTimeout: Double? = nil, entryTimeout: Double? = nil) {
        precondition(node != 0, "node 0 is not a node")
        self.node = node
        self.generation = generation
        self.attributes = attributes
        self.attributeTimeout = attributeTimeout
        self.entryTimeout = entryTimeout
    }
}

/// An opened file or directory: the handle the kernel passes back with every operation on it.
public struct FuseOpenedFile: Sendable, Hashable {
    /// Chosen by the file system (an fd, an index into a table, …); never interpreted by the bridge.
    public var handle: UInt64
    /// Bypass the page cache for this file (the mount's `directIO` option forces it on).
    public var directIO: Bool
    /// Keep the page cache of earlier opens (only when the file cannot have changed behind the kernel).
    public var keepCache: Bool

    public init(handle: UInt64, directIO: Bool = false, keepCache: Bool = false) {
        self.handle = handle
        self.directIO = directIO
        self.keepCache = keepCache
    }
}

/// How `setattr` changes a timestamp (the `UTIME_OMIT` / `UTIME_NOW` / value cases of `utimensat(2)`).
public enum FuseTimeChange: Sendable, Hashable {
    case omit
    case now
    case set(FuseTime)
}

/// The changes of one `setattr` request; nil / `.omit` leaves a field as it is.
public struct FuseAttributeChanges: Sendable, Hashable {
    /// Permission bits (and setuid/setgid/sticky); no file type bits.
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    /// Truncate or extend to this size.
    public var size: UInt64?
    public var atime: FuseTimeChange
    public var mtime: FuseTimeChange

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: FuseTimeChange = .omit, mtime: FuseTimeChange = .omit) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
    }
}

/// The flags of `renameat2(2)`.
public struct FuseRenameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Fail with `EEXIST` rather than replace an existing target.
    public static let noReplace = FuseRenameFlags(rawValue: 1)
    /// Swap the two names atomically; both must exist.
    public static let exchange = FuseRenameFlags(rawValue: 2)
    /// Leave a whiteout in place of the source (overlay file systems).
    public static let whiteout = FuseRenameFlags(rawValue: 4)
}

/// One entry of a directory listing.
public struct FuseDirectoryEntry: Sendable, Hashable {
    public var name: FuseName
    /// The inode number `readdir(3)` shows as `d_ino`.
    public var ino: UInt64
    /// File type bits (`S_IFMT` part of a mode), or 0 if unknown.
    public var fileType: UInt32
    /// The offset (cookie) of the entry after this one: a later `readdir` at this offset continues
    /// right after this entry. Never 0 (0 means "from the start").
    public var nextOffset: Int64

    public init(name: FuseName, ino: UInt64, fileType: UInt32, nextOffset: Int64) {
        precondition(nextOffset != 0, "offset 0 means the start of the directory")
        self.name = name
        self.ino = ino
        self.fileType = fileType
        self.nextOffset = nextOffset
    }

    /// Bytes one entry with a name of `nameBytes` bytes takes in a `readdir` reply (`plus: false`)
    /// or a `readdirplus` reply (`plus: true`): a file system can stop producing entries once
    /// their sum reaches the request's `bytesMax`.
    public static func recordBytes(nameBytes: Int, plus: Bool) -> Int {
        // struct fuse_dirent is 24 bytes + name, padded to 8; fuse_direntplus adds fuse_entry_out (128).
        let dirent = (24 + nameBytes + 7) & ~7
        return plus ? 128 + dirent : dirent
    }
}

/// One entry of a `readdirplus` listing: the entry and, except for `.` and `..`, a lookup of it.
public struct FuseDirectoryEntryPlus: Sendable, Hashable {
    public var entry: FuseDirectoryEntry
    /// The lookup result (counted as one lookup, like `lookup`'s), or nil for `.`, `..` and
    /// names the file system does not want the kernel to cache.
    public var lookup: FuseEntry?

    public init(entry: FuseDirectoryEntry, lookup: FuseEntry?) {
        self.entry = entry
        self.lookup = lookup
    }
}

/// What `statfs(2)` reports.
public struct FuseVolumeStatus: Sendable, Hashable {
    public var blockSize: UInt64
    public var fragmentSize: UInt64
    /// Total, free and unprivileged-available blocks, in `fragmentSize` units.
    public var blocks: UInt64
    public var blocksFree: UInt64
    public var blocksAvailable: UInt64
    public var files: UInt64
    public var filesFree: UInt64
    public var filesAvailable: UInt64
    public var nameBytesMax: UInt64

    public init(blockSize: UInt64 = 4096, fragmentSize: UInt64 = 4096, blocks: UInt64 = 0, blocksFree: UInt64 = 0,
                blocksAvailable: UInt64 = 0, files: UInt64 = 0, filesFree: UInt64 = 0, filesAvailable: UInt64 = 0,
                nameBytesMax: UInt64 = 255) {
        self.blockSize = blockSize
        self.fragmentSize = fragmentSize
        self.blocks = blocks
        self.blocksFree = blocksFree
        self.blocksAvailable = blocksAvailable
        self.files = files
        self.filesFree = filesFree
        self.filesAvailable = filesAvailable
        self.nameBytesMax = nameBytesMax
    }
}

/// Who sent a request: implementations act as this caller (create files owned by it, check its
/// permissions unless the mount uses `default_permissions`).
public struct FuseRequestContext: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    /// The calling thread's ID (0 when the caller is outside the file system's PID namespace).
    public var pid: Int32
    /// The caller's umask (already applied by the kernel to create modes).
    public var umask: UInt32
    /// Supplementary groups, from `/proc/PID/task/TID/status` via `fuse_req_getgroups`; at most
    /// `FuseMount.Options.supplementaryGroupsMax`; empty when the mount does not resolve them, the
    /// caller is root (uid 0, whose groups no permission decision consults), or it has exited.
    public var groups: [UInt32]

    public init(uid: UInt32, gid: UInt32, pid: Int32, umask: UInt32 = 0o022, groups: [UInt32] = []) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask
        self.groups = groups
    }
}
