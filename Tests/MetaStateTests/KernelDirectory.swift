import CCairnLinux
import CairnTestSupport
import Foundation
@testable import MetaState

#if canImport(Glibc)
import Glibc
#endif

/// What one operation gave, in a form both sides produce: the kernel through syscalls on a
/// tmpfs, the state machine through `Namespace`. Inode numbers and times are left out (they
/// legitimately differ); directory sizes too (tmpfs counts bytes of entries).
enum Outcome: Equatable, CustomStringConvertible {
    case failed(Int32)
    case ok
    case status(StatusSummary)
    case bytes([UInt8])
    case names([String])
    case length(Int)

    var description: String {
        switch self {
        case .failed(let e): "error \(FileSystemError(errno: e))"
        case .ok: "ok"
        case .status(let s): "\(s)"
        case .bytes(let b): "bytes(\(b.count): \(String(decoding: b.prefix(40), as: UTF8.self)))"
        case .names(let n): "names\(n)"
        case .length(let n): "length(\(n))"
        }
    }
}

struct StatusSummary: Equatable, CustomStringConvertible {
    var type: FileType
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var nlink: UInt64
    /// nil for directories.
    var size: UInt64?
    var rdev: UInt64

    init(_ a: Attributes) {
        type = a.type
        mode = a.mode
        uid = a.uid
        gid = a.gid
        nlink = UInt64(a.nlink)
        size = a.type == .directory ? nil : a.size
        rdev = a.rdev
    }

    init?(_ st: stat) {
        guard let t = FileType(modeBits: UInt32(st.st_mode)) else { return nil }
        type = t
        mode = UInt32(st.st_mode) & 0o7777
        uid = st.st_uid
        gid = st.st_gid
        nlink = UInt64(st.st_nlink)
        size = t == .directory ? nil : UInt64(st.st_size)
        rdev = (t == .characterDevice || t == .blockDevice) ? UInt64(st.st_rdev) : 0
    }

    var description: String {
        "\(type) \(String(mode, radix: 8)) \(uid):\(gid) nlink \(nlink) size \(size.map(String.init) ?? "-") rdev \(rdev)"
    }
}

/// Linux's encoding of a device number (what st_rdev holds for small major and minor).
func deviceNumber(major: UInt32, minor: UInt32) -> UInt64 {
    UInt64(minor & 0xff) | UInt64(major & 0xfff) << 8 | UInt64(minor & ~0xff) << 12
}

/// A tmpfs mounted for one test, removed afterwards.
final class TmpfsMount {
    let directory = TestDirectory("meta-tmpfs")
    let path: String
    private(set) var mounted = false

    init() throws {
        path = directory.path.string
        let rc = Glibc.mount("tmpfs", path, "tmpfs", 0, "mode=0755,uid=0,gid=0,size=256m,nr_inodes=200000")
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        mounted = true
    }

    func unmount() {
        if mounted { _ = umount2(path, Int32(MNT_DETACH)) }
        mounted = false
    }

    deinit { unmount() }
}

/// Runs `body` on a fresh thread of its own, chrooted into `root` with umask `mask`; the
/// thread may then switch its credentials without touching the rest of the process.
/// Hands a value from the worker thread back; the semaphore orders the accesses.
private final class ThreadResultBox<T>: @unchecked Sendable {
    var value: T?
    var failed: Int32 = 0
    let body: () -> T
    init(_ body: @escaping () -> T) { self.body = body }
}

func onChrootedThread<T>(_ root: String, umask mask: UInt32, _ body: @escaping () -> T) -> T {
    let box = ThreadResultBox<T>(body)
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        if cairn_thread_chroot(root, mask) != 0 {
            box.failed = errno
        } else {
            box.value = box.body()
        }
        done.signal()
    }
    thread.stackSize = 8 << 20
    thread.start()
    done.wait()
    precondition(box.failed == 0, "cairn_thread_chroot failed: errno \(box.failed)")
    return box.value!
}

/// The kernel side of the differential test: each call runs the syscall as `cred` on the
/// calling (chrooted, dedicated) thread and switches back to root after.
enum Kernel {
    static func asUser<T>(_ cred: Credentials, _ body: () -> T) -> T {
        if !cred.isRoot {
            let rc = cred.groups.withUnsafeBufferPointer { cairn_thread_set_credentials(cred.uid, cred.gid, $0.baseAddress, $0.count) }
            precondition(rc == 0, "cairn_thread_set_credentials failed: errno \(errno)")
        }
        let result = body()
        if !cred.isRoot {
            precondition(cairn_thread_become_root() == 0, "cairn_thread_become_root failed: errno \(errno)")
        }
        return result
    }

    static func check(_ rc: Int32) -> Outcome { rc == 0 ? .ok : .failed(errno) }

    static func status(_ path: String, follow: Bool) -> Outcome {
        var st = stat()
        guard fstatat(AT_FDCWD, path, &st, follow ? 0 : Int32(AT_SYMLINK_NOFOLLOW)) == 0 else { return .failed(errno) }
        return StatusSummary(st).map { .status($0) } ?? .failed(-1)
    }

    static func readlink(_ path: String) -> Outcome {
        var buffer = [CChar](repeating: 0, count: 8192)
        let n = Glibc.readlink(path, &buffer, buffer.count)
        guard n >= 0 else { return .failed(errno) }
        return .bytes(buffer.prefix(n).map { UInt8(bitPattern: $0) })
    }

    static func list(_ path: String) -> Outcome {
        guard let dir = opendir(path) else { return .failed(errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = Glibc.readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            names.append(name)
        }
        return .names(names.sorted())
    }

    static func listxattr(_ path: String, size: Int) -> Outcome {
        var buffer = [CChar](repeating: 0, count: max(size, 1))
        let n = cairn_llistxattr(path, &buffer, size)
        guard n >= 0 else { return .failed(errno) }
        if size == 0 { return .length(n) }
        // listxattr's order is unspecified (tmpfs returns its own); compare as sorted sets.
        let names = buffer.prefix(n).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return .names(names.sorted())
    }

    static func getxattr(_ path: String, _ name: String, size: Int) -> Outcome {
        var buffer = [UInt8](repeating: 0, count: max(size, 1))
        let n = cairn_lgetxattr(path, name, &buffer, size)
        guard n >= 0 else { return .failed(errno) }
        if size == 0 { return .length(n) }
        return .bytes(Array(buffer.prefix(n)))
    }
}
