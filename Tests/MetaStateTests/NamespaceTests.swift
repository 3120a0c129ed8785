import CairnCore
import CairnTestSupport
import Testing
@testable import MetaState

/// Unit tests of single operations: their edge cases and errnos, as Linux gives them.
struct NamespaceTests {
    static let t = Timestamp(seconds: 100, nanoseconds: 7)
    static let alice = Credentials(uid: 1000, gid: 1000, groups: [1000, 2000])
    static let bob = Credentials(uid: 1001, gid: 1001, groups: [1001])
    static let chunkA = SHA256.hash(Array("a".utf8))
    static let chunkB = SHA256.hash(Array("b".utf8))

    func n(_ s: String) -> [UInt8] { Array(s.utf8) }

    func errno<T>(_ r: Result<T, FileSystemError>) -> FileSystemError? {
        if case .failure(let e) = r { return e }
        return nil
    }

    /// A namespace with one session and an open directory "/pub" (0777).
    func fresh() -> (Namespace, SessionID, InodeNumber) {
        var ns = Namespace(now: Self.t)
        let session = try! ns.openSession(ttlNanoseconds: 1_000_000_000, now: Self.t).get()
        let pub = try! ns.mkdir(1, n("pub"), mode: 0o777, .root, now: Self.t).get().inode
        return (ns, session, pub)
    }

    func file(_ ns: inout Namespace, _ parent: InodeNumber, _ name: String, _ cred: Credentials, session: SessionID,
              mode: UInt32 = 0o644) -> (InodeNumber, HandleID) {
        let opened = try! ns.create(parent, n(name), flags: [.create, .exclusive, .write], mode: mode, session: session, cred, now: Self.t).get().0
        return (opened.attributes.inode, opened.handle)
    }

    @Test func rootIsInodeOneOwnedByRoot() throws {
        let ns = Namespace(now: Self.t)
        let root = try ns.getattr(1).get()
        #expect(root.type == .directory && root.mode == 0o755 && root.uid == 0 && root.gid == 0 && root.nlink == 2)
        #expect(root.fullMode == 0o40755)
        #expect(errno(ns.getattr(2)) == .ENOENT)
    }

    @Test func nameRulesMatchTheKernel() {
        var (ns, _, _) = fresh()
        #expect(errno(ns.mkdir(1, n(""), mode: 0o755, .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.mkdir(1, n("."), mode: 0o755, .root, now: Self.t)) == .EEXIST)
        #expect(errno(ns.mkdir(1, n(".."), mode: 0o755, .root, now: Self.t)) == .EEXIST)
        #expect(errno(ns.mkdir(1, n("a/b"), mode: 0o755, .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.mkdir(1, [0x61, 0], mode: 0o755, .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.mkdir(1, n(String(repeating: "x", count: 256)), mode: 0o755, .root, now: Self.t)) == .ENAMETOOLONG)
        #expect(errno(ns.mkdir(1, n(String(repeating: "x", count: 255)), mode: 0o755, .root, now: Self.t)) == nil)
        #expect(errno(ns.unlink(1, n("."), .root, now: Self.t)) == .EISDIR)
        #expect(errno(ns.rmdir(1, n("."), .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.rmdir(1, n(".."), .root, now: Self.t)) == .ENOTEMPTY)
        #expect(errno(ns.rename(1, n("."), 1, n("x"), flags: [], .root, now: Self.t)) == .EBUSY)
        #expect(errno(ns.rename(1, n("pub"), 1, n(".."), flags: .noReplace, .root, now: Self.t)) == .EEXIST)
        #expect(errno(ns.symlink(1, n("s"), target: [], .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.symlink(1, n("s"), target: Array(repeating: 0x61, count: 4096), .root, now: Self.t)) == .ENAMETOOLONG)
        #expect(try! ns.lookup(1, n(".."), .root).get().inode == 1)
    }

    @Test func inodeNumbersComeFromACounter() {
        var a = Namespace(now: Self.t), b = Namespace(now: Self.t)
        for ns in [0, 1] {
            for name in ["x", "y", "z"] {
                if ns == 0 { _ = a.mkdir(1, n(name), mode: 0o755, .root, now: Self.t) } else { _ = b.mkdir(1, n(name), mode: 0o755, .root, now: Self.t) }
            }
        }
        #expect(try! a.lookup(1, n("z"), .root).get().inode == 4)
        #expect(a == b)
        #expect(a.snapshot(appliedIndex: 0) == b.snapshot(appliedIndex: 0))
    }

    @Test func createExclusiveAndOpenRules() {
        var (ns, s, pub) = fresh()
        _ = file(&ns, pub, "f", Self.alice, session: s)
        #expect(errno(ns.create(pub, n("f"), flags: [.create, .exclusive, .write], mode: 0o644, session: s, Self.alice, now: Self.t)) == .EEXIST)
        #expect(errno(ns.create(1, n("pub"), flags: [.create, .read], mode: 0o644, session: s, .root, now: Self.t)) == .EISDIR)
        #expect(errno(ns.create(pub, n("missing"), flags: [.read], mode: 0, session: s, .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.create(pub, n("f"), flags: [.write], mode: 0, session: s, Self.bob, now: Self.t)) == .EACCES)
        #expect(errno(ns.create(pub, n("f"), flags: [.read], mode: 0, session: s, Self.bob, now: Self.t)) == nil)
        #expect(errno(ns.create(pub, n("f"), flags: [.read], mode: 0, session: 99, Self.bob, now: Self.t)) == .ESTALE)
        // A file created with mode 0 still opens for writing: the creator's open is not checked.
        #expect(errno(ns.create(pub, n("zero"), flags: [.create, .write], mode: 0, session: s, Self.bob, now: Self.t)) == nil)
    }

    @Test func renameRules() throws {
        var (ns, s, pub) = fresh()
        let d = try ns.mkdir(pub, n("d"), mode: 0o755, .root, now: Self.t).get().inode
        let sub = try ns.mkdir(d, n("sub"), mode: 0o755, .root, now: Self.t).get().inode
        let (f, _) = file(&ns, pub, "f", .root, session: s)
        #expect(errno(ns.rename(pub, n("d"), sub, n("x"), flags: [], .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.rename(pub, n("d"), d, n("x"), flags: [], .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.rename(pub, n("f"), d, n("sub"), flags: [], .root, now: Self.t)) == .EISDIR)
        #expect(errno(ns.rename(d, n("sub"), pub, n("f"), flags: [], .root, now: Self.t)) == .ENOTDIR)
        #expect(errno(ns.rename(pub, n("f"), pub, n("d"), flags: .noReplace, .root, now: Self.t)) == .EEXIST)
        #expect(errno(ns.rename(pub, n("f"), pub, n("none"), flags: .exchange, .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.rename(pub, n("f"), pub, n("g"), flags: [.exchange, .noReplace], .root, now: Self.t)) == .EINVAL)
        _ = file(&ns, sub, "inner", .root, session: s)
        let e = try ns.mkdir(pub, n("e"), mode: 0o755, .root, now: Self.t).get().inode
        #expect(errno(ns.rename(pub, n("e"), pub, n("d"), flags: [], .root, now: Self.t)) == .ENOTEMPTY)
        // Moving "e" over the empty "d/sub" replaces it; link counts follow.
        let linksBefore = try ns.getattr(d).get().nlink
        #expect(errno(ns.rename(pub, n("e"), d, n("x"), flags: [], .root, now: Self.t)) == nil)
        #expect(try ns.getattr(d).get().nlink == linksBefore + 1)
        #expect(try ns.lookup(d, n("x"), .root).get().inode == e)
        // Exchange a file and a directory across directories: both parents' link counts change.
        let pubLinks = try ns.getattr(pub).get().nlink, dLinks = try ns.getattr(d).get().nlink
        #expect(errno(ns.rename(pub, n("f"), d, n("x"), flags: .exchange, .root, now: Self.t)) == nil)
        #expect(try ns.lookup(pub, n("f"), .root).get().inode == e)
        #expect(try ns.lookup(d, n("x"), .root).get().inode == f)
        #expect(try ns.getattr(pub).get().nlink == pubLinks + 1 && ns.getattr(d).get().nlink == dLinks - 1)
        #expect(try ns.lookup(e, n(".."), .root).get().inode == pub)
        // Renaming one hard link onto another of the same inode does nothing.
        _ = try ns.link(f, d, n("y"), .root, now: Self.t).get()
        #expect(errno(ns.rename(d, n("x"), d, n("y"), flags: [], .root, now: Self.t)) == nil)
        #expect(try ns.getattr(f).get().nlink == 2)
        #expect(try ns.lookup(d, n("x"), .root).get().inode == f)
    }

    @Test func unlinkedOpenFileLivesUntilClose() throws {
        var (ns, s, pub) = fresh()
        let (f, h) = file(&ns, pub, "f", Self.alice, session: s)
        _ = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 10, chunkID: Self.chunkA, chunkOffset: 0)],
                               Self.alice, now: Self.t).get()
        #expect(try ns.unlink(pub, n("f"), Self.alice, now: Self.t).get() == [])
        #expect(try ns.getattr(f).get().nlink == 0)
        #expect(try ns.extents(f).get().count == 1)
        #expect(ns.orphans == [f])
        #expect(try ns.close(session: s, handle: h).get() == [Self.chunkA])
        #expect(errno(ns.getattr(f)) == .ENOENT)
        #expect(errno(ns.close(session: s, handle: h)) == .EBADF)
        #expect(ns.referencedChunks.isEmpty)
    }

    @Test func expiredSessionReleasesItsOrphans() throws {
        var (ns, s, pub) = fresh()
        let (_, h) = file(&ns, pub, "f", .root, session: s)
        _ = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 5, chunkID: Self.chunkB, chunkOffset: 0)],
                               .root, now: Self.t).get()
        _ = try ns.unlink(pub, n("f"), .root, now: Self.t).get()
        #expect(ns.expireSessions(now: Timestamp(seconds: 100, nanoseconds: 500)).sessions.isEmpty)
        let expired = ns.expireSessions(now: Timestamp(seconds: 102, nanoseconds: 0))
        #expect(expired.sessions == [s] && expired.released == [Self.chunkB])
        #expect(ns.orphans.isEmpty && ns.sessionIDs.isEmpty)
    }

    @Test func manifestCutsAndTrimsExtents() throws {
        var (ns, s, pub) = fresh()
        let (f, h) = file(&ns, pub, "f", .root, session: s)
        _ = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 100, chunkID: Self.chunkA, chunkOffset: 0)],
                               .root, now: Self.t).get()
        let (attrs, released) = try ns.commitWrite(session: s, handle: h,
            extents: [Extent(fileOffset: 40, length: 20, chunkID: Self.chunkB, chunkOffset: 5)], .root, now: Self.t).get()
        #expect(attrs.size == 100 && released.isEmpty)
        #expect(try ns.extents(f).get() == [
            Extent(fileOffset: 0, length: 40, chunkID: Self.chunkA, chunkOffset: 0),
            Extent(fileOffset: 40, length: 20, chunkID: Self.chunkB, chunkOffset: 5),
            Extent(fileOffset: 60, length: 40, chunkID: Self.chunkA, chunkOffset: 60),
        ])
        #expect(ns.chunkReferences[Self.chunkA] == 2)
        // Truncate into the middle extent: the tail goes, chunk A loses one reference.
        _ = try ns.setattr(f, AttributeChanges(size: 50), .root, now: Self.t).get()
        #expect(try ns.extents(f).get() == [
            Extent(fileOffset: 0, length: 40, chunkID: Self.chunkA, chunkOffset: 0),
            Extent(fileOffset: 40, length: 10, chunkID: Self.chunkB, chunkOffset: 5),
        ])
        #expect(ns.chunkReferences[Self.chunkA] == 1)
        // Extending leaves a hole; overwriting everything releases both chunks.
        _ = try ns.setattr(f, AttributeChanges(size: 1000), .root, now: Self.t).get()
        #expect(try ns.getattr(f).get().size == 1000 && ns.extents(f).get().count == 2)
        let c = SHA256.hash(Array("c".utf8))
        let (_, gone) = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 2000, chunkID: c, chunkOffset: 0)],
                                           .root, now: Self.t).get()
        #expect(Set(gone) == [Self.chunkA, Self.chunkB])
        #expect(errno(ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 0, chunkID: c, chunkOffset: 0)],
                                     .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 1, chunkID: c, chunkOffset: 4 << 20)],
                                     .root, now: Self.t)) == .EINVAL)
        #expect(errno(ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: UInt64(Int64.max), length: 1, chunkID: c, chunkOffset: 0)],
                                     .root, now: Self.t)) == .EFBIG)
    }

    @Test func readdirCookiesSurviveInsertsAndDeletes() throws {
        var (ns, _, pub) = fresh()
        for i in 0..<10 { _ = ns.mkdir(pub, n("d\(i)"), mode: 0o755, .root, now: Self.t) }
        let first = try ns.readdir(pub, after: 0, count: 5, .root).get()
        #expect(first.entries.map { String(decoding: $0.name, as: UTF8.self) } == [".", "..", "d0", "d1", "d2"] && !first.end)
        _ = try ns.rmdir(pub, n("d3"), .root, now: Self.t).get()
        _ = try ns.rmdir(pub, n("d1"), .root, now: Self.t).get()
        _ = try ns.mkdir(pub, n("new"), mode: 0o755, .root, now: Self.t).get()
        let rest = try ns.readdir(pub, after: first.entries.last!.cookie, count: 100, .root).get()
        #expect(rest.entries.map { String(decoding: $0.name, as: UTF8.self) } == ["d4", "d5", "d6", "d7", "d8", "d9", "new"] && rest.end)
        #expect(errno(ns.readdir(pub, after: 0, count: 1, Credentials(uid: 5, gid: 5))) == nil)
        _ = try ns.setattr(pub, AttributeChanges(mode: 0o700), .root, now: Self.t).get()
        #expect(errno(ns.readdir(pub, after: 0, count: 1, Credentials(uid: 5, gid: 5))) == .EACCES)
    }

    @Test func xattrFlagsAndBounds() throws {
        var (ns, s, pub) = fresh()
        let (f, _) = file(&ns, pub, "f", Self.alice, session: s)
        #expect(errno(ns.setxattr(f, n("user.a"), [1, 2, 3], flags: .replace, Self.alice, now: Self.t)) == .ENODATA)
        #expect(errno(ns.setxattr(f, n("user.a"), [1, 2, 3], flags: .create, Self.alice, now: Self.t)) == nil)
        #expect(errno(ns.setxattr(f, n("user.a"), [1], flags: .create, Self.alice, now: Self.t)) == .EEXIST)
        #expect(errno(ns.getxattr(f, n("user.a"), sizeMax: 2, Self.alice)) == .ERANGE)
        #expect(try ns.getxattr(f, n("user.a"), sizeMax: 3, Self.alice).get() == [1, 2, 3])
        #expect(errno(ns.getxattr(f, n("user.b"), sizeMax: nil, Self.alice)) == .ENODATA)
        #expect(errno(ns.setxattr(f, n("user.big"), Array(repeating: 0, count: 65537), flags: [], Self.alice, now: Self.t)) == .E2BIG)
        #expect(errno(ns.setxattr(f, n(""), [], flags: [], Self.alice, now: Self.t)) == .ERANGE)
        #expect(errno(ns.setxattr(f, n("other.x"), [], flags: [], Self.alice, now: Self.t)) == .EOPNOTSUPP)
        // security.* is not stored: EOPNOTSUPP for everyone on every inode, which the mount
        // answers for security.capability itself (the kernel asks before every write).
        #expect(!Namespace.storesXattrNamespace(of: n("security.capability")))
        #expect(Namespace.storesXattrNamespace(of: n("user.a")) && Namespace.storesXattrNamespace(of: n("trusted.t")))
        for who in [Self.alice, Credentials.root, Credentials(uid: 5, gid: 5)] {
            for inode in [f, pub, Namespace.rootInode] {
                #expect(errno(ns.getxattr(inode, n("security.capability"), sizeMax: nil, who)) == .EOPNOTSUPP)
            }
            #expect(errno(ns.setxattr(f, n("security.capability"), [1], flags: [], who, now: Self.t)) == .EOPNOTSUPP)
        }
        #expect(errno(ns.setxattr(f, n("user."), [1], flags: [], Self.alice, now: Self.t)) == .EINVAL)
        #expect(errno(ns.setxattr(f, n("trusted.t"), [9], flags: [], Self.alice, now: Self.t)) == .EPERM)
        #expect(errno(ns.setxattr(f, n("trusted.t"), [9], flags: [], .root, now: Self.t)) == nil)
        #expect(try ns.listxattr(f, sizeMax: nil, Self.alice).get() == [n("user.a")])
        #expect(try ns.listxattr(f, sizeMax: nil, .root).get() == [n("trusted.t"), n("user.a")])
        #expect(errno(ns.listxattr(f, sizeMax: 3, .root)) == .ERANGE)
        #expect(errno(ns.setxattr(f, n("user.a"), [1], flags: [], Self.bob, now: Self.t)) == .EACCES)
        for i in 0..<3 { _ = ns.setxattr(f, n("user.v\(i)"), Array(repeating: 0, count: 65536), flags: [], Self.alice, now: Self.t) }
        #expect(errno(ns.setxattr(f, n("user.v3"), Array(repeating: 0, count: 65536), flags: [], Self.alice, now: Self.t)) == .ENOSPC)
        #expect(errno(ns.removexattr(f, n("user.zz"), Self.alice, now: Self.t)) == .ENODATA)
        #expect(errno(ns.removexattr(f, n("user.a"), Self.alice, now: Self.t)) == nil)
    }

    @Test func stickyDirectoriesProtectOthersEntries() throws {
        var (ns, s, _) = fresh()
        let tmp = try ns.mkdir(1, n("tmp"), mode: 0o1777, .root, now: Self.t).get().inode
        _ = file(&ns, tmp, "mine", Self.alice, session: s)
        #expect(errno(ns.unlink(tmp, n("mine"), Self.bob, now: Self.t)) == .EPERM)
        #expect(errno(ns.rename(tmp, n("mine"), tmp, n("x"), flags: [], Self.bob, now: Self.t)) == .EPERM)
        #expect(errno(ns.unlink(tmp, n("mine"), Self.alice, now: Self.t)) == nil)
    }

    @Test func setGIDDirectoriesPassTheirGroupOn() throws {
        var (ns, s, _) = fresh()
        // mkdir drops S_ISGID from the requested mode; chmod sets it.
        let shared = try ns.mkdir(1, n("shared"), mode: 0o2777, .root, now: Self.t).get().inode
        #expect(try ns.getattr(shared).get().mode == 0o777)
        _ = try ns.setattr(shared, AttributeChanges(mode: 0o2777, gid: 3000), .root, now: Self.t).get()
        #expect(try ns.getattr(shared).get().mode == 0o2777)
        let (f, _) = file(&ns, shared, "f", Self.alice, session: s, mode: 0o2755)
        let sub = try ns.mkdir(shared, n("sub"), mode: 0o755, Self.alice, now: Self.t).get()
        #expect(try ns.getattr(f).get().gid == 3000)
        // Alice is not in group 3000: S_ISGID is dropped from her group-executable file.
        #expect(try ns.getattr(f).get().mode == 0o755)
        #expect(sub.gid == 3000 && sub.mode == 0o2755)
    }

    @Test func ownershipAndModeRules() throws {
        var (ns, s, pub) = fresh()
        let (f, h) = file(&ns, pub, "f", Self.alice, session: s, mode: 0o755)
        #expect(errno(ns.setattr(f, AttributeChanges(mode: 0o777), Self.bob, now: Self.t)) == .EPERM)
        #expect(errno(ns.setattr(f, AttributeChanges(uid: 1001), Self.alice, now: Self.t)) == .EPERM)
        #expect(errno(ns.setattr(f, AttributeChanges(gid: 2000), Self.alice, now: Self.t)) == nil)
        #expect(errno(ns.setattr(f, AttributeChanges(gid: 4000), Self.alice, now: Self.t)) == .EPERM)
        // chmod g+s by the owner outside the file's group: S_ISGID is silently dropped.
        _ = try ns.setattr(f, AttributeChanges(gid: 4000), .root, now: Self.t).get()
        #expect(try ns.setattr(f, AttributeChanges(mode: 0o6755), Self.alice, now: Self.t).get().0.mode == 0o4755)
        // A write by someone other than root clears set-user-ID.
        _ = try ns.setattr(f, AttributeChanges(mode: 0o6777), .root, now: Self.t).get()
        _ = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 0, length: 1, chunkID: Self.chunkA, chunkOffset: 0)],
                               Self.alice, now: Self.t).get()
        #expect(try ns.getattr(f).get().mode == 0o0777)
        // chown by root clears set-user-ID on files, and set-group-ID when group-executable.
        _ = try ns.setattr(f, AttributeChanges(mode: 0o6777), .root, now: Self.t).get()
        #expect(try ns.setattr(f, AttributeChanges(uid: 1001), .root, now: Self.t).get().0.mode == 0o0777)
        // Times: explicit times for the owner only, "now" for anyone who may write.
        #expect(errno(ns.setattr(f, AttributeChanges(atime: .set(Self.t)), Self.alice, now: Self.t)) == .EPERM)
        #expect(errno(ns.setattr(f, AttributeChanges(atime: .now, mtime: .now), Self.alice, now: Self.t)) == nil)
        _ = try ns.setattr(f, AttributeChanges(mode: 0o755), .root, now: Self.t).get()
        #expect(errno(ns.setattr(f, AttributeChanges(atime: .now, mtime: .now), Self.alice, now: Self.t)) == .EACCES)
        #expect(errno(ns.setattr(f, AttributeChanges(size: 0), Self.alice, now: Self.t)) == .EACCES)
        #expect(errno(ns.setattr(pub, AttributeChanges(size: 0), .root, now: Self.t)) == .EISDIR)
    }

    @Test func symlinkLoopsGiveELOOP() throws {
        var (ns, _, pub) = fresh()
        _ = try ns.symlink(pub, n("a"), target: n("b"), .root, now: Self.t).get()
        _ = try ns.symlink(pub, n("b"), target: n("a"), .root, now: Self.t).get()
        _ = try ns.symlink(pub, n("up"), target: n("/pub"), .root, now: Self.t).get()
        #expect(errno(ns.resolve(n("pub/a"), .root, followLast: true)) == .ELOOP)
        #expect(errno(ns.resolve(n("pub/a"), .root, followLast: false)) == nil)
        #expect(try ns.resolve(n("/pub/up/up/up"), .root, followLast: true).get() == pub)
        #expect(try ns.readlink(ns.resolve(n("pub/a"), .root, followLast: false).get()).get() == n("b"))
        #expect(errno(ns.readlink(pub)) == .EINVAL)
    }

    @Test func hardLinkRules() throws {
        var (ns, s, pub) = fresh()
        let (f, _) = file(&ns, pub, "f", Self.alice, session: s, mode: 0o600)
        #expect(errno(ns.link(f, pub, n("g"), Self.bob, now: Self.t)) == .EPERM)
        #expect(errno(ns.link(pub, 1, n("dirlink"), .root, now: Self.t)) == .EPERM)
        #expect(errno(ns.link(f, pub, n("f"), Self.alice, now: Self.t)) == .EEXIST)
        #expect(try ns.link(f, pub, n("g"), Self.alice, now: Self.t).get().nlink == 2)
    }

    @Test func statisticsCountInodesBytesAndChunks() throws {
        var (ns, s, pub) = fresh()
        let (_, h) = file(&ns, pub, "f", .root, session: s)
        _ = try ns.commitWrite(session: s, handle: h, extents: [Extent(fileOffset: 100, length: 50, chunkID: Self.chunkA, chunkOffset: 0)],
                               .root, now: Self.t).get()
        let stats = ns.statistics()
        #expect(stats.inodesUsed == 3 && stats.fileBytes == 150 && stats.chunksReferenced == 1 && stats.nameBytesMax == 255)
        #expect(stats.inodesMax == UInt64(MetaLimits().inodesMax))
    }

    @Test func unknownInodesAndStaleSessionsGetClearErrors() {
        var (ns, s, _) = fresh()
        #expect(errno(ns.lookup(99, n("x"), .root)) == .ENOENT)
        #expect(errno(ns.mkdir(99, n("x"), mode: 0o755, .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.setattr(99, AttributeChanges(mode: 0o755), .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.link(99, 1, n("x"), .root, now: Self.t)) == .ENOENT)
        #expect(errno(ns.open(1, flags: [.read], session: s + 1, .root, now: Self.t)) == .ESTALE)
        #expect(errno(ns.commitWrite(session: s, handle: 42, extents: [], .root, now: Self.t)) == .EBADF)
        #expect(errno(ns.heartbeat(s + 1, now: Self.t)) == .ESTALE)
        #expect(errno(ns.mkdir(1, n("f"), mode: 0o755, .root, now: Self.t)) == nil)
        let f = try! ns.resolve(n("f"), .root, followLast: true).get()
        #expect(errno(ns.mkdir(f, n("x"), mode: 0, .root, now: Self.t)) == nil)
        let file = try! ns.create(1, n("plain"), flags: [.create, .write], mode: 0o644, session: s, .root, now: Self.t).get().0.attributes.inode
        #expect(errno(ns.mkdir(file, n("x"), mode: 0o755, .root, now: Self.t)) == .ENOTDIR)
    }

    @Test func limitsValidate() throws {
        try MetaLimits().validate()
        var bad = MetaLimits()
        bad.linksMax = 1
        #expect(throws: CairnError.self) { try bad.validate() }
    }

    @Test func boundsAreEnforced() throws {
        var limits = MetaLimits()
        limits.inodesMax = 3
        limits.handlesPerSessionMax = 1
        limits.sessionsMax = 1
        var ns = Namespace(limits: limits, now: Self.t)
        let s = try ns.openSession(ttlNanoseconds: 1, now: Self.t).get()
        #expect(errno(ns.openSession(ttlNanoseconds: 1, now: Self.t)) == .ENOSPC)
        _ = try ns.mkdir(1, n("a"), mode: 0o755, .root, now: Self.t).get()
        let (_, _) = try ns.create(1, n("f"), flags: [.create, .write], mode: 0o644, session: s, .root, now: Self.t).get()
        #expect(errno(ns.mkdir(1, n("b"), mode: 0o755, .root, now: Self.t)) == .ENOSPC)
        #expect(errno(ns.open(1, flags: [.read], session: s, .root, now: Self.t)) == .EMFILE)
    }

    @Test func linkCountsAreBounded() throws {
        var limits = MetaLimits()
        limits.linksMax = 3
        var ns = Namespace(limits: limits, now: Self.t)
        let s = try ns.openSession(ttlNanoseconds: 1, now: Self.t).get()
        _ = try ns.mkdir(1, n("a"), mode: 0o755, .root, now: Self.t).get()
        #expect(errno(ns.mkdir(1, n("b"), mode: 0o755, .root, now: Self.t)) == .EMLINK)
        let f = try ns.create(1, n("f"), flags: [.create, .write], mode: 0o644, session: s, .root, now: Self.t).get().0.attributes.inode
        _ = try ns.link(f, 1, n("g"), .root, now: Self.t).get()
        _ = try ns.link(f, 1, n("h"), .root, now: Self.t).get()
        #expect(errno(ns.link(f, 1, n("i"), .root, now: Self.t)) == .EMLINK)
        // Moving a directory into a parent at the bound is refused too.
        let a = try ns.lookup(1, n("a"), .root).get().inode
        _ = try ns.mkdir(a, n("x"), mode: 0o755, .root, now: Self.t).get()
        #expect(errno(ns.mkdir(a, n("y"), mode: 0o755, .root, now: Self.t)) == .EMLINK)
    }
}
