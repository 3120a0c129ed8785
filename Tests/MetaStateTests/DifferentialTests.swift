import CCairnLinux
import CairnCore
import CairnTestSupport
import Foundation
import Testing
@testable import MetaState

#if canImport(Glibc)
import Glibc
#endif

/// Callers the differential test acts as: root, and three users who share group 2000
/// (one only through a supplementary group, one as primary group).
let differentialUsers: [Credentials] = [
    .root,
    Credentials(uid: 1000, gid: 1000, groups: [1000, 2000]),
    Credentials(uid: 1001, gid: 1001, groups: [1001, 2000]),
    Credentials(uid: 1002, gid: 2000, groups: []),
]

/// One namespace operation of the differential test, on paths relative to the root.
enum DifferentialOp: CustomStringConvertible {
    case mkdir(String, UInt32)
    case create(String, UInt32, exclusive: Bool, truncate: Bool)
    case mknod(String, FileType, UInt32)
    case symlink(target: String, String)
    case unlink(String)
    case rmdir(String)
    case link(String, String)
    case rename(String, String, UInt32)
    case chmod(String, UInt32)
    case chown(String, uid: UInt32?, gid: UInt32?, follow: Bool)
    case truncate(String, UInt64)
    case write(String, offset: UInt64, length: UInt64)
    case openRead(String)
    case utimens(String, TimeChange, TimeChange)
    case stat(String, follow: Bool)
    case readlink(String)
    case readdir(String, page: Int)
    case setxattr(String, name: String, valueLength: Int, flags: UInt32)
    case getxattr(String, name: String, size: Int)
    case listxattr(String, size: Int)
    case removexattr(String, name: String)
    /// Opens a path and keeps it open in slot `slot` (closing what the slot held), so that
    /// unlinked-but-open files, ftruncate and writes through a handle are compared too.
    case hold(String, slot: Int, write: Bool)
    case release(slot: Int)
    case fstat(slot: Int)
    case ftruncate(slot: Int, UInt64)
    case pwrite(slot: Int, offset: UInt64, length: UInt64)

    var description: String {
        func short(_ s: String) -> String { s.count > 20 ? "\(s.prefix(8))…(\(s.count) bytes)" : s }
        switch self {
        case .mkdir(let p, let m): return "mkdir \(short(p)) \(String(m, radix: 8))"
        case .create(let p, let m, let x, let t): return "create \(short(p)) \(String(m, radix: 8)) excl=\(x) trunc=\(t)"
        case .mknod(let p, let t, let m): return "mknod \(short(p)) \(t) \(String(m, radix: 8))"
        case .symlink(let t, let p): return "symlink \(short(t)) -> at \(short(p))"
        case .unlink(let p): return "unlink \(short(p))"
        case .rmdir(let p): return "rmdir \(short(p))"
        case .link(let a, let b): return "link \(short(a)) \(short(b))"
        case .rename(let a, let b, let f): return "rename \(short(a)) \(short(b)) flags=\(f)"
        case .chmod(let p, let m): return "chmod \(short(p)) \(String(m, radix: 8))"
        case .chown(let p, let u, let g, let f): return "chown \(short(p)) \(u.map(String.init) ?? "-1"):\(g.map(String.init) ?? "-1") follow=\(f)"
        case .truncate(let p, let s): return "truncate \(short(p)) \(s)"
        case .write(let p, let o, let l): return "write \(short(p)) at \(o) length \(l)"
        case .openRead(let p): return "open-read \(short(p))"
        case .utimens(let p, let a, let m): return "utimensat \(short(p)) \(a) \(m)"
        case .stat(let p, let f): return (f ? "stat " : "lstat ") + short(p)
        case .readlink(let p): return "readlink \(short(p))"
        case .readdir(let p, let n): return "readdir \(short(p)) page \(n)"
        case .setxattr(let p, let n, let l, let f): return "setxattr \(short(p)) \(short(n)) length \(l) flags \(f)"
        case .getxattr(let p, let n, let s): return "getxattr \(short(p)) \(short(n)) size \(s)"
        case .listxattr(let p, let s): return "listxattr \(short(p)) size \(s)"
        case .removexattr(let p, let n): return "removexattr \(short(p)) \(short(n))"
        case .hold(let p, let slot, let write): return "hold \(short(p)) slot \(slot) write=\(write)"
        case .release(let slot): return "release slot \(slot)"
        case .fstat(let slot): return "fstat slot \(slot)"
        case .ftruncate(let slot, let size): return "ftruncate slot \(slot) \(size)"
        case .pwrite(let slot, let offset, let length): return "pwrite slot \(slot) at \(offset) length \(length)"
        }
    }

    var kind: String { String(description.prefix { $0 != " " }) }
}

/// Seeded generator of operations over a small set of names, so that operations collide
/// (existing targets, non-empty directories, loops) often.
struct DifferentialGenerator {
    var rng: SplitMix
    let names = ["a", "b", "c", "d"]
    /// Paths that exist in the namespace now (refreshed by the runner), so that operations on
    /// existing entries (unlink, link, rename, chmod, writes…) are tried often, not only when a
    /// random path happens to hit one.
    var existing: [String] = []
    let modes: [UInt32] = [0o755, 0o777, 0o1777, 0o2775, 0o2777, 0o700, 0o711, 0o644, 0o666, 0o4755, 0o2755, 0o2745,
                           0o6755, 0o000, 0o1770, 0o3777, 0o555, 0o333, 0o070, 0o007]

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }

    mutating func path() -> String {
        let r = rng.next() % 100
        if r < 2 { return "." }
        if r < 4 { return pick(names) + "/.." }
        if r < 5 { return String(repeating: "n", count: 256) }
        if r < 6 { return pick(names) + "/" + String(repeating: "m", count: 255) }
        if r < 7 { return pick(names) + "/." }
        let roll = rng.next() % 100
        let depth = roll < 45 ? 1 : roll < 80 ? 2 : 3
        // The last component comes from a wider set: the tree stays crowded enough for
        // collisions without every new name already existing.
        return ((0..<depth - 1).map { _ in pick(names) } + [pick(names + ["e", "f", "g", "h"])]).joined(separator: "/")
    }

    /// An existing path 60% of the time, else a random one.
    mutating func source() -> String {
        !existing.isEmpty && chance(60) ? pick(existing) : path()
    }

    /// Half the time an open mode, so that the other users keep places to work in.
    mutating func mode() -> UInt32 {
        if chance(50) { return pick([0o777, 0o1777, 0o2777, 0o3777, 0o6777, 0o4777]) }
        return chance(20) ? UInt32(rng.next() % 0o10000) : pick(modes)
    }

    mutating func time() -> TimeChange {
        switch rng.next() % 3 {
        case 0: .omit
        case 1: .now
        default: .set(Timestamp(seconds: 1_000_000 + Int64(rng.next() % 1000), nanoseconds: UInt32(rng.next() % 1_000_000_000)))
        }
    }

    mutating func xattrName() -> String {
        let r = rng.next() % 100
        if r < 70 { return "user." + pick(["a", "b", "c"]) }
        if r < 80 { return "trusted." + pick(["x", "y"]) }
        if r < 84 { return "bogus.z" }
        if r < 88 { return "user." + String(repeating: "x", count: 251) }
        if r < 90 { return "" }
        return "user." + String(repeating: "y", count: 250)
    }

    mutating func next() -> DifferentialOp {
        switch rng.next() % 100 {
        case 0..<7: return .mkdir(path(), mode())
        case 7..<20: return .create(path(), mode(), exclusive: chance(50), truncate: chance(20))
        case 20..<23: return .mknod(path(), pick([.fifo, .socket, .characterDevice, .regular]), mode())
        case 23..<28:
            let target: String
            switch rng.next() % 10 {
            case 0: target = "/" + path()
            case 1: target = pick(names)
            case 2: target = "../" + path()
            default: target = path()
            }
            return .symlink(target: target, path())
        case 28..<33: return .unlink(source())
        case 33..<37: return .rmdir(source())
        case 37..<41: return .link(source(), path())
        case 41..<49: return .rename(source(), path(), pick([0, 0, 0, 1, 2, 3]))
        case 49..<56:
            // Closing the root to everyone would end the run's interesting part: keep it open.
            let p = source()
            return .chmod(p, p == "." ? pick([0o777, 0o1777, 0o2777]) : mode())
        case 56..<61:
            let ids: [UInt32?] = [nil, 0, 1000, 1001, 1002, 2000, 3000]
            // chown(-1, -1) is left out: FUSE would send it as a mode change, not as a chown.
            var uid = pick(ids), gid = pick(ids)
            if chance(30) { uid = nil }
            if uid == nil && gid == nil { gid = 2000 }
            return .chown(source(), uid: uid, gid: gid, follow: chance(70))
        case 61..<64: return .truncate(source(), pick([0, 1, 100, 4096, 70_000, 300_000]))
        case 64..<69: return .write(source(), offset: pick([0, 10, 4096, 65_536, 200_000]), length: pick([1, 100, 5000, 65_536]))
        case 69..<72: return .openRead(source())
        case 72..<75: return .utimens(source(), time(), time())
        case 75..<80: return .stat(source(), follow: chance(50))
        case 80..<82: return .readlink(source())
        case 82..<86: return .readdir(source(), page: Int(1 + rng.next() % 4))
        case 86..<90:
            return .setxattr(source(), name: xattrName(), valueLength: chance(3) ? 65_537 : Int(rng.next() % 40), flags: UInt32(rng.next() % 4))
        case 90..<92: return .getxattr(source(), name: xattrName(), size: pick([0, 2, 100, 1000]))
        case 92..<94: return .listxattr(source(), size: pick([0, 5, 1000]))
        case 94..<95: return .removexattr(source(), name: xattrName())
        default:
            let slot = Int(rng.next() % 3)
            switch rng.next() % 5 {
            case 0: return .hold(source(), slot: slot, write: chance(60))
            case 1: return .release(slot: slot)
            case 2: return .fstat(slot: slot)
            case 3: return .ftruncate(slot: slot, pick([0, 10, 5000, 100_000]))
            default: return .pwrite(slot: slot, offset: pick([0, 100, 70_000]), length: pick([1, 4096]))
            }
        }
    }
}

/// The state machine side: the same operations, resolved by `Namespace`'s path walker and
/// applied through its inode operations, with the kernel's umask applied to new modes.
struct ModelSide {
    var ns = Namespace(limits: MetaLimits(), now: Timestamp(seconds: 1, nanoseconds: 0))
    let session: SessionID
    var clock: Int64 = 10
    /// Handles held open across operations, by slot.
    var held: [Int: (handle: HandleID, inode: InodeNumber)] = [:]
    static let umask: UInt32 = 0o022

    init() {
        session = try! ns.openSession(ttlNanoseconds: UInt64.max / 2, now: Timestamp(seconds: 1, nanoseconds: 0)).get()
    }

    mutating func now() -> Timestamp {
        clock += 1
        return Timestamp(seconds: clock, nanoseconds: 500)
    }

    static func outcome<T>(_ r: Result<T, FileSystemError>, _ make: (T) -> Outcome = { _ in .ok }) -> Outcome {
        switch r {
        case .success(let v): make(v)
        case .failure(let e): .failed(e.errno)
        }
    }

    mutating func run(_ op: DifferentialOp, as cred: Credentials, chunkSeed: UInt64) -> Outcome {
        let t = now()
        func b(_ s: String) -> [UInt8] { Array(s.utf8) }
        func parent(_ path: String) -> Result<(InodeNumber, [UInt8]), FileSystemError> { ns.resolveParent(b(path), cred) }
        func inode(_ path: String, follow: Bool) -> Result<InodeNumber, FileSystemError> { ns.resolve(b(path), cred, followLast: follow) }
        switch op {
        case .mkdir(let p, let mode):
            return Self.outcome(parent(p).flatMap { ns.mkdir($0.0, $0.1, mode: mode & ~Self.umask, cred, now: t) })
        case .create(let p, let mode, let exclusive, let truncate):
            var flags: OpenFlags = exclusive ? [.create, .exclusive, .write] : [.create, .noFollow, .read, .write]
            if truncate { flags.insert(.truncate) }
            return Self.outcome(parent(p).flatMap { ns.create($0.0, $0.1, flags: flags, mode: mode & ~Self.umask, session: session, cred, now: t) }
                .flatMap { ns.close(session: session, handle: $0.0.handle) })
        case .mknod(let p, let type, let mode):
            return Self.outcome(parent(p).flatMap {
                ns.mknod($0.0, $0.1, type: type, mode: mode & ~Self.umask, rdev: deviceNumber(major: 1, minor: 3), cred, now: t)
            })
        case .symlink(let target, let p):
            return Self.outcome(parent(p).flatMap { ns.symlink($0.0, $0.1, target: b(target), cred, now: t) })
        case .unlink(let p):
            return Self.outcome(parent(p).flatMap { ns.unlink($0.0, $0.1, cred, now: t) })
        case .rmdir(let p):
            return Self.outcome(parent(p).flatMap { ns.rmdir($0.0, $0.1, cred, now: t) })
        case .link(let old, let new):
            return Self.outcome(inode(old, follow: false).flatMap { source in
                parent(new).flatMap { ns.link(source, $0.0, $0.1, cred, now: t) }
            })
        case .rename(let old, let new, let flags):
            if let error = Namespace.checkRenameFlags(RenameFlags(rawValue: flags)) { return .failed(error.errno) }
            return Self.outcome(parent(old).flatMap { o in
                parent(new).flatMap { n in ns.rename(o.0, o.1, n.0, n.1, flags: RenameFlags(rawValue: flags), cred, now: t) }
            })
        case .chmod(let p, let mode):
            return Self.outcome(inode(p, follow: true).flatMap { ns.setattr($0, AttributeChanges(mode: mode), cred, now: t) })
        case .chown(let p, let uid, let gid, let follow):
            return Self.outcome(inode(p, follow: follow).flatMap { ns.setattr($0, AttributeChanges(uid: uid, gid: gid), cred, now: t) })
        case .truncate(let p, let size):
            return Self.outcome(inode(p, follow: true).flatMap { ns.setattr($0, AttributeChanges(size: size), cred, now: t) })
        case .write(let p, let offset, let length):
            return Self.outcome(parent(p).flatMap { ns.create($0.0, $0.1, flags: [.read, .write, .noFollow], mode: 0, session: session, cred, now: t) }
                .flatMap { opened in
                    var result: Result<Void, FileSystemError> = .success(())
                    if opened.0.attributes.type == .regular {
                        let chunk = SHA256.hash(testBytes(count: 16, seed: chunkSeed))
                        let extent = Extent(fileOffset: offset, length: length, chunkID: chunk, chunkOffset: 0)
                        result = ns.commitWrite(session: session, handle: opened.0.handle, extents: [extent], cred, now: t).map { _ in () }
                    }
                    _ = ns.close(session: session, handle: opened.0.handle)
                    return result
                })
        case .openRead(let p):
            return Self.outcome(parent(p).flatMap { ns.create($0.0, $0.1, flags: [.read, .noFollow], mode: 0, session: session, cred, now: t) }
                .flatMap { ns.close(session: session, handle: $0.0.handle) })
        case .utimens(let p, let atime, let mtime):
            // utimensat(2) returns 0 before walking the path when both times are UTIME_OMIT.
            if atime == .omit && mtime == .omit { return .ok }
            return Self.outcome(inode(p, follow: true).flatMap { ns.setattr($0, AttributeChanges(atime: atime, mtime: mtime), cred, now: t) })
        case .stat(let p, let follow):
            return Self.outcome(inode(p, follow: follow).flatMap { ns.getattr($0) }) { .status(StatusSummary($0)) }
        case .readlink(let p):
            return Self.outcome(inode(p, follow: false).flatMap { ns.readlink($0) }) { .bytes($0) }
        case .readdir(let p, let page):
            return Self.outcome(inode(p, follow: true).flatMap { dir in readAll(dir, page: page, cred) }) { .names($0) }
        case .setxattr(let p, let name, let length, let flags):
            let value = testBytes(count: length, seed: chunkSeed)
            if let e = ns.checkXattrArguments(name: b(name), valueCount: length, flags: XattrFlags(rawValue: flags)) { return .failed(e.errno) }
            return Self.outcome(inode(p, follow: false).flatMap { ns.setxattr($0, b(name), value, flags: XattrFlags(rawValue: flags), cred, now: t) })
        case .getxattr(let p, let name, let size):
            if let e = ns.checkXattrArguments(name: b(name)) { return .failed(e.errno) }
            return Self.outcome(inode(p, follow: false).flatMap { ns.getxattr($0, b(name), sizeMax: size == 0 ? nil : size, cred) }) {
                size == 0 ? .length($0.count) : .bytes($0)
            }
        case .listxattr(let p, let size):
            return Self.outcome(inode(p, follow: false).flatMap { ns.listxattr($0, sizeMax: size == 0 ? nil : size, cred) }) { names in
                size == 0 ? .length(names.reduce(0) { $0 + $1.count + 1 }) : .names(names.map { String(decoding: $0, as: UTF8.self) }.sorted())
            }
        case .removexattr(let p, let name):
            if let e = ns.checkXattrArguments(name: b(name)) { return .failed(e.errno) }
            return Self.outcome(inode(p, follow: false).flatMap { ns.removexattr($0, b(name), cred, now: t) })
        case .hold(let p, let slot, let write):
            if let old = held.removeValue(forKey: slot) { _ = ns.close(session: session, handle: old.handle) }
            let flags: OpenFlags = write ? [.read, .write, .noFollow] : [.read, .noFollow]
            let opened = parent(p).flatMap { ns.create($0.0, $0.1, flags: flags, mode: 0, session: session, cred, now: t) }
            if case .success(let o) = opened { held[slot] = (o.0.handle, o.0.attributes.inode) }
            return Self.outcome(opened)
        case .release(let slot):
            guard let h = held.removeValue(forKey: slot) else { return .failed(FileSystemError.EBADF.errno) }
            return Self.outcome(ns.close(session: session, handle: h.handle))
        case .fstat(let slot):
            guard let h = held[slot] else { return .failed(FileSystemError.EBADF.errno) }
            return Self.outcome(ns.getattr(h.inode)) { .status(StatusSummary($0)) }
        case .ftruncate(let slot, let size):
            guard let h = held[slot] else { return .failed(FileSystemError.EBADF.errno) }
            return Self.outcome(ns.setattr(h.inode, AttributeChanges(size: size), handle: (session, h.handle), cred, now: t))
        case .pwrite(let slot, let offset, let length):
            guard let h = held[slot] else { return .failed(FileSystemError.EBADF.errno) }
            // A write to something other than a regular file never reaches the namespace.
            if case .success(let a) = ns.getattr(h.inode), a.type != .regular { return .ok }
            let chunk = SHA256.hash(testBytes(count: 16, seed: chunkSeed))
            let extent = Extent(fileOffset: offset, length: length, chunkID: chunk, chunkOffset: 0)
            return Self.outcome(ns.commitWrite(session: session, handle: h.handle, extents: [extent], cred, now: t))
        }
    }

    /// Lists a directory in pages of `page` entries, resuming from each page's last cookie.
    func readAll(_ dir: InodeNumber, page: Int, _ cred: Credentials) -> Result<[String], FileSystemError> {
        var names: [String] = []
        var cookie: UInt64 = 0
        for _ in 0..<100_000 {
            switch ns.readdir(dir, after: cookie, count: page, cred) {
            case .failure(let e): return .failure(e)
            case .success(let p):
                names += p.entries.map { String(decoding: $0.name, as: UTF8.self) }
                if let last = p.entries.last { cookie = last.cookie }
                if p.end { return .success(names.sorted()) }
            }
        }
        return .failure(.EIO)
    }
}

/// File descriptors the kernel side holds open across operations, by slot.
final class HeldDescriptors {
    var fds: [Int: Int32] = [:]
    func closeAll() {
        for fd in fds.values { Glibc.close(fd) }
        fds = [:]
    }
}

/// The kernel side: the same operation through syscalls, as `cred`, on the chrooted thread.
func runOnKernel(_ op: DifferentialOp, as cred: Credentials, chunkSeed: UInt64, held: HeldDescriptors) -> Outcome {
    Kernel.asUser(cred) {
        switch op {
        case .mkdir(let p, let mode): return Kernel.check(Glibc.mkdir(p, mode_t(mode)))
        case .create(let p, let mode, let exclusive, let truncate):
            var flags = exclusive ? O_CREAT | O_EXCL | O_WRONLY : O_CREAT | O_NOFOLLOW | O_RDWR
            if truncate { flags |= O_TRUNC }
            let fd = Glibc.open(p, flags | O_NONBLOCK, mode_t(mode))
            guard fd >= 0 else { return .failed(errno) }
            Glibc.close(fd)
            return .ok
        case .mknod(let p, let type, let mode):
            return Kernel.check(cairn_mknod(p, type.modeBits | mode, 1, 3))
        case .symlink(let target, let p): return Kernel.check(Glibc.symlink(target, p))
        case .unlink(let p): return Kernel.check(Glibc.unlink(p))
        case .rmdir(let p): return Kernel.check(Glibc.rmdir(p))
        case .link(let old, let new): return Kernel.check(linkat(AT_FDCWD, old, AT_FDCWD, new, 0))
        case .rename(let old, let new, let flags): return Kernel.check(cairn_renameat2(AT_FDCWD, old, AT_FDCWD, new, flags))
        case .chmod(let p, let mode): return Kernel.check(Glibc.chmod(p, mode_t(mode)))
        case .chown(let p, let uid, let gid, let follow):
            let u = uid ?? UInt32.max, g = gid ?? UInt32.max
            return Kernel.check(follow ? Glibc.chown(p, u, g) : Glibc.lchown(p, u, g))
        case .truncate(let p, let size): return Kernel.check(Glibc.truncate(p, off_t(size)))
        case .write(let p, let offset, let length):
            let fd = Glibc.open(p, O_RDWR | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else { return .failed(errno) }
            defer { Glibc.close(fd) }
            var st = Glibc.stat()
            guard fstat(fd, &st) == 0 else { return .failed(errno) }
            guard st.st_mode & S_IFMT == S_IFREG else { return .ok }
            let data = [UInt8](repeating: 0x5a, count: Int(length))
            let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            return n == Int(length) ? .ok : .failed(n < 0 ? errno : -2)
        case .openRead(let p):
            let fd = Glibc.open(p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else { return .failed(errno) }
            Glibc.close(fd)
            return .ok
        case .utimens(let p, let atime, let mtime):
            func spec(_ c: TimeChange) -> timespec {
                switch c {
                case .omit: timespec(tv_sec: 0, tv_nsec: (1 << 30) - 2)
                case .now: timespec(tv_sec: 0, tv_nsec: (1 << 30) - 1)
                case .set(let t): timespec(tv_sec: Int(t.seconds), tv_nsec: Int(t.nanoseconds))
                }
            }
            var times = [spec(atime), spec(mtime)]
            return Kernel.check(utimensat(AT_FDCWD, p, &times, 0))
        case .stat(let p, let follow): return Kernel.status(p, follow: follow)
        case .readlink(let p): return Kernel.readlink(p)
        case .readdir(let p, _): return Kernel.list(p)
        case .setxattr(let p, let name, let length, let flags):
            let value = testBytes(count: length, seed: chunkSeed)
            return Kernel.check(value.withUnsafeBytes { cairn_lsetxattr(p, name, $0.baseAddress, $0.count, Int32(flags)) })
        case .getxattr(let p, let name, let size): return Kernel.getxattr(p, name, size: size)
        case .listxattr(let p, let size): return Kernel.listxattr(p, size: size)
        case .removexattr(let p, let name): return Kernel.check(cairn_lremovexattr(p, name))
        case .hold(let p, let slot, let write):
            if let old = held.fds.removeValue(forKey: slot) { Glibc.close(old) }
            let fd = Glibc.open(p, (write ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else { return .failed(errno) }
            held.fds[slot] = fd
            return .ok
        case .release(let slot):
            guard let fd = held.fds.removeValue(forKey: slot) else { return .failed(EBADF) }
            return Kernel.check(Glibc.close(fd))
        case .fstat(let slot):
            guard let fd = held.fds[slot] else { return .failed(EBADF) }
            var st = Glibc.stat()
            guard Glibc.fstat(fd, &st) == 0 else { return .failed(errno) }
            return StatusSummary(st).map { .status($0) } ?? .failed(-1)
        case .ftruncate(let slot, let size):
            guard let fd = held.fds[slot] else { return .failed(EBADF) }
            return Kernel.check(Glibc.ftruncate(fd, off_t(size)))
        case .pwrite(let slot, let offset, let length):
            guard let fd = held.fds[slot] else { return .failed(EBADF) }
            var st = Glibc.stat()
            guard Glibc.fstat(fd, &st) == 0 else { return .failed(errno) }
            guard st.st_mode & S_IFMT == S_IFREG else { return .ok }
            let data = [UInt8](repeating: 0x33, count: Int(length))
            let n = data.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            return n == Int(length) ? .ok : .failed(n < 0 ? errno : -2)
        }
    }
}

/// Compares the whole tree as root: names, types, modes, owners, link counts, sizes, symlink
/// targets, xattr names. Returns the first difference.
func compareTrees(_ model: ModelSide) -> String? {
    func walk(_ path: String, _ inode: InodeNumber, depth: Int) -> String? {
        guard depth < 64 else { return "tree deeper than 64 at \(path)" }
        let kernelList = Kernel.list(path)
        let modelList = ModelSide.outcome(model.readAll(inode, page: 7, .root)) { .names($0) }
        guard kernelList == modelList, case .names(let names) = modelList else {
            return "listing of \(path): kernel \(kernelList) model \(modelList)"
        }
        for name in names where name != "." && name != ".." {
            let child = path == "/" ? "/" + name : path + "/" + name
            let childInode = model.ns.inodes[inode]!.directory!.entries[Array(name.utf8)]!.inode
            let record = model.ns.inodes[childInode]!
            let kernelStatus = Kernel.status(child, follow: false)
            let modelStatus = Outcome.status(StatusSummary(model.ns.attributes(childInode, record)))
            if kernelStatus != modelStatus { return "lstat \(child): kernel \(kernelStatus) model \(modelStatus)" }
            if record.type == .symlink, Kernel.readlink(child) != .bytes(record.target) {
                return "readlink \(child): kernel \(Kernel.readlink(child)) model \(String(decoding: record.target, as: UTF8.self))"
            }
            let kernelXattrs = Kernel.listxattr(child, size: 65536)
            let modelXattrs = ModelSide.outcome(model.ns.listxattr(childInode, sizeMax: nil, .root)) {
                .names($0.map { String(decoding: $0, as: UTF8.self) }.sorted())
            }
            if kernelXattrs != modelXattrs { return "xattrs of \(child): kernel \(kernelXattrs) model \(modelXattrs)" }
            if record.type == .directory, let difference = walk(child, childInode, depth: depth + 1) { return difference }
        }
        return nil
    }
    return walk("/", Namespace.rootInode, depth: 0)
}

/// Every path in the model's tree (as root), bounded by depth and count.
func existingPaths(_ model: ModelSide) -> [String] {
    var out: [String] = []
    func walk(_ prefix: String, _ inode: InodeNumber, depth: Int) {
        guard depth < 6, out.count < 500, let dir = model.ns.inodes[inode]?.directory else { return }
        for item in dir.order {
            let path = prefix.isEmpty ? String(decoding: item.name, as: UTF8.self) : prefix + "/" + String(decoding: item.name, as: UTF8.self)
            out.append(path)
            walk(path, dir.entries[item.name]!.inode, depth: depth + 1)
        }
    }
    walk("", Namespace.rootInode, depth: 0)
    return out
}

struct DifferentialRun {
    var ops = 0
    var opsPerKind: [String: Int] = [:]
    var failuresPerKind: [String: Int] = [:]
    var errnos: [String: Int] = [:]
    var mismatch: String?
}

/// Runs `count` operations of seed `seed` against a fresh tmpfs and a fresh namespace.
func runDifferential(seed: UInt64, count: Int, treeEvery: Int) throws -> DifferentialRun {
    let mount = try TmpfsMount()
    defer { mount.unmount() }
    return onChrootedThread(mount.path, umask: ModelSide.umask) {
        var model = ModelSide()
        var generator = DifferentialGenerator(rng: SplitMix(seed: seed))
        var run = DifferentialRun()
        let held = HeldDescriptors()
        defer { held.closeAll() }
        let replay = "CAIRN_META_SEED=\(seed) CAIRN_META_OPS=\(count) swift test --filter MetaStateTests.DifferentialTests"
        // A prologue (as root) gives the other users somewhere to work: an open directory, a
        // sticky one, a set-group-ID one of group 2000 and a closed one.
        let prologue: [DifferentialOp] = [.chmod(".", 0o777), .mkdir("a", 0o777), .mkdir("b", 0o1777), .mkdir("c", 0o2775),
                                          .chown("c", uid: nil, gid: 2000, follow: true), .chmod("c", 0o2777), .mkdir("d", 0o755)]
        for index in 0..<count {
            if index % 10 == 0 { generator.existing = existingPaths(model) }
            let op = index < prologue.count ? prologue[index] : generator.next()
            let userIndex = generator.rng.next() % 20
            let cred = index < prologue.count || userIndex < 6 ? Credentials.root : differentialUsers[1 + Int(userIndex % 3)]
            let chunkSeed = seed &* 1_000_003 &+ UInt64(index)
            let kernel = runOnKernel(op, as: cred, chunkSeed: chunkSeed, held: held)
            let modelOutcome = model.run(op, as: cred, chunkSeed: chunkSeed)
            run.ops += 1
            run.opsPerKind[op.kind, default: 0] += 1
            if case .failed(let e) = kernel {
                run.failuresPerKind[op.kind, default: 0] += 1
                run.errnos["\(op.kind) \(FileSystemError(errno: e))", default: 0] += 1
            }
            if kernel != modelOutcome {
                run.mismatch = "seed \(seed) op #\(index) [\(op)] as uid \(cred.uid) gid \(cred.gid) groups \(cred.groups): "
                    + "kernel \(kernel), model \(modelOutcome). Replay: \(replay)"
                return run
            }
            if (index + 1) % treeEvery == 0 || index == count - 1, let difference = compareTrees(model) {
                run.mismatch = "seed \(seed) after op #\(index) [\(op)] as uid \(cred.uid): tree differs: \(difference). Replay: \(replay)"
                return run
            }
        }
        return run
    }
}

@Suite(.serialized) struct DifferentialTests {
    /// CI-sized by default; CAIRN_META_SEED=n replays one seed, CAIRN_META_SEEDS=n runs n seeds,
    /// CAIRN_META_OPS=n sets the operations per seed (long runs: CAIRN_META_SEEDS=200 CAIRN_META_OPS=20000).
    @Test func stateMachineMatchesTmpfs() throws {
        try #require(geteuid() == 0, "the differential test mounts a tmpfs and switches uids: run it as root")
        let environment = ProcessInfo.processInfo.environment
        let count = environment["CAIRN_META_OPS"].flatMap(Int.init) ?? 3000
        let seeds: [UInt64]
        if let one = environment["CAIRN_META_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let n = environment["CAIRN_META_SEEDS"].flatMap(UInt64.init) ?? 8
            let base = environment["CAIRN_META_SEED_BASE"].flatMap(UInt64.init) ?? 1
            seeds = Array(base..<base + n)
        }
        var total = DifferentialRun()
        var seedsRun = 0
        let clock = ContinuousClock.now
        for seed in seeds {
            seedsRun += 1
            let run = try runDifferential(seed: seed, count: count, treeEvery: 50)
            total.ops += run.ops
            for (k, v) in run.opsPerKind { total.opsPerKind[k, default: 0] += v }
            for (k, v) in run.failuresPerKind { total.failuresPerKind[k, default: 0] += v }
            for (k, v) in run.errnos { total.errnos[k, default: 0] += v }
            if let mismatch = run.mismatch {
                Issue.record(Comment(rawValue: mismatch))
                break
            }
        }
        let coverage = total.opsPerKind.keys.sorted().map { "\($0) \(total.opsPerKind[$0]!) (\(total.failuresPerKind[$0] ?? 0) errors)" }
        print("differential: \(seedsRun) seeds in \(ContinuousClock.now - clock), \(total.ops) ops: " + coverage.joined(separator: ", ")
              + "; errnos: " + total.errnos.keys.sorted().map { "\($0) \(total.errnos[$0]!)" }.joined(separator: ", "))
    }
}
