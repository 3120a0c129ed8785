import CCairnLinux
import CairnCore
import CairnTestSupport
import Foundation
import Glibc
import SystemPackage
import Testing

/// The differential test of the mount: long seeded random sequences of file operations,
/// through real system calls, applied to a Cairn mount and to a tmpfs directory, as root and
/// as three unprivileged users. Every operation's result (return value or errno, and the data
/// it returned) must be the same on both; so must the whole trees (with file contents) at
/// checkpoints and at the end.
///
/// Left out, because a networked file system legitimately differs there: inode numbers,
/// times, `st_blocks`, directory sizes (tmpfs counts entry bytes), and `listxattr`'s order.
///
/// CI runs 2 seeds × 300 operations. Longer runs and replays:
/// `CAIRN_MOUNT_DIFF_SEEDS=10 CAIRN_MOUNT_DIFF_OPS=500 swift test --filter MountDifferential`;
/// `CAIRN_MOUNT_DIFF_SEED=17 swift test --filter MountDifferential` replays one seed
/// (`CAIRN_MOUNT_DIFF_SEED_BASE` moves the first of several seeds).
@Suite(.serialized) struct MountDifferentialTests {
    @Test func randomOperationsGiveTheSameResultsOnTheMountAsOnTmpfs() async throws {
        try #require(geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0,
                     "the mount differential mounts FUSE and a tmpfs and switches uids: run it as root with /dev/fuse")
        let environment = ProcessInfo.processInfo.environment
        let count = environment["CAIRN_MOUNT_DIFF_OPS"].flatMap(Int.init) ?? 300
        let seeds: [UInt64]
        if let one = environment["CAIRN_MOUNT_DIFF_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let n = environment["CAIRN_MOUNT_DIFF_SEEDS"].flatMap(UInt64.init) ?? 2
            let base = environment["CAIRN_MOUNT_DIFF_SEED_BASE"].flatMap(UInt64.init) ?? 1
            seeds = Array(base..<base + n)
        }
        let start = ContinuousClock.now
        // allow_other: the unprivileged users must be let into the mount at all.
        let mounted = try await MountedCluster(options: "allow_other")
        let reference = try SmallDisk(sizeBytes: 512 << 20)
        let referenceRoot = reference.path.string
        let mountRoot = mounted.mountpoint.string
        let started = ContinuousClock.now - start
        var total = MountDifferentialRun()
        for seed in seeds {
            let run = try await onOwnThread {
                try runMountDifferential(seed: seed, count: count, referenceRoot: referenceRoot, mountRoot: mountRoot)
            }
            total.add(run)
            if let mismatch = run.mismatch {
                let mountLog = mounted.cluster.mounts[mounted.mountpoint]?.stderr.suffix(1500) ?? ""
                Issue.record(Comment(rawValue: mismatch + (mountLog.isEmpty ? "" : "\nmount's standard error (tail):\n\(mountLog)")))
                break
            }
        }
        let kinds = total.opsPerKind.keys.sorted().map { "\($0) \(total.opsPerKind[$0]!) (\(total.failuresPerKind[$0] ?? 0) errors)" }
        print("mount differential: \(total.seeds) seeds × \(count) ops in \(ContinuousClock.now - start) (cluster up in \(started)): "
              + kinds.joined(separator: ", ") + "; errnos: "
              + total.errnos.keys.sorted().map { "\($0) \(total.errnos[$0]!)" }.joined(separator: ", "))
        #expect(await mounted.cluster.unmount(mounted.mountpoint) == 0)
    }
}

// MARK: Identities

/// Who a test thread acts as: uid, gid and supplementary groups.
struct Identity: CustomStringConvertible, Sendable {
    var uid: UInt32
    var gid: UInt32
    var groups: [UInt32]

    static let root = Identity(uid: 0, gid: 0, groups: [])
    var isRoot: Bool { uid == 0 }
    var description: String { "uid \(uid) gid \(gid) groups \(groups)" }
}

/// Root and three users who share group 2000 (two through a supplementary group, one as
/// primary group), so group permissions, set-group-ID directories and chown to a group each
/// succeed for some and fail for others.
let mountDifferentialIdentities: [Identity] = [
    .root,
    Identity(uid: 1000, gid: 1000, groups: [1000, 2000]),
    Identity(uid: 1001, gid: 1001, groups: [1001, 2000]),
    Identity(uid: 1002, gid: 2000, groups: []),
]

// MARK: Operations

/// One operation of the test, on paths relative to the tree's root (each side runs in a thread
/// chrooted into its tree, so "..", absolute symlink targets and the like stay inside).
enum MountOp: CustomStringConvertible {
    case create(String, mode: UInt32, exclusive: Bool, truncate: Bool)
    case write(String, offset: Int, length: Int)
    case read(String, offset: Int, length: Int)
    case truncate(String, Int)
    case rename(String, String, flags: UInt32)
    case link(String, String)
    case unlink(String)
    case mkdir(String, UInt32)
    case rmdir(String)
    case chmod(String, UInt32)
    case chown(String, uid: UInt32?, gid: UInt32?, follow: Bool)
    case symlink(target: String, String)
    case readlink(String)
    case setxattr(String, name: String, length: Int, flags: Int32)
    case getxattr(String, name: String, size: Int)
    case listxattr(String, size: Int)
    case removexattr(String, name: String)
    case stat(String, follow: Bool)
    case readdir(String)
    /// Opens a path and keeps it open in slot `slot` (closing what the slot held), so that
    /// writes through a handle, open-but-unlinked files and ftruncate are compared too.
    case hold(String, slot: Int, write: Bool)
    case release(slot: Int)
    case fstat(slot: Int)
    case ftruncate(slot: Int, Int)
    case pwrite(slot: Int, offset: Int, length: Int)

    var description: String {
        func short(_ s: String) -> String { s.count > 24 ? "\(s.prefix(10))…(\(s.count) bytes)" : s }
        func octal(_ m: UInt32) -> String { String(m, radix: 8) }
        switch self {
        case .create(let p, let m, let x, let t): return "create \(short(p)) \(octal(m)) excl=\(x) trunc=\(t)"
        case .write(let p, let o, let l): return "write \(short(p)) at \(o) length \(l)"
        case .read(let p, let o, let l): return "read \(short(p)) at \(o) length \(l)"
        case .truncate(let p, let s): return "truncate \(short(p)) \(s)"
        case .rename(let a, let b, let f): return "rename \(short(a)) \(short(b)) flags=\(f)"
        case .link(let a, let b): return "link \(short(a)) \(short(b))"
        case .unlink(let p): return "unlink \(short(p))"
        case .mkdir(let p, let m): return "mkdir \(short(p)) \(octal(m))"
        case .rmdir(let p): return "rmdir \(short(p))"
        case .chmod(let p, let m): return "chmod \(short(p)) \(octal(m))"
        case .chown(let p, let u, let g, let f):
            return "\(f ? "chown" : "lchown") \(short(p)) \(u.map(String.init) ?? "-1"):\(g.map(String.init) ?? "-1")"
        case .symlink(let t, let p): return "symlink \(short(t)) at \(short(p))"
        case .readlink(let p): return "readlink \(short(p))"
        case .setxattr(let p, let n, let l, let f): return "setxattr \(short(p)) \(short(n)) length \(l) flags \(f)"
        case .getxattr(let p, let n, let s): return "getxattr \(short(p)) \(short(n)) size \(s)"
        case .listxattr(let p, let s): return "listxattr \(short(p)) size \(s)"
        case .removexattr(let p, let n): return "removexattr \(short(p)) \(short(n))"
        case .stat(let p, let f): return (f ? "stat " : "lstat ") + short(p)
        case .readdir(let p): return "readdir \(short(p))"
        case .hold(let p, let slot, let w): return "hold \(short(p)) slot \(slot) write=\(w)"
        case .release(let slot): return "release slot \(slot)"
        case .fstat(let slot): return "fstat slot \(slot)"
        case .ftruncate(let slot, let s): return "ftruncate slot \(slot) \(s)"
        case .pwrite(let slot, let o, let l): return "pwrite slot \(slot) at \(o) length \(l)"
        }
    }

    var kind: String { String(description.prefix { $0 != " " }) }
}

/// The 4 MiB chunk boundary of new files: writes and truncates near it cross from one chunk
/// into the next.
let chunkBoundary = 4 << 20

/// Seeded generator of operations over a bounded pool of names in a few directories, so that
/// operations hit existing and missing names, files and directories, often.
struct MountOpGenerator {
    var rng: SplitMix
    let directories = ["a", "b", "c", "d"]
    let leaves = ["a", "b", "c", "d", "e", "f", "g", "h"]
    /// Paths that exist now, and the directories and regular files among them (refreshed by
    /// the runner from the reference tree).
    var existing: [String] = []
    var existingDirectories: [String] = []
    var existingFiles: [String] = []

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }
    mutating func below(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

    mutating func path() -> String {
        let r = rng.next() % 100
        if r < 2 { return "." }
        if r < 3 { return pick(directories) + "/.." }
        if r < 4 { return String(repeating: "n", count: 256) }
        // A name in an existing directory half the time: deeper trees than random paths reach.
        if !existingDirectories.isEmpty && chance(40) { return pick(existingDirectories) + "/" + pick(leaves) }
        let roll = rng.next() % 100
        let depth = roll < 45 ? 1 : roll < 85 ? 2 : 3
        return ((0..<depth - 1).map { _ in pick(directories) } + [pick(leaves)]).joined(separator: "/")
    }

    /// An existing path 60% of the time, else a random one.
    mutating func source() -> String { !existing.isEmpty && chance(60) ? pick(existing) : path() }

    /// An existing regular file 75% of the time (for data operations), else `source()`.
    mutating func file() -> String { !existingFiles.isEmpty && chance(75) ? pick(existingFiles) : source() }

    /// Whether file modes may carry set-user-ID/set-group-ID bits (on; `CAIRN_MOUNT_DIFF_SETID=0`
    /// turns them off). They exercise the kernel's kill of set-ID bits before a non-owner's
    /// write, which reaches the mount as a chmod sent as that non-owner.
    var setIDModes = ProcessInfo.processInfo.environment["CAIRN_MOUNT_DIFF_SETID"] != "0"

    /// Half the time an open mode, so that the other users keep places to work in.
    mutating func mode() -> UInt32 {
        let mode: UInt32
        if chance(50) {
            mode = pick([0o777, 0o1777, 0o2777, 0o666, 0o664, 0o4777, 0o6777])
        } else if chance(20) {
            mode = UInt32(rng.next() % 0o10000)
        } else {
            mode = pick([0o755, 0o700, 0o711, 0o644, 0o600, 0o444, 0o000, 0o2775, 0o2755, 0o4755, 0o1770, 0o070, 0o007, 0o555])
        }
        return setIDModes ? mode : mode & ~0o6000
    }

    mutating func offset() -> Int {
        switch rng.next() % 100 {
        case 0..<8: return chunkBoundary - 1 - below(300)
        case 8..<30: return pick([0, 1, 4095, 4096, 65_536])
        default: return below(320_000)
        }
    }

    mutating func length() -> Int {
        switch rng.next() % 100 {
        case 0..<5: return 65_536 + below(200_000)
        case 5..<20: return 1 + below(100)
        default: return 1 + below(9000)
        }
    }

    mutating func size() -> Int {
        switch rng.next() % 100 {
        case 0..<8: return chunkBoundary - 200 + below(400)
        case 8..<35: return pick([0, 1, 4096, 65_536])
        default: return below(320_000)
        }
    }

    mutating func xattrName() -> String {
        switch rng.next() % 100 {
        case 0..<80: return "user." + pick(["a", "b", "c"])
        case 80..<88: return "trusted." + pick(["x", "y"])
        case 88..<92: return "user." + String(repeating: "x", count: 251)
        case 92..<94: return "bogus.z"
        default: return "user." + pick(["long-name-\(below(3))", "d"])
        }
    }

    mutating func next() -> MountOp {
        switch rng.next() % 100 {
        case 0..<9: return .create(path(), mode: mode(), exclusive: chance(50), truncate: chance(15))
        case 9..<21: return .write(file(), offset: offset(), length: length())
        case 21..<28: return .read(file(), offset: chance(70) ? offset() : 0, length: pick([1, 100, 5000, 70_000, 400_000]))
        case 28..<33: return .truncate(file(), size())
        case 33..<40: return .rename(source(), path(), flags: pick([0, 0, 0, 1, 2, 3]))
        case 40..<44: return .link(file(), path())
        case 44..<49: return .unlink(source())
        case 49..<55: return .mkdir(path(), mode())
        case 55..<58: return .rmdir(source())
        case 58..<63:
            // Closing the root to everyone would end the run's interesting part: keep it open.
            let p = source()
            return .chmod(p, p == "." ? pick([0o777, 0o1777, 0o2777]) : mode())
        case 63..<67:
            let ids: [UInt32?] = [nil, 0, 1000, 1001, 1002, 2000, 3000]
            // chown(-1, -1) is left out: FUSE sends it as a mode change, not as a chown (it
            // only clears set-ID bits there, as the metadata differential test notes).
            var uid = pick(ids), gid = pick(ids)
            if chance(30) { uid = nil }
            if uid == nil && gid == nil { gid = 2000 }
            return .chown(source(), uid: uid, gid: gid, follow: chance(70))
        case 67..<71:
            let target: String
            switch rng.next() % 10 {
            case 0: target = "/" + path()
            case 1: target = "../" + path()
            default: target = path()
            }
            return .symlink(target: target, path())
        case 71..<73: return .readlink(source())
        case 73..<77: return .setxattr(chance(50) ? file() : source(), name: xattrName(), length: chance(5) ? 3000 : below(40), flags: Int32(rng.next() % 4))
        case 77..<80: return .getxattr(source(), name: xattrName(), size: pick([0, 2, 100, 4096]))
        case 80..<82: return .listxattr(source(), size: pick([0, 5, 4096]))
        case 82..<84: return .removexattr(source(), name: xattrName())
        case 84..<90: return .stat(source(), follow: chance(50))
        case 90..<93: return .readdir(source())
        default:
            let slot = below(3)
            switch rng.next() % 6 {
            case 0, 5: return .hold(file(), slot: slot, write: chance(70))
            case 1: return .release(slot: slot)
            case 2: return .fstat(slot: slot)
            case 3: return .ftruncate(slot: slot, size())
            default: return .pwrite(slot: slot, offset: offset(), length: length())
            }
        }
    }
}

// MARK: Outcomes

/// What a file's `lstat` shows that both trees must agree on (no inode numbers, times,
/// st_blocks; no size for directories).
struct FileStatus: Equatable, CustomStringConvertible {
    var type: UInt32
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var nlink: UInt64
    var size: Int?

    init(_ st: stat) {
        type = UInt32(st.st_mode) & UInt32(S_IFMT)
        mode = UInt32(st.st_mode) & 0o7777
        uid = st.st_uid
        gid = st.st_gid
        nlink = UInt64(st.st_nlink)
        size = type == UInt32(S_IFDIR) ? nil : Int(st.st_size)
    }

    var description: String {
        let name = [UInt32(S_IFREG): "file", UInt32(S_IFDIR): "dir", UInt32(S_IFLNK): "symlink"][type] ?? "type \(String(type, radix: 8))"
        return "\(name) \(String(mode, radix: 8)) \(uid):\(gid) nlink \(nlink) size \(size.map(String.init) ?? "-")"
    }
}

/// What one operation gave on one tree.
enum MountOutcome: Equatable, CustomStringConvertible {
    case failed(Int32)
    /// The operation succeeded but `close` failed (with this errno).
    case closeFailed(Int32)
    case ok
    case count(Int)
    case status(FileStatus)
    case bytes([UInt8])
    case names([String])

    var description: String {
        switch self {
        case .failed(let e): "errno \(e) (\(String(cString: strerror(e))))"
        case .closeFailed(let e): "close failed: errno \(e) (\(String(cString: strerror(e))))"
        case .ok: "ok"
        case .count(let n): "returned \(n)"
        case .status(let s): "\(s)"
        case .bytes(let b): "\(b.count) bytes, sha256 \(SHA256.hash(b).hex.prefix(12))"
        case .names(let n): "names \(n)"
        }
    }

    var isFailure: Bool {
        switch self {
        case .failed, .closeFailed: true
        default: false
        }
    }

    var errnoValue: Int32? {
        switch self {
        case .failed(let e), .closeFailed(let e): e
        default: nil
        }
    }
}

/// Where two byte strings first differ, for a mismatch message.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String {
    let index = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
    func around(_ x: [UInt8]) -> String { x[index..<min(x.count, index + 8)].map { String($0, radix: 16) }.joined(separator: " ") }
    return "first difference at byte \(index): reference [\(around(a))], mount [\(around(b))]"
}

// MARK: The system calls

/// Descriptors one side holds open across operations, by slot.
final class HeldFiles {
    var fds: [Int: Int32] = [:]

    func closeAll() {
        for fd in fds.values { Glibc.close(fd) }
        fds = [:]
    }
}

/// Closes `fd`; the outcome is `result` unless close fails.
func closing(_ fd: Int32, _ result: MountOutcome) -> MountOutcome {
    Glibc.close(fd) == 0 ? result : .closeFailed(errno)
}

func check(_ rc: Int32) -> MountOutcome { rc == 0 ? .ok : .failed(errno) }

func status(_ path: String, follow: Bool) -> MountOutcome {
    var st = stat()
    guard fstatat(AT_FDCWD, path, &st, follow ? 0 : Int32(AT_SYMLINK_NOFOLLOW)) == 0 else { return .failed(errno) }
    return .status(FileStatus(st))
}

/// Reads up to `length` bytes at `offset` (several reads if the first is short).
func readFully(_ fd: Int32, offset: Int, length: Int) -> MountOutcome {
    var out = [UInt8](repeating: 0, count: length)
    var done = 0
    while done < length {
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, length - done, off_t(offset + done)) }
        if n < 0 { return .failed(errno) }
        if n == 0 { break }
        done += n
    }
    return .bytes(Array(out.prefix(done)))
}

func directoryNames(_ path: String) -> MountOutcome {
    guard let dir = opendir(path) else { return .failed(errno) }
    defer { closedir(dir) }
    var names: [String] = []
    errno = 0
    while let entry = Glibc.readdir(dir) {
        names.append(withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
    }
    if errno != 0 { return .failed(errno) }
    return .names(names.sorted())
}

func xattrNames(_ path: String, size: Int) -> MountOutcome {
    var buffer = [CChar](repeating: 0, count: max(size, 1))
    let n = cairn_llistxattr(path, &buffer, size)
    guard n >= 0 else { return .failed(errno) }
    if size == 0 { return .count(n) }
    // listxattr's order is unspecified: compared as sorted sets.
    return .names(buffer.prefix(n).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted())
}

func xattrValue(_ path: String, _ name: String, size: Int) -> MountOutcome {
    var buffer = [UInt8](repeating: 0, count: max(size, 1))
    let n = cairn_lgetxattr(path, name, &buffer, size)
    guard n >= 0 else { return .failed(errno) }
    return size == 0 ? .count(n) : .bytes(Array(buffer.prefix(n)))
}

/// Runs `op` on the calling thread (chrooted into one tree, acting as root) as `identity`.
/// `dataSeed` seeds the bytes written, so both sides write the same.
func perform(_ op: MountOp, as identity: Identity, dataSeed: UInt64, held: HeldFiles) -> MountOutcome {
    if !identity.isRoot {
        let rc = identity.groups.withUnsafeBufferPointer { cairn_thread_set_credentials(identity.uid, identity.gid, $0.baseAddress, $0.count) }
        precondition(rc == 0, "cairn_thread_set_credentials failed: errno \(errno)")
    }
    defer {
        if !identity.isRoot { precondition(cairn_thread_become_root() == 0, "cairn_thread_become_root failed: errno \(errno)") }
    }
    switch op {
    case .create(let p, let mode, let exclusive, let truncate):
        var flags = exclusive ? O_CREAT | O_EXCL | O_WRONLY : O_CREAT | O_RDWR | O_NOFOLLOW
        if truncate { flags |= O_TRUNC }
        let fd = open(p, flags, mode_t(mode))
        guard fd >= 0 else { return .failed(errno) }
        return closing(fd, .ok)
    case .write(let p, let offset, let length):
        let data = testBytes(count: length, seed: dataSeed)
        let fd = open(p, O_WRONLY | O_NOFOLLOW)
        guard fd >= 0 else { return .failed(errno) }
        let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        return closing(fd, n < 0 ? .failed(errno) : .count(n))
    case .read(let p, let offset, let length):
        let fd = open(p, O_RDONLY | O_NOFOLLOW)
        guard fd >= 0 else { return .failed(errno) }
        return closing(fd, readFully(fd, offset: offset, length: length))
    case .truncate(let p, let size): return check(Glibc.truncate(p, off_t(size)))
    case .rename(let old, let new, let flags): return check(cairn_renameat2(AT_FDCWD, old, AT_FDCWD, new, flags))
    case .link(let old, let new): return check(linkat(AT_FDCWD, old, AT_FDCWD, new, 0))
    case .unlink(let p): return check(Glibc.unlink(p))
    case .mkdir(let p, let mode): return check(Glibc.mkdir(p, mode_t(mode)))
    case .rmdir(let p): return check(Glibc.rmdir(p))
    case .chmod(let p, let mode): return check(Glibc.chmod(p, mode_t(mode)))
    case .chown(let p, let uid, let gid, let follow):
        let u = uid ?? UInt32.max, g = gid ?? UInt32.max
        return check(follow ? Glibc.chown(p, u, g) : Glibc.lchown(p, u, g))
    case .symlink(let target, let p): return check(Glibc.symlink(target, p))
    case .readlink(let p):
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = Glibc.readlink(p, &buffer, buffer.count)
        guard n >= 0 else { return .failed(errno) }
        return .bytes(buffer.prefix(n).map { UInt8(bitPattern: $0) })
    case .setxattr(let p, let name, let length, let flags):
        let value = testBytes(count: length, seed: dataSeed)
        return check(value.withUnsafeBytes { cairn_lsetxattr(p, name, $0.baseAddress, $0.count, flags) })
    case .getxattr(let p, let name, let size): return xattrValue(p, name, size: size)
    case .listxattr(let p, let size): return xattrNames(p, size: size)
    case .removexattr(let p, let name): return check(cairn_lremovexattr(p, name))
    case .stat(let p, let follow): return status(p, follow: follow)
    case .readdir(let p): return directoryNames(p)
    case .hold(let p, let slot, let write):
        if let old = held.fds.removeValue(forKey: slot) { Glibc.close(old) }
        let fd = open(p, (write ? O_RDWR : O_RDONLY) | O_NOFOLLOW)
        guard fd >= 0 else { return .failed(errno) }
        held.fds[slot] = fd
        return .ok
    case .release(let slot):
        guard let fd = held.fds.removeValue(forKey: slot) else { return .failed(EBADF) }
        return check(Glibc.close(fd))
    case .fstat(let slot):
        guard let fd = held.fds[slot] else { return .failed(EBADF) }
        var st = stat()
        guard Glibc.fstat(fd, &st) == 0 else { return .failed(errno) }
        return .status(FileStatus(st))
    case .ftruncate(let slot, let size):
        guard let fd = held.fds[slot] else { return .failed(EBADF) }
        return check(Glibc.ftruncate(fd, off_t(size)))
    case .pwrite(let slot, let offset, let length):
        guard let fd = held.fds[slot] else { return .failed(EBADF) }
        let data = testBytes(count: length, seed: dataSeed)
        let n = data.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        return n < 0 ? .failed(errno) : .count(n)
    }
}

// MARK: Whole trees

/// Every entry of the tree under "/" (the chroot), as root: path, status, symlink target,
/// SHA-256 of file contents, xattr names and values. One line per entry, in name order.
func treeListing() -> [String] {
    var lines: [String] = []
    func describe(_ path: String) -> String {
        var st = stat()
        guard lstat(path, &st) == 0 else { return "\(path): lstat errno \(errno)" }
        let fileStatus = FileStatus(st)
        var line = "\(path): \(fileStatus)"
        switch fileStatus.type {
        case UInt32(S_IFLNK):
            if case .bytes(let target) = perform(.readlink(path), as: .root, dataSeed: 0, held: HeldFiles()) {
                line += " -> \(String(decoding: target, as: UTF8.self))"
            } else {
                line += " readlink failed"
            }
        case UInt32(S_IFREG):
            let fd = open(path, O_RDONLY | O_NOFOLLOW)
            if fd < 0 {
                line += " open errno \(errno)"
            } else {
                line += " content \(closing(fd, readFully(fd, offset: 0, length: Int(st.st_size) + 1)))"
            }
        default: break
        }
        if case .names(let names) = xattrNames(path, size: 65_536) {
            for name in names { line += " xattr \(name)=\(xattrValue(path, name, size: 65_536))" }
        } else {
            line += " listxattr \(xattrNames(path, size: 65_536))"
        }
        return line
    }
    func walk(_ path: String, depth: Int) {
        guard depth < 32, case .names(let names) = directoryNames(path) else { return }
        for name in names where name != "." && name != ".." {
            let child = path == "/" ? "/" + name : path + "/" + name
            lines.append(describe(child))
            var st = stat()
            if lstat(child, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { walk(child, depth: depth + 1) }
        }
    }
    lines.append(describe("/"))
    walk("/", depth: 0)
    return lines
}

/// Every path in the tree (relative, bounded) and its type, for the generator's existing names.
func existingPaths() -> [(path: String, type: UInt32)] {
    var out: [(path: String, type: UInt32)] = []
    func walk(_ prefix: String, depth: Int) {
        guard depth < 6, out.count < 500, case .names(let names) = directoryNames(prefix.isEmpty ? "/" : prefix) else { return }
        for name in names where name != "." && name != ".." {
            let path = prefix.isEmpty ? name : prefix + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            out.append((path, UInt32(st.st_mode & S_IFMT)))
            if st.st_mode & S_IFMT == S_IFDIR { walk(path, depth: depth + 1) }
        }
    }
    walk("", depth: 0)
    return out
}

// MARK: The runner

/// A thread of its own, chrooted into one tree (with umask 022), that runs the test's system
/// calls there; it switches its own credentials per call (`cairn_thread_set_credentials`)
/// while the rest of the process stays root.
final class ChrootedWorker: @unchecked Sendable {
    private let wake = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private var job: (() -> Void)?
    private var startErrno: Int32 = 0

    init(root: String) throws {
        let thread = Thread { [self] in serve(root: root) }
        thread.stackSize = 8 << 20
        thread.start()
        done.wait()
        guard startErrno == 0 else { throw CairnError(.io, "chroot into \(root): errno \(startErrno)") }
    }

    private func serve(root: String) {
        guard cairn_thread_chroot(root, 0o022) == 0 else {
            startErrno = errno
            done.signal()
            return
        }
        done.signal()
        while true {
            wake.wait()
            guard let job else { break }
            job()
            done.signal()
        }
        done.signal()
    }

    /// Runs `body` on the worker and waits for its result.
    func run<T>(_ body: @escaping () -> T) -> T {
        var result: T?
        job = { result = body() }
        wake.signal()
        done.wait()
        return result!
    }

    func stop() {
        job = nil
        wake.signal()
        done.wait()
    }
}

struct MountDifferentialRun: Sendable {
    var seeds = 0
    var opsPerKind: [String: Int] = [:]
    var failuresPerKind: [String: Int] = [:]
    var errnos: [String: Int] = [:]
    var mismatch: String?

    mutating func add(_ other: MountDifferentialRun) {
        seeds += other.seeds
        for (k, v) in other.opsPerKind { opsPerKind[k, default: 0] += v }
        for (k, v) in other.failuresPerKind { failuresPerKind[k, default: 0] += v }
        for (k, v) in other.errnos { errnos[k, default: 0] += v }
        mismatch = mismatch ?? other.mismatch
    }
}

/// Runs `count` operations of `seed` in a fresh directory `s<seed>` of each tree; stops at the
/// first difference, which the result describes with a replay command.
func runMountDifferential(seed: UInt64, count: Int, referenceRoot: String, mountRoot: String) throws -> MountDifferentialRun {
    let directory = "s\(seed)"
    for root in [referenceRoot, mountRoot] {
        // A replay in the same cluster starts from an empty directory.
        guard try runCommand("/bin/rm", ["-rf", root + "/" + directory]) == 0, mkdir(root + "/" + directory, 0o777) == 0 else {
            throw CairnError(.io, "cannot make a fresh \(directory) in \(root)")
        }
    }
    let reference = try ChrootedWorker(root: referenceRoot + "/" + directory)
    let mount = try ChrootedWorker(root: mountRoot + "/" + directory)
    let referenceHeld = HeldFiles(), mountHeld = HeldFiles()
    defer {
        reference.run { referenceHeld.closeAll() }
        mount.run { mountHeld.closeAll() }
        reference.stop()
        mount.stop()
    }
    var generator = MountOpGenerator(rng: SplitMix(seed: seed))
    var run = MountDifferentialRun(seeds: 1)
    var history: [String] = []
    let replay = (generator.setIDModes ? "" : "CAIRN_MOUNT_DIFF_SETID=0 ")
        + "CAIRN_MOUNT_DIFF_SEED=\(seed) CAIRN_MOUNT_DIFF_OPS=\(count) swift test --filter MountDifferential"
    // A prologue (as root) gives the other users somewhere to work: an open directory, a sticky
    // one, a set-group-ID one of group 2000, and one only root may write in.
    let prologue: [MountOp] = [.chmod(".", 0o777), .mkdir("a", 0o777), .mkdir("b", 0o1777), .mkdir("c", 0o2775),
                               .chown("c", uid: nil, gid: 2000, follow: true), .chmod("c", 0o2777), .mkdir("d", 0o755)]
    func compareTrees(after index: Int) -> String? {
        let expected = reference.run { treeListing() }
        let got = mount.run { treeListing() }
        guard expected != got else { return nil }
        let at = (0..<min(expected.count, got.count)).first { expected[$0] != got[$0] } ?? min(expected.count, got.count)
        return "seed \(seed): trees differ after op #\(index): reference has \(at < expected.count ? expected[at] : "nothing more"), "
            + "mount has \(at < got.count ? got[at] : "nothing more").\nLast operations:\n" + history.suffix(12).joined(separator: "\n")
            + "\nReplay: \(replay)"
    }
    for index in 0..<count {
        if index % 10 == 0 {
            let paths = reference.run { existingPaths() }
            generator.existing = paths.map(\.path)
            generator.existingDirectories = paths.filter { $0.type == UInt32(S_IFDIR) }.map(\.path)
            generator.existingFiles = paths.filter { $0.type == UInt32(S_IFREG) }.map(\.path)
        }
        let op = index < prologue.count ? prologue[index] : generator.next()
        let roll = Int(generator.rng.next() % 10)
        let identity = index < prologue.count || roll < 3 ? Identity.root : mountDifferentialIdentities[1 + roll % 3]
        let dataSeed = seed &* 1_000_003 &+ UInt64(index)
        let expected = reference.run { perform(op, as: identity, dataSeed: dataSeed, held: referenceHeld) }
        let got = mount.run { perform(op, as: identity, dataSeed: dataSeed, held: mountHeld) }
        run.opsPerKind[op.kind, default: 0] += 1
        if let code = expected.errnoValue {
            run.failuresPerKind[op.kind, default: 0] += 1
            run.errnos["\(op.kind) \(code)", default: 0] += 1
        }
        history.append("#\(index) [\(op)] as uid \(identity.uid): \(expected)")
        if expected != got {
            var detail = ""
            if case .bytes(let a) = expected, case .bytes(let b) = got { detail = " (\(firstDifference(a, b)))" }
            run.mismatch = "seed \(seed) op #\(index) [\(op)] as \(identity): reference (tmpfs) \(expected), mount \(got)\(detail).\n"
                + "Last operations:\n" + history.suffix(12).joined(separator: "\n") + "\nReplay: \(replay)"
            return run
        }
        if (index + 1) % 100 == 0 || index == count - 1 {
            // Held descriptors stay open: the trees must agree while files are open too.
            if let difference = compareTrees(after: index) {
                run.mismatch = difference
                return run
            }
        }
    }
    reference.run { referenceHeld.closeAll() }
    mount.run { mountHeld.closeAll() }
    // After every handle is closed (everything flushed), once more.
    if let difference = compareTrees(after: count - 1) { run.mismatch = difference }
    return run
}

/// Runs blocking work on a thread of its own, off Swift's cooperative pool.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
