#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CCairnLinux
import SystemPackage

/// The file-system calls swift-system does not wrap, each wrapped once here.
///
/// Every function names the C call it wraps, retries on `EINTR`, and throws the call's
/// `Errno`. Callers turn errnos into `CairnError`s where they know what the operation meant.
public enum FileSystemCalls {
    /// `fsync(2)`: make a file's data and metadata durable.
    public static func fsync(_ fd: FileDescriptor) throws(Errno) {
        try retrying { Glibc.fsync(fd.rawValue) }
    }

    /// `fdatasync(2)`: make a file's data durable (and the metadata needed to read it back).
    public static func fdatasync(_ fd: FileDescriptor) throws(Errno) {
        try retrying { Glibc.fdatasync(fd.rawValue) }
    }

    /// `open(2)` of a directory plus `fsync(2)`: makes the directory's entries (renames, creates,
    /// unlinks) durable.
    public static func fsyncDirectory(_ path: FilePath) throws(Errno) {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readOnly, options: [.directory])
        } catch let error as Errno {
            throw error
        } catch {
            throw Errno.ioError
        }
        defer { try? fd.close() }
        try fsync(fd)
    }

    /// `rename(2)`: atomically replaces `to` with `from`.
    public static func rename(_ from: FilePath, _ to: FilePath) throws(Errno) {
        try retrying { from.withPlatformString { f in to.withPlatformString { t in Glibc.rename(f, t) } } }
    }

    /// `mkdir(2)`; an existing directory is not an error when `existingIsFine` is set.
    public static func mkdir(_ path: FilePath, permissions: FilePermissions = [.ownerReadWriteExecute, .groupReadExecute, .otherReadExecute],
                             existingIsFine: Bool = true) throws(Errno) {
        do {
            try retrying { path.withPlatformString { Glibc.mkdir($0, permissions.rawValue) } }
        } catch {
            if error == .fileExists && existingIsFine { return }
            throw error
        }
    }

    /// `unlink(2)`; returns false if the file did not exist.
    @discardableResult
    public static func unlink(_ path: FilePath) throws(Errno) -> Bool {
        do {
            try retrying { path.withPlatformString { Glibc.unlink($0) } }
            return true
        } catch {
            if error == .noSuchFileOrDirectory { return false }
            throw error
        }
    }

    /// `opendir(3)`/`readdir(3)`: the names in a directory except `.` and `..`, sorted bytewise
    /// so that callers never depend on the file system's order.
    public static func directoryEntries(_ path: FilePath) throws(Errno) -> [String] {
        let dir: OpaquePointer? = path.withPlatformString { Glibc.opendir($0) }
        guard let dir else { throw Errno(rawValue: errno) }
        defer { Glibc.closedir(dir) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = Glibc.readdir(dir) else {
                if errno != 0 { throw Errno(rawValue: errno) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// `open(2)`, `fstat(2)` and `pread(2)`: the whole of a regular file.
    /// - Throws: the call's `Errno`; `EFBIG` (`.fileTooLarge`) when the file holds more than
    ///   `bytesMax` bytes, before anything is read.
    public static func readFile(_ path: FilePath, bytesMax: Int) throws(Errno) -> [UInt8] {
        do {
            let fd = try FileDescriptor.open(path, .readOnly)
            defer { try? fd.close() }
            let size = Int(try status(fd).size)
            guard size <= bytesMax else { throw Errno.fileTooLarge }
            var bytes = [UInt8](repeating: 0, count: size)
            var done = 0
            while done < size {
                let n = try bytes.withUnsafeMutableBytes {
                    try fd.read(fromAbsoluteOffset: Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]))
                }
                if n == 0 { break }
                done += n
            }
            if done < size { bytes.removeSubrange(done...) }
            return bytes
        } catch let error as Errno {
            throw error
        } catch {
            throw Errno.ioError
        }
    }

    /// Replaces `path` atomically and durably: writes `PATH.tmp`, `fsync(2)`s it, `rename(2)`s
    /// it over `path`, then fsyncs the directory. A crash leaves the old file or the new one,
    /// at worst with a stray `.tmp` beside it; the `.tmp` is removed when a step fails.
    public static func writeFileAtomically(_ path: FilePath, bytes: [UInt8],
                                           permissions: FilePermissions = [.ownerReadWrite, .groupRead]) throws(Errno) {
        let temp = FilePath(path.string + ".tmp")
        do {
            let fd = try FileDescriptor.open(temp, .writeOnly, options: [.create, .truncate], permissions: permissions)
            do {
                _ = try fd.writeAll(bytes)
                try fsync(fd)
                try fd.close()
            } catch {
                try? fd.close()
                throw error
            }
            try rename(temp, path)
            try fsyncDirectory(path.removingLastComponent())
        } catch {
            _ = try? unlink(temp)
            throw (error as? Errno) ?? Errno.ioError
        }
    }

    /// The facts of `stat(2)`/`fstat(2)` that Cairn uses.
    public struct FileStatus: Sendable, Equatable {
        public var size: Int64
        public var isDirectory: Bool
        public var isRegular: Bool
        /// Modification time, nanoseconds since the Unix epoch.
        public var modificationTimeNanoseconds: Int64
    }

    /// `stat(2)` (through swift-system's `FilePath.stat`); nil if the path does not exist.
    public static func status(_ path: FilePath) throws(Errno) -> FileStatus? {
        do {
            return FileStatus(try path.stat())
        } catch {
            if error == .noSuchFileOrDirectory { return nil }
            throw error
        }
    }

    /// `fstat(2)` (through swift-system's `FileDescriptor.stat`).
    public static func status(_ fd: FileDescriptor) throws(Errno) -> FileStatus {
        FileStatus(try fd.stat())
    }

    /// The facts of `statvfs(3)` that Cairn uses, in bytes.
    public struct VolumeStatus: Sendable, Equatable {
        /// Total size of the file system.
        public var capacityBytes: Int64
        /// Bytes an unprivileged writer can still use (`f_bavail`).
        public var availableBytes: Int64
    }

    /// `statvfs(3)` (through `cairn_statvfs`) of the file system holding `path`.
    public static func volumeStatus(_ path: FilePath) throws(Errno) -> VolumeStatus {
        var capacity: UInt64 = 0
        var available: UInt64 = 0
        try retrying { path.withPlatformString { cairn_statvfs($0, &capacity, &available) } }
        return VolumeStatus(capacityBytes: Int64(capacity), availableBytes: Int64(available))
    }

    /// Runs a C call that returns -1 and sets errno on failure, retrying on `EINTR`.
    private static func retrying(_ call: () -> Int32) throws(Errno) {
        while true {
            if call() != -1 { return }
            let error = Errno(rawValue: errno)
            if error != .interrupted { throw error }
        }
    }
}

extension FileSystemCalls.FileStatus {
    init(_ st: Stat) {
        size = st.size
        isDirectory = st.type == .directory
        isRegular = st.type == .regular
        modificationTimeNanoseconds = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }
}
