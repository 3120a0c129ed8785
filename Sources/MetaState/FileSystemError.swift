/// A failed namespace operation, carrying the Linux errno the kernel would give for it.
///
/// The state machine answers every request with either a result or one of these; the
/// FUSE client hands `errno` straight back to the kernel, so the numbers are Linux's
/// (they are part of the replicated reply format and must never change).
public struct FileSystemError: Error, Sendable, Hashable, CustomStringConvertible {
    public var errno: Int32

    public init(errno: Int32) { self.errno = errno }

    public static let EPERM = FileSystemError(errno: 1)
    public static let ENOENT = FileSystemError(errno: 2)
    public static let EIO = FileSystemError(errno: 5)
    public static let ENXIO = FileSystemError(errno: 6)
    public static let E2BIG = FileSystemError(errno: 7)
    public static let EBADF = FileSystemError(errno: 9)
    public static let EMFILE = FileSystemError(errno: 24)
    public static let EACCES = FileSystemError(errno: 13)
    public static let EBUSY = FileSystemError(errno: 16)
    public static let EEXIST = FileSystemError(errno: 17)
    public static let EXDEV = FileSystemError(errno: 18)
    public static let ENOTDIR = FileSystemError(errno: 20)
    public static let EISDIR = FileSystemError(errno: 21)
    public static let EINVAL = FileSystemError(errno: 22)
    public static let EFBIG = FileSystemError(errno: 27)
    public static let ENOSPC = FileSystemError(errno: 28)
    public static let EMLINK = FileSystemError(errno: 31)
    public static let ERANGE = FileSystemError(errno: 34)
    public static let ENAMETOOLONG = FileSystemError(errno: 36)
    public static let ENOTEMPTY = FileSystemError(errno: 39)
    public static let ELOOP = FileSystemError(errno: 40)
    public static let ENODATA = FileSystemError(errno: 61)
    public static let EBADMSG = FileSystemError(errno: 74)
    public static let EOPNOTSUPP = FileSystemError(errno: 95)
    public static let ESTALE = FileSystemError(errno: 116)

    private static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 5: "EIO", 6: "ENXIO", 7: "E2BIG", 9: "EBADF", 24: "EMFILE", 13: "EACCES", 16: "EBUSY",
        17: "EEXIST", 18: "EXDEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 27: "EFBIG", 28: "ENOSPC",
        31: "EMLINK", 34: "ERANGE", 36: "ENAMETOOLONG", 39: "ENOTEMPTY", 40: "ELOOP", 61: "ENODATA",
        74: "EBADMSG", 95: "EOPNOTSUPP", 116: "ESTALE",
    ]

    public var description: String { Self.names[errno] ?? "errno \(errno)" }
}
