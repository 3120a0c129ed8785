import CairnCore

/// An inode number. Root is 1; the state allocates the rest from a counter, so every
/// replica applying the same commands hands out the same numbers.
public typealias InodeNumber = UInt64

/// A client session (one mount), allocated by the state from a counter.
public typealias SessionID = UInt64

/// An open file handle, unique within its session.
public typealias HandleID = UInt64

/// A point in time with nanoseconds, fixed by the leader in each command (the state
/// machine has no clock: replicas must apply identical times).
public struct Timestamp: Sendable, Hashable, Comparable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        precondition(nanoseconds < 1_000_000_000, "nanoseconds out of range")
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public static let zero = Timestamp(seconds: 0, nanoseconds: 0)

    public static func < (a: Timestamp, b: Timestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

/// The file types Linux knows, with their S_IFMT values (the FUSE client passes them on).
public enum FileType: UInt8, Sendable, Hashable, CaseIterable {
    case regular = 1, directory, symlink, fifo, socket, characterDevice, blockDevice

    /// The type bits of `st_mode`.
    public var modeBits: UInt32 {
        switch self {
        case .regular: 0o100000
        case .directory: 0o040000
        case .symlink: 0o120000
        case .fifo: 0o010000
        case .socket: 0o140000
        case .characterDevice: 0o020000
        case .blockDevice: 0o060000
        }
    }

    /// The type for the S_IFMT bits of a mode, nil for none.
    public init?(modeBits: UInt32) {
        guard let type = FileType.allCases.first(where: { $0.modeBits == modeBits & 0o170000 }) else { return nil }
        self = type
    }
}

/// Permission bits (including set-user-ID 0o4000, set-group-ID 0o2000 and sticky 0o1000).
public enum ModeBits {
    public static let setUID: UInt32 = 0o4000
    public static let setGID: UInt32 = 0o2000
    public static let sticky: UInt32 = 0o1000
    public static let all: UInt32 = 0o7777
    public static let groupExecute: UInt32 = 0o010
    public static let anyExecute: UInt32 = 0o111
}

/// Who is asking: the caller's fsuid, fsgid and supplementary groups, as the kernel hands
/// them to FUSE. The leader copies them into each command; permission checks use only these.
public struct Credentials: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups, kept sorted and unique so equal credentials encode equally.
    public private(set) var groups: [UInt32]

    public init(uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.uid = uid
        self.gid = gid
        self.groups = Array(Set(groups)).sorted()
    }

    public static let root = Credentials(uid: 0, gid: 0)

    /// True for uid 0, which holds the capabilities the kernel checks (DAC override, CAP_FOWNER,
    /// CAP_CHOWN, CAP_FSETID, CAP_MKNOD, CAP_SYS_ADMIN).
    public var isRoot: Bool { uid == 0 }

    /// Linux in_group_p: the fsgid or any supplementary group.
    public func inGroup(_ gid: UInt32) -> Bool {
        gid == self.gid || groups.contains(gid)
    }
}

/// One piece of a regular file: `length` bytes at `fileOffset` are the bytes at `chunkOffset`
/// of the chunk `chunkID`. Bytes of a file covered by no extent are a hole and read as zeros.
public struct Extent: Sendable, Hashable {
    public var fileOffset: UInt64
    public var length: UInt64
    public var chunkID: ChunkID
    public var chunkOffset: UInt64

    public init(fileOffset: UInt64, length: UInt64, chunkID: ChunkID, chunkOffset: UInt64) {
        self.fileOffset = fileOffset
        self.length = length
        self.chunkID = chunkID
        self.chunkOffset = chunkOffset
    }

    /// One past the last file byte covered.
    public var fileEnd: UInt64 { fileOffset + length }
}

/// What `getattr` reports: the `struct stat` fields the namespace keeps.
public struct Attributes: Sendable, Hashable {
    public var inode: InodeNumber
    public var type: FileType
    /// Permission bits only (0o7777); `type.modeBits | mode` is `st_mode`.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var nlink: UInt32
    public var size: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    /// Device number of character and block devices (Linux encoding of major and minor).
    public var rdev: UInt64

    /// `st_mode`: type and permission bits.
    public var fullMode: UInt32 { type.modeBits | mode }
}

/// How `setattr` changes a time: leave it, set it to the command's time, or to a given time
/// (utimensat's UTIME_OMIT, UTIME_NOW, or an explicit timespec).
public enum TimeChange: Sendable, Hashable {
    case omit
    case now
    case set(Timestamp)
}

/// The fields one `setattr` changes; nil leaves a field alone.
public struct AttributeChanges: Sendable, Hashable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange
    public var mtime: TimeChange

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: TimeChange = .omit, mtime: TimeChange = .omit) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
    }
}

/// One directory entry as readdir returns it. `cookie` resumes the listing after this entry.
public struct DirectoryEntry: Sendable, Hashable {
    public var name: [UInt8]
    public var inode: InodeNumber
    public var type: FileType
    public var cookie: UInt64
}

/// A page of directory entries; `end` is true when nothing follows.
public struct DirectoryPage: Sendable, Hashable {
    public var entries: [DirectoryEntry]
    public var end: Bool
}

/// statfs numbers the namespace can give (block counts come from the chunkservers).
public struct NamespaceStatistics: Sendable, Hashable {
    public var inodesUsed: UInt64
    public var inodesMax: UInt64
    /// Sum of the sizes of regular files (holes included).
    public var fileBytes: UInt64
    /// Distinct chunks referenced.
    public var chunksReferenced: UInt64
    public var nameBytesMax: UInt32
}

/// rename(2) flags.
public struct RenameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let noReplace = RenameFlags(rawValue: 1)
    public static let exchange = RenameFlags(rawValue: 2)
}

/// setxattr(2) flags.
public struct XattrFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let create = XattrFlags(rawValue: 1)
    public static let replace = XattrFlags(rawValue: 2)
}

/// What an open asks for (the O_ flags the state machine cares about).
public struct OpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let read = OpenFlags(rawValue: 1)
    public static let write = OpenFlags(rawValue: 2)
    public static let truncate = OpenFlags(rawValue: 4)
    /// O_CREAT.
    public static let create = OpenFlags(rawValue: 8)
    /// O_EXCL (with `create`).
    public static let exclusive = OpenFlags(rawValue: 16)
    /// O_NOFOLLOW: fail with ELOOP on a symlink instead of following it.
    public static let noFollow = OpenFlags(rawValue: 32)
}

/// The result of an open or create: the inode's attributes and a handle in the caller's session.
public struct OpenResult: Sendable, Hashable {
    public var attributes: Attributes
    public var handle: HandleID
    public var created: Bool
}
