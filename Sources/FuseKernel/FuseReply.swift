import CFuse

#if canImport(Glibc)
import Glibc
#endif

/// A `fuse_req_t` handed from a libfuse worker thread to the task that answers it. libfuse lets
/// any thread reply, exactly once; the request stays valid until then.
struct FuseRequest: @unchecked Sendable {
    let raw: fuse_req_t
}

/// Every answer a request can get; `send` makes the one `fuse_reply_*` call for it.
enum FuseReply: Sendable {
    /// `fuse_reply_err(req, 0)`: success without data.
    case success
    /// `fuse_reply_err`: a positive errno.
    case error(Int32)
    /// `fuse_reply_none`: forget and forget_multi get no answer.
    case none
    /// `fuse_reply_entry`.
    case entry(FuseEntry)
    /// `fuse_reply_entry` of node 0: a lookup found no such name (kept `negativeTimeout` seconds).
    case missingEntry
    /// `fuse_reply_create`.
    case create(FuseEntry, FuseOpenedFile)
    /// `fuse_reply_attr`.
    case attributes(FuseAttributes)
    /// `fuse_reply_readlink`.
    case link([UInt8])
    /// `fuse_reply_open`.
    case open(FuseOpenedFile)
    /// `fuse_reply_write`.
    case written(Int)
    /// `fuse_reply_buf`.
    case bytes([UInt8])
    /// `fuse_reply_xattr`: the size of a value or name list (a size probe).
    case xattrSize(Int)
    /// `fuse_reply_statfs`.
    case volume(FuseVolumeStatus)
    /// `fuse_add_direntry` into a buffer of `bytesMax`, then `fuse_reply_buf`.
    case directory([FuseDirectoryEntry], bytesMax: Int)
    /// `fuse_add_direntry_plus` into a buffer of `bytesMax`, then `fuse_reply_buf`.
    case directoryPlus([FuseDirectoryEntryPlus], bytesMax: Int)
}

/// The timeouts and per-mount flags a reply needs.
struct FuseReplyDefaults: Sendable {
    var entryTimeout: Double
    var attributeTimeout: Double
    var negativeTimeout: Double
    var directIO: Bool
}

extension FuseReply {
    /// Sends the reply. Returns the lookups the kernel did not receive (entries of a
    /// `readdirplus` that did not fit), which the caller must forget.
    func send(_ request: FuseRequest, defaults: FuseReplyDefaults) -> [UInt64] {
        let req = request.raw
        switch self {
        case .success:
            fuse_reply_err(req, 0)
        case .error(let errno):
            precondition(errno > 0, "an errno is positive")
            fuse_reply_err(req, errno)
        case .none:
            fuse_reply_none(req)
        case .entry(let entry):
            var parameter = entry.entryParameter(defaults)
            fuse_reply_entry(req, &parameter)
        case .missingEntry:
            // Node 0: the name does not exist, and the kernel may remember that for entry_timeout.
            var parameter = fuse_entry_param()
            parameter.entry_timeout = defaults.negativeTimeout
            fuse_reply_entry(req, &parameter)
        case .create(let entry, let file):
            var parameter = entry.entryParameter(defaults)
            var info = file.fileInfo(defaults)
            fuse_reply_create(req, &parameter, &info)
        case .attributes(let attributes):
            var st = attributes.stat
            fuse_reply_attr(req, &st, defaults.attributeTimeout)
        case .link(let target):
            (target + [0]).withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { _ = fuse_reply_readlink(req, $0.baseAddress!) }
            }
        case .open(let file):
            var info = file.fileInfo(defaults)
            fuse_reply_open(req, &info)
        case .written(let count):
            fuse_reply_write(req, count)
        case .bytes(let bytes):
            bytes.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { _ = fuse_reply_buf(req, $0.baseAddress, $0.count) }
            }
        case .xattrSize(let count):
            fuse_reply_xattr(req, count)
        case .volume(let volume):
            var s = statvfs()
            s.f_bsize = UInt(volume.blockSize)
            s.f_frsize = UInt(volume.fragmentSize)
            s.f_blocks = fsblkcnt_t(volume.blocks)
            s.f_bfree = fsblkcnt_t(volume.blocksFree)
            s.f_bavail = fsblkcnt_t(volume.blocksAvailable)
            s.f_files = fsfilcnt_t(volume.files)
            s.f_ffree = fsfilcnt_t(volume.filesFree)
            s.f_favail = fsfilcnt_t(volume.filesAvailable)
            s.f_namemax = UInt(volume.nameBytesMax)
            fuse_reply_statfs(req, &s)
        case .directory(let entries, let bytesMax):
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytesMax, 1), alignment: 8)
            defer { buffer.deallocate() }
            var used = 0
            for entry in entries {
                var st = stat()
                st.st_ino = numericCast(entry.ino)
                st.st_mode = entry.fileType
                let needed = entry.name.withCString { name in
                    fuse_add_direntry(req, buffer.baseAddress!.advanced(by: used).assumingMemoryBound(to: CChar.self),
                                      bytesMax - used, name, &st, off_t(entry.nextOffset))
                }
                if needed > bytesMax - used { break }
                used += needed
            }
            fuse_reply_buf(req, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), used)
        case .directoryPlus(let entries, let bytesMax):
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytesMax, 1), alignment: 8)
            defer { buffer.deallocate() }
            var used = 0
            var undelivered: [UInt64] = []
            for (index, item) in entries.enumerated() {
                var parameter: fuse_entry_param
                if let lookup = item.lookup {
                    parameter = lookup.entryParameter(defaults)
                } else {
                    parameter = fuse_entry_param()
                    parameter.attr.st_ino = numericCast(item.entry.ino)
                    parameter.attr.st_mode = item.entry.fileType
                }
                let needed = item.entry.name.withCString { name in
                    fuse_add_direntry_plus(req, buffer.baseAddress!.advanced(by: used).assumingMemoryBound(to: CChar.self),
                                           bytesMax - used, name, &parameter, off_t(item.entry.nextOffset))
                }
                if needed > bytesMax - used {
                    undelivered = entries[index...].compactMap { $0.lookup?.node }
                    break
                }
                used += needed
            }
            fuse_reply_buf(req, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), used)
            return undelivered
        }
        return []
    }
}

extension FuseEntry {
    func entryParameter(_ defaults: FuseReplyDefaults) -> fuse_entry_param {
        var parameter = fuse_entry_param()
        parameter.ino = node
        parameter.generation = generation
        parameter.attr = attributes.stat
        parameter.attr_timeout = attributeTimeout ?? defaults.attributeTimeout
        parameter.entry_timeout = entryTimeout ?? defaults.entryTimeout
        return parameter
    }
}

extension FuseOpenedFile {
    func fileInfo(_ defaults: FuseReplyDefaults) -> fuse_file_info {
        var info = fuse_file_info()
        info.fh = handle
        info.direct_io = (directIO || defaults.directIO) ? 1 : 0
        info.keep_cache = keepCache ? 1 : 0
        return info
    }
}

extension FuseTime {
    init(_ ts: timespec) {
        self.init(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(clamping: ts.tv_nsec))
    }

    var timespec: Glibc.timespec { Glibc.timespec(tv_sec: Int(seconds), tv_nsec: Int(nanoseconds)) }
}

extension FuseAttributes {
    /// From a `struct stat` (as `stat(2)` fills it).
    public init(_ st: stat) {
        self.init(ino: UInt64(st.st_ino), mode: st.st_mode, nlink: UInt64(st.st_nlink), uid: st.st_uid, gid: st.st_gid,
                  rdev: UInt64(st.st_rdev), size: UInt64(clamping: st.st_size), blocks: UInt64(clamping: st.st_blocks),
                  blockSize: UInt32(clamping: st.st_blksize),
                  atime: FuseTime(st.st_atim), mtime: FuseTime(st.st_mtim), ctime: FuseTime(st.st_ctim))
    }

    /// As a `struct stat`.
    public var stat: Glibc.stat {
        var st = Glibc.stat()
        st.st_ino = numericCast(ino)
        st.st_mode = mode
        st.st_nlink = numericCast(nlink)
        st.st_uid = uid
        st.st_gid = gid
        st.st_rdev = numericCast(rdev)
        st.st_size = off_t(clamping: size)
        st.st_blocks = numericCast(blocks)
        st.st_blksize = numericCast(blockSize)
        st.st_atim = atime.timespec
        st.st_mtim = mtime.timespec
        st.st_ctim = ctime.timespec
        return st
    }
}
