import CairnCore
import Placement

/// The named bounds of the metadata state machine, in one place an operator can read.
/// Units come last in every name. Every collection a request can grow has a bound here.
///
/// All replicas must run with equal limits: they are part of the state machine's rules
/// (a command that fits under one replica's limits must fit under every replica's).
public struct MetaLimits: Sendable, Equatable {
    /// Bytes in one name (Linux NAME_MAX).
    public var nameBytesMax: Int = 255
    /// Bytes in a symlink target (Linux PATH_MAX less the NUL).
    public var symlinkTargetBytesMax: Int = 4095
    /// Bytes in a whole path handed to the path walker (Linux PATH_MAX less the NUL).
    public var pathBytesMax: Int = 4095
    /// Symlinks followed in one path walk before ELOOP (Linux MAXSYMLINKS).
    public var symlinksFollowedMax: Int = 40
    /// Bytes in one xattr name (Linux XATTR_NAME_MAX).
    public var xattrNameBytesMax: Int = 255
    /// Bytes in one xattr value (Linux XATTR_SIZE_MAX).
    public var xattrValueBytesMax: Int = 64 << 10
    /// Bytes of names and values of all xattrs of one inode.
    public var xattrBytesPerInodeMax: Int = 256 << 10
    /// Extents in one file's manifest.
    public var extentsPerFileMax: Int = 1 << 20
    /// Extents in one write commit.
    public var extentsPerCommitMax: Int = 4096
    /// Bytes one extent may reach into its chunk (the chunk size bound).
    public var chunkBytesMax: UInt64 = 4 << 20
    /// The largest file size (Linux MAX_LFS_FILESIZE).
    public var fileBytesMax: UInt64 = UInt64(Int64.max)
    /// Inodes in the whole namespace (statfs reports it as the total).
    public var inodesMax: Int = 100_000_000
    /// Hard links to one inode; also bounds subdirectories per directory (Linux ext4 uses 65000).
    public var linksMax: UInt32 = 65000
    /// Entries in one directory.
    public var directoryEntriesMax: Int = 10_000_000
    /// Client sessions open at once.
    public var sessionsMax: Int = 10_000
    /// Open handles in one session.
    public var handlesPerSessionMax: Int = 65_536
    /// Replies remembered per session for deduplicating retried mutations.
    public var dedupRepliesPerSessionMax: Int = 128
    /// Entries in one readdir page.
    public var readdirPageEntriesMax: Int = 4096
    /// Supplementary groups in one caller's credentials (Linux NGROUPS_MAX is 65536; FUSE passes fewer).
    public var callerGroupsMax: Int = 256
    /// Bytes of one encoded command.
    public var commandBytesMax: Int = 4 << 20
    /// Extents in one readExtents reply (each encodes in at most 62 bytes: 4096 make about 250 KiB).
    public var extentsPerReadMax: Int = 4096
    /// Chunkservers ever registered, removed ones included (ids are never reused).
    public var chunkserversMax: Int = 4096
    /// Bytes of the identity token a chunkserver keeps in its data directory.
    public var chunkserverIdentityBytesMax: Int = 64
    /// Bytes of a chunkserver's `HOST:PORT` address.
    public var chunkserverAddressBytesMax: Int = 300
    /// Bytes of a failure-domain label.
    public var failureDomainBytesMax: Int = 255
    /// The largest weight of one chunkserver.
    public var chunkserverWeightMax: UInt32 = 1024
    /// The sum of the weights of all servers on the ring (not removed): bounds the ring's points
    /// (`Ring.pointsMax / Ring.virtualNodesPerWeightUnit` = 8192 at most).
    public var ringWeightTotalMax: UInt64 = UInt64(Ring.pointsMax / Ring.virtualNodesPerWeightUnit)
    /// Rings of earlier epochs kept (newest first) for readers looking for chunks not yet rebalanced.
    public var ringHistoryMax: Int = 4
    /// Whether hard links obey Linux's fs.protected_hardlinks=1 (the default of common distributions).
    public var protectedHardlinks: Bool = true

    public init() {}

    /// Throws `invalidArgument` if the bounds are inconsistent.
    public func validate() throws(CairnError) {
        func check(_ ok: Bool, _ what: String) throws(CairnError) {
            if !ok { throw CairnError(.invalidArgument, "invalid metadata limit: \(what)") }
        }
        try check(nameBytesMax >= 1 && nameBytesMax <= 4096, "nameBytesMax must be in 1...4096")
        try check(symlinkTargetBytesMax >= 1 && symlinkTargetBytesMax <= 1 << 20, "symlinkTargetBytesMax must be in 1...1 MiB")
        try check(pathBytesMax >= nameBytesMax, "pathBytesMax must be at least nameBytesMax")
        try check(symlinksFollowedMax >= 1 && symlinksFollowedMax <= 1000, "symlinksFollowedMax must be in 1...1000")
        try check(xattrNameBytesMax >= 1 && xattrNameBytesMax <= 4096, "xattrNameBytesMax must be in 1...4096")
        try check(xattrValueBytesMax >= 0 && xattrValueBytesMax <= xattrBytesPerInodeMax, "xattrValueBytesMax must be at most xattrBytesPerInodeMax")
        try check(extentsPerFileMax >= 1 && extentsPerCommitMax >= 1, "extent bounds must be positive")
        try check(chunkBytesMax >= 1, "chunkBytesMax must be positive")
        try check(fileBytesMax >= 1 && fileBytesMax <= UInt64(Int64.max), "fileBytesMax must be in 1...Int64.max")
        try check(inodesMax >= 1, "inodesMax must be positive")
        try check(linksMax >= 3, "linksMax must be at least 3")
        try check(directoryEntriesMax >= 1, "directoryEntriesMax must be positive")
        try check(sessionsMax >= 1 && handlesPerSessionMax >= 1 && dedupRepliesPerSessionMax >= 1, "session bounds must be positive")
        try check(readdirPageEntriesMax >= 1, "readdirPageEntriesMax must be positive")
        try check(callerGroupsMax >= 0 && callerGroupsMax <= 65536, "callerGroupsMax must be in 0...65536")
        try check(commandBytesMax >= 1024, "commandBytesMax must be at least 1 KiB")
        try check(extentsPerReadMax >= 1 && extentsPerReadMax * 64 <= commandBytesMax, "extentsPerReadMax replies must fit in commandBytesMax")
        try check(chunkserversMax >= 1 && chunkserversMax <= 1 << 20, "chunkserversMax must be in 1...1048576")
        try check(chunkserverIdentityBytesMax >= 16 && chunkserverIdentityBytesMax <= 4096, "chunkserverIdentityBytesMax must be in 16...4096")
        try check(chunkserverAddressBytesMax >= 16 && chunkserverAddressBytesMax <= 4096, "chunkserverAddressBytesMax must be in 16...4096")
        try check(failureDomainBytesMax >= 0 && failureDomainBytesMax <= 4096, "failureDomainBytesMax must be in 0...4096")
        try check(ringWeightTotalMax <= UInt64(Ring.pointsMax / Ring.virtualNodesPerWeightUnit),
                  "ringWeightTotalMax must keep the ring within Ring.pointsMax points")
        try check(UInt64(chunkserverWeightMax) <= ringWeightTotalMax, "chunkserverWeightMax must be at most ringWeightTotalMax")
        try check(ringHistoryMax >= 0 && ringHistoryMax <= 64, "ringHistoryMax must be in 0...64")
    }
}
