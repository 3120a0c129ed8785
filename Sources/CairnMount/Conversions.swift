import CairnCore
import FuseKernel
import MetaState
import Glibc
import SystemPackage

/// Translations between the metadata service's types and FUSE's, in one place.
extension MetaReply {
    /// The namespace error as the errno the system call fails with.
    func errno() -> Errno? {
        if case .failure(let error) = self { return Errno(rawValue: error.errno) }
        return nil
    }
}

/// Throws the reply's errno, or EIO for a reply of the wrong kind (a protocol error, logged by the caller).
func unexpected(_ reply: MetaReply) -> Errno { reply.errno() ?? .ioError }

extension Credentials {
    init(_ context: FuseRequestContext) {
        self.init(uid: context.uid, gid: context.gid, groups: context.groups)
    }
}

extension Timestamp {
    var fuseTime: FuseTime { FuseTime(seconds: seconds, nanoseconds: nanoseconds) }
}

extension FuseTime {
    var timestamp: Timestamp { Timestamp(seconds: seconds, nanoseconds: nanoseconds) }
}

extension FuseTimeChange {
    var timeChange: TimeChange {
        switch self {
        case .omit: .omit
        case .now: .now
        case .set(let time): .set(time.timestamp)
        }
    }
}

extension Attributes {
    /// `stat(2)` of this inode; `size` overrides the committed size while this mount holds unwritten data.
    func fuse(size override: UInt64? = nil) -> FuseAttributes {
        let size = override ?? self.size
        return FuseAttributes(ino: inode, mode: fullMode, nlink: UInt64(nlink), uid: uid, gid: gid, rdev: rdev, size: size,
                              blocks: (size + 511) / 512, blockSize: 1 << 20,
                              atime: atime.fuseTime, mtime: mtime.fuseTime, ctime: ctime.fuseTime)
    }
}

extension OpenFlags {
    /// The state machine's view of `open(2)` flags.
    init(posix flags: Int32) {
        var result: OpenFlags = []
        switch flags & O_ACCMODE {
        case O_WRONLY: result.insert(.write)
        case O_RDWR: result.formUnion([.read, .write])
        default: result.insert(.read)
        }
        if flags & O_TRUNC != 0 { result.insert(.truncate) }
        if flags & O_CREAT != 0 { result.insert(.create) }
        if flags & O_EXCL != 0 { result.insert(.exclusive) }
        if flags & O_NOFOLLOW != 0 { result.insert(.noFollow) }
        self = result
    }
}

/// Whether `credentials` may access a file with these attributes for `mask` (`R_OK` 4,
/// `W_OK` 2, `X_OK` 1), as the kernel's generic permission check decides: root may read and
/// write anything and execute anything with an execute bit (or a directory); others get the
/// owner, group or other class, whichever applies first.
func permits(_ attributes: Attributes, mask: Int32, _ credentials: Credentials) -> Bool {
    let want = UInt32(mask & 7)
    if want == 0 { return true }
    if credentials.isRoot {
        if want & 1 == 0 { return true }
        return attributes.type == .directory || attributes.mode & 0o111 != 0
    }
    let granted: UInt32
    if credentials.uid == attributes.uid {
        granted = (attributes.mode >> 6) & 7
    } else if credentials.inGroup(attributes.gid) {
        granted = (attributes.mode >> 3) & 7
    } else {
        granted = attributes.mode & 7
    }
    return granted & want == want
}
