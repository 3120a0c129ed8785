import CCairnLinux
import CairnCore
import CairnTestSupport
import FuseKernel
import FusePassthrough
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The same script of system calls on a passthrough mount and on a plain directory: their
/// transcripts (results and errnos, no inode numbers or times) must be equal.
@Suite(.enabled(if: fuseAvailable, fuseUnavailableReason))
struct PassthroughDifferentialTests {
    @Test func scriptGivesTheSameTranscriptThroughTheMountAsOnAPlainDirectory() async throws {
        let plain = TestDirectory("fuse-plain")
        let plainPath = plain.path.string
        let expected = try await offPool { Transcript.run(in: plainPath) }
        try await withPassthroughMount { source, mountpoint, _ in
            let got = try await offPool { Transcript.run(in: mountpoint) }
            for (index, line) in expected.enumerated() where index < got.count && got[index] != line {
                Issue.record("line \(index): mount says '\(got[index])', plain directory says '\(line)'")
            }
            #expect(got.count == expected.count)
            // What the mount wrote is in the source, byte for byte.
            let viaSource = try testFileBytes(source + "/big")
            let viaMount = try await offPool { try testFileBytes(mountpoint + "/big") }
            #expect(viaSource == viaMount)
            #expect(viaSource.count == 5000)
            #expect(try FileSystemCalls.directoryEntries(FilePath(source + "/many")).count == 150)
        }
    }

    /// With `negativeTimeout`, the kernel answers later lookups of a missing name itself: a
    /// file that appears behind the mount's back (another client's create) stays missing here
    /// until the timeout, while the mount's own create of such a name is seen at once.
    @Test(arguments: [0.0, 60.0]) func aMissingNameIsRememberedForTheNegativeTimeout(seconds: Double) async throws {
        var options = FuseMount.Options()
        options.negativeTimeout = seconds
        try await withPassthroughMount(options) { source, mountpoint, _ in
            let results = try await offPool { () -> [Int32] in
                func statErrno(_ path: String) -> Int32 {
                    var st = stat()
                    return stat(path, &st) == 0 ? 0 : errno
                }
                let before = statErrno(mountpoint + "/later")
                close(open(source + "/later", O_CREAT | O_WRONLY, 0o644))
                let afterOutsideCreate = statErrno(mountpoint + "/later")
                let mineBefore = statErrno(mountpoint + "/mine")
                let created = open(mountpoint + "/mine", O_CREAT | O_EXCL | O_WRONLY, 0o644)
                let createErrno = created < 0 ? errno : 0
                close(created)
                // O_CREAT without O_EXCL on a remembered-missing name goes straight to CREATE: the
                // file system opens the file that appeared meanwhile (keeping its bytes), no EEXIST.
                let appearedBefore = statErrno(mountpoint + "/appeared")
                let outside = open(source + "/appeared", O_CREAT | O_WRONLY, 0o644)
                _ = write(outside, "abc", 3)
                close(outside)
                let opened = open(mountpoint + "/appeared", O_CREAT | O_WRONLY, 0o644)
                let openErrno = opened < 0 ? errno : 0
                close(opened)
                var appeared = stat()
                let sizeAfter = stat(mountpoint + "/appeared", &appeared) == 0 ? Int32(appeared.st_size) : -1
                return [before, afterOutsideCreate, mineBefore, createErrno, statErrno(mountpoint + "/mine"), statErrno(source + "/mine"),
                        appearedBefore, openErrno, sizeAfter]
            }
            #expect(results == [ENOENT, seconds > 0 ? ENOENT : 0, ENOENT, 0, 0, 0, ENOENT, 0, 3])
        }
    }

    @Test func aMissingFileIsENOENTAndStatMatchesTheSource() async throws {
        try await withPassthroughMount { source, mountpoint, _ in
            let (openErrno, sizes) = try await offPool { () -> (Int32, [Int]) in
                let fd = open(mountpoint + "/absent", O_RDONLY)
                let error = fd < 0 ? errno : 0
                let out = open(mountpoint + "/f", O_CREAT | O_WRONLY, 0o640)
                _ = write(out, "12345", 5)
                close(out)
                var viaMount = stat()
                var viaSource = stat()
                stat(mountpoint + "/f", &viaMount)
                stat(source + "/f", &viaSource)
                return (error, [Int(viaMount.st_size), Int(viaSource.st_size), Int(viaMount.st_ino), Int(viaSource.st_ino),
                                Int(viaMount.st_mode), Int(viaSource.st_mode)])
            }
            #expect(openErrno == ENOENT)
            #expect(sizes[0] == 5 && sizes[1] == 5)
            #expect(sizes[2] == sizes[3], "st_ino shows the source's inode")
            #expect(sizes[4] == sizes[5])
        }
    }
}

/// The script: every line is an operation and what it returned.
enum Transcript {
    static func run(in root: String) -> [String] {
        var lines: [String] = []
        func record(_ what: String, _ result: Int) {
            lines.append(result < 0 ? "\(what): \(errnoName(errno))" : "\(what): ok \(result)")
        }
        func path(_ name: String) -> String { root + "/" + name }

        // Create, write, read back, stat.
        let data = testBytes(count: 300_000, seed: 7)
        var fd = open(path("big"), O_CREAT | O_EXCL | O_RDWR, 0o644)
        record("create big", fd < 0 ? -1 : 0)
        var written = 0
        while written < data.count {
            let n = data.withUnsafeBytes { write(fd, $0.baseAddress! + written, min(65536 * 3, data.count - written)) }
            if n <= 0 { break }
            written += n
        }
        record("write big", written)
        record("fsync big", Int(fsync(fd)))
        close(fd)
        record("create big again with O_EXCL", Int(open(path("big"), O_CREAT | O_EXCL | O_RDWR, 0o644)))
        var st = stat()
        record("stat big size", stat(path("big"), &st) == 0 ? Int(st.st_size) : -1)
        lines.append("big mode \(String(st.st_mode, radix: 8)) nlink \(st.st_nlink)")
        fd = open(path("big"), O_RDONLY)
        var back = [UInt8](repeating: 0, count: data.count + 10)
        var read = 0
        while true {
            let n = back.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + read, $0.count - read, off_t(read)) }
            if n <= 0 { break }
            read += n
        }
        close(fd)
        lines.append("read back \(read) bytes, equal: \(Array(back[..<read]) == data)")

        // Truncate down and up: the tail reads as zeros.
        record("truncate big 1000", Int(truncate(path("big"), 1000)))
        record("truncate big 5000", Int(truncate(path("big"), 5000)))
        record("stat big size", stat(path("big"), &st) == 0 ? Int(st.st_size) : -1)
        fd = open(path("big"), O_RDONLY)
        var tail = [UInt8](repeating: 1, count: 4000)
        let tailCount = tail.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, 4000, 1000) }
        close(fd)
        lines.append("tail \(tailCount) bytes all zero: \(tail.allSatisfy { $0 == 0 })")

        // A directory of 150 entries: readdir pages through it.
        record("mkdir many", Int(mkdir(path("many"), 0o755)))
        record("mkdir many again", Int(mkdir(path("many"), 0o755)))
        for i in 0..<150 {
            let f = open(path("many/entry-with-a-longish-name-\(i)"), O_CREAT | O_WRONLY, 0o600)
            if f >= 0 { close(f) }
        }
        lines.append("many lists: \(listing(path("many")))")
        record("rmdir many (not empty)", Int(rmdir(path("many"))))

        // Rename, including RENAME_NOREPLACE and RENAME_EXCHANGE.
        for name in ["r1", "r2"] {
            let f = open(path(name), O_CREAT | O_WRONLY, 0o644)
            _ = write(f, name, 2)
            close(f)
        }
        record("rename r1 -> r2 noreplace", Int(cairn_renameat2(AT_FDCWD, path("r1"), AT_FDCWD, path("r2"), 1)))
        record("rename r1 -> r2 exchange", Int(cairn_renameat2(AT_FDCWD, path("r1"), AT_FDCWD, path("r2"), 2)))
        lines.append("r2 holds \(contents(path("r2")))")
        record("rename r1 -> r3 noreplace", Int(cairn_renameat2(AT_FDCWD, path("r1"), AT_FDCWD, path("r3"), 1)))
        record("rename r3 -> r2 (replaces)", Int(rename(path("r3"), path("r2"))))
        lines.append("r2 holds \(contents(path("r2")))")
        record("rename absent -> x", Int(rename(path("absent"), path("x"))))

        // Unlink, then the name is gone.
        record("unlink r2", Int(unlink(path("r2"))))
        record("stat r2", Int(stat(path("r2"), &st)))
        record("unlink r2 again", Int(unlink(path("r2"))))
        record("unlink a directory", Int(unlink(path("many"))))

        // Hard link: both names, nlink 2.
        record("link big -> hard", Int(link(path("big"), path("hard"))))
        record("stat hard nlink", stat(path("hard"), &st) == 0 ? Int(st.st_nlink) : -1)

        // Symbolic links.
        record("symlink big <- sym", Int(symlink("big", path("sym"))))
        var target = [CChar](repeating: 0, count: 256)
        let targetCount = readlink(path("sym"), &target, 255)
        lines.append("readlink sym: \(targetCount) '\(String(cString: Array(target[..<max(targetCount, 0)]) + [0]))'")
        record("lstat sym is a link", lstat(path("sym"), &st) == 0 ? Int(st.st_mode & S_IFMT == S_IFLNK ? 1 : 0) : -1)
        record("stat through sym size", stat(path("sym"), &st) == 0 ? Int(st.st_size) : -1)
        record("readlink of a file", readlink(path("big"), &target, 255))

        // Extended attributes: set, size probe, ERANGE, get, list, remove, ENODATA.
        record("setxattr user.color", Int(cairn_lsetxattr(path("big"), "user.color", "purple", 6, 0)))
        record("setxattr user.color create-only", Int(cairn_lsetxattr(path("big"), "user.color", "red", 3, 1)))
        record("setxattr user.size replace-only", Int(cairn_lsetxattr(path("big"), "user.size", "9", 1, 2)))
        record("setxattr user.size", Int(cairn_lsetxattr(path("big"), "user.size", "", 0, 0)))
        record("getxattr user.color probe", cairn_lgetxattr(path("big"), "user.color", nil, 0))
        var value = [UInt8](repeating: 0, count: 64)
        record("getxattr user.color into 3 bytes", cairn_lgetxattr(path("big"), "user.color", &value, 3))
        let valueCount = cairn_lgetxattr(path("big"), "user.color", &value, 64)
        lines.append("getxattr user.color: \(valueCount) '\(String(decoding: value[..<max(valueCount, 0)], as: UTF8.self))'")
        record("getxattr user.size (empty value)", cairn_lgetxattr(path("big"), "user.size", &value, 64))
        let listProbe = cairn_llistxattr(path("big"), nil, 0)
        record("listxattr probe", listProbe)
        var list = [CChar](repeating: 0, count: 256)
        record("listxattr into 4 bytes", cairn_llistxattr(path("big"), &list, 4))
        let listCount = cairn_llistxattr(path("big"), &list, 256)
        let names = listCount > 0 ? list[..<listCount].split(separator: 0).map { String(cString: Array($0) + [0]) }.sorted() : []
        lines.append("listxattr: \(names)")
        record("removexattr user.color", Int(cairn_lremovexattr(path("big"), "user.color")))
        record("getxattr user.color after remove", cairn_lgetxattr(path("big"), "user.color", &value, 64))
        record("removexattr user.color again", Int(cairn_lremovexattr(path("big"), "user.color")))

        // chmod, and the mode shows.
        record("chmod big 600", Int(chmod(path("big"), 0o600)))
        record("stat big mode", stat(path("big"), &st) == 0 ? Int(st.st_mode & 0o7777) : -1)

        // Missing names.
        record("open absent", Int(open(path("absent"), O_RDONLY)))
        record("stat absent/inside", Int(stat(path("absent/inside"), &st)))
        record("rmdir absent", Int(rmdir(path("absent"))))

        // statfs answers (the numbers differ in time, the name limit does not).
        var capacity: UInt64 = 0
        var available: UInt64 = 0
        record("statvfs", Int(cairn_statvfs(root, &capacity, &available)))
        lines.append("statvfs capacity > 0: \(capacity > 0), available <= capacity: \(available <= capacity)")
        lines.append("top level: \(listing(root))")
        return lines
    }

    /// Sorted names of a directory (without . and ..), read with readdir(3) through the kernel.
    static func listing(_ path: String) -> String {
        guard let dir = opendir(path) else { return errnoName(errno) }
        defer { closedir(dir) }
        var names: [String] = []
        var dots = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { dots += 1 } else { names.append(name) }
        }
        names.sort()
        return "\(names.count) names + \(dots) dots, unique \(Set(names).count): \(names.count > 20 ? "\(names.prefix(3))…\(names.suffix(2))" : "\(names)")"
    }

    static func contents(_ path: String) -> String {
        (try? testFileBytes(path)).map { String(decoding: $0, as: UTF8.self) } ?? errnoName(errno)
    }
}
