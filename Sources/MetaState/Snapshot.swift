import CairnCore

/// Snapshots: the whole namespace in one deterministic byte string (everything sorted, no
/// dictionary order), followed by its SHA-256 so that a damaged snapshot is refused whole.
/// Restoring re-checks every invariant a valid state keeps, so even a well-checksummed
/// snapshot from a buggy writer cannot install a state the operations would crash on.
extension Namespace {
    /// Version 2 added the chunkserver registry after the sessions.
    static let snapshotMagic = Array("CAIRNMS2".utf8)

    func snapshot(appliedIndex: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.bytes.append(contentsOf: Self.snapshotMagic)
        w.varint(appliedIndex)
        w.varint(nextInode)
        w.varint(nextSession)
        w.varint(inodes.count)
        for number in inodes.keys.sorted() {
            let r = inodes[number]!
            w.varint(number)
            w.byte(r.type.rawValue)
            w.varint(r.mode)
            w.varint(r.uid)
            w.varint(r.gid)
            w.varint(r.nlink)
            w.varint(r.size)
            w.timestamp(r.atime)
            w.timestamp(r.mtime)
            w.timestamp(r.ctime)
            w.varint(r.rdev)
            w.data(r.target)
            w.varint(r.openCount)
            w.varint(r.xattrs.count)
            for name in r.xattrs.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                w.data(name)
                w.data(r.xattrs[name]!)
            }
            w.varint(r.extents.count)
            for e in r.extents { w.extent(e) }
            if let dir = r.directory {
                w.varint(dir.parent)
                w.varint(dir.nextCookie)
                w.varint(dir.order.count)
                for item in dir.order {
                    w.varint(item.cookie)
                    w.data(item.name)
                    w.varint(dir.entries[item.name]!.inode)
                }
            }
        }
        w.varint(sessions.count)
        for id in sessions.keys.sorted() {
            let s = sessions[id]!
            w.varint(id)
            w.timestamp(s.lastHeartbeat)
            w.varint(s.ttlNanoseconds)
            w.varint(s.nextHandle)
            w.varint(s.forgottenThrough)
            w.varint(s.handles.count)
            for h in s.handles.keys.sorted() {
                w.varint(h)
                w.varint(s.handles[h]!.inode)
                w.varint(s.handles[h]!.flags.rawValue)
            }
            w.varint(s.replies.count)
            for seq in s.replies.keys.sorted() {
                w.varint(seq)
                w.data(s.replies[seq]!)
            }
        }
        encodeRegistry(&w)
        let digest = SHA256.hash(w.bytes)
        w.bytes.append(contentsOf: digest.bytes)
        return w.bytes
    }

    static func restore(_ bytes: [UInt8], limits: MetaLimits) throws(CairnError) -> (Namespace, UInt64) {
        guard bytes.count >= snapshotMagic.count + ChunkID.byteCount,
              Array(bytes.prefix(snapshotMagic.count)) == snapshotMagic else {
            throw CairnError(.corrupt, "not a metadata snapshot")
        }
        let body = Array(bytes.dropLast(ChunkID.byteCount))
        guard SHA256.hash(body).bytes == Array(bytes.suffix(ChunkID.byteCount)) else {
            throw CairnError(.corrupt, "metadata snapshot checksum mismatch")
        }
        do {
            return try decodeSnapshot(body, limits: limits)
        } catch let error as FileSystemError {
            throw CairnError(.corrupt, "metadata snapshot malformed", cause: error)
        } catch let error as SnapshotInvalid {
            throw CairnError(.corrupt, "metadata snapshot inconsistent: \(error.reason)")
        } catch {
            throw CairnError(.internal, "unexpected error restoring a snapshot", cause: error)
        }
    }

    struct SnapshotInvalid: Error { var reason: String }

    private static func decodeSnapshot(_ body: [UInt8], limits: MetaLimits) throws -> (Namespace, UInt64) {
        func check(_ ok: Bool, _ reason: String) throws {
            if !ok { throw SnapshotInvalid(reason: reason) }
        }
        var r = ByteReader(body)
        r.offset = snapshotMagic.count
        var ns = Namespace(limits: limits, empty: ())
        let appliedIndex = try r.varint()
        ns.nextInode = try r.varint()
        ns.nextSession = try r.varint()
        let inodeCount = try r.count(itemBytesMin: 16)
        try check(inodeCount <= limits.inodesMax, "more inodes than inodesMax")
        var previous: InodeNumber = 0
        for _ in 0..<inodeCount {
            let number = try r.varint()
            try check(number > previous && number < ns.nextInode, "inode numbers out of order")
            previous = number
            let type = try r.fileType()
            var rec = InodeRecord(type: type, mode: try r.uint32(), uid: try r.uint32(), gid: try r.uint32(), nlink: try r.uint32(),
                                  size: try r.varint(), atime: try r.timestamp(), mtime: try r.timestamp(), ctime: try r.timestamp(),
                                  rdev: try r.varint())
            try check(rec.mode & ~ModeBits.all == 0, "mode has type bits")
            rec.target = try r.data()
            try check(type == .symlink ? !rec.target.isEmpty && rec.target.count <= limits.symlinkTargetBytesMax : rec.target.isEmpty,
                      "symlink target")
            rec.openCount = Int(try r.uint32())
            let xattrCount = try r.count(itemBytesMin: 2)
            var lastName: [UInt8]?
            for _ in 0..<xattrCount {
                let name = try r.data(), value = try r.data()
                try check(lastName.map { $0.lexicographicallyPrecedes(name) } ?? true, "xattrs out of order")
                try check(!name.isEmpty && name.count <= limits.xattrNameBytesMax && value.count <= limits.xattrValueBytesMax, "xattr bounds")
                lastName = name
                rec.xattrs[name] = value
            }
            try check(rec.xattrBytes <= limits.xattrBytesPerInodeMax, "xattr bytes per inode")
            let extentCount = try r.count(itemBytesMin: 3 + ChunkID.byteCount)
            try check(extentCount <= limits.extentsPerFileMax && (extentCount == 0 || type == .regular), "extents")
            for _ in 0..<extentCount { rec.extents.append(try r.extent()) }
            try check(Manifest.isWellFormed(rec.extents, size: rec.size), "manifest not sorted, overlapping or past the size")
            if type == .directory {
                var dir = DirectoryRecord(parent: try r.varint())
                dir.nextCookie = try r.varint()
                let entryCount = try r.count(itemBytesMin: 3)
                try check(entryCount <= limits.directoryEntriesMax, "directory entries")
                var lastCookie: UInt64 = 2
                for _ in 0..<entryCount {
                    let cookie = try r.varint(), name = try r.data(), child = try r.varint()
                    try check(cookie > lastCookie && cookie < dir.nextCookie, "cookies out of order")
                    lastCookie = cookie
                    try check(!name.isEmpty && name.count <= limits.nameBytesMax && !name.contains(0)
                              && !name.contains(UInt8(ascii: "/")) && name != dot && name != dotDot, "entry name")
                    try check(dir.entries[name] == nil, "duplicate entry name")
                    dir.entries[name] = DirectoryRecord.Entry(inode: child, cookie: cookie)
                    dir.order.append(DirectoryRecord.Cookied(cookie: cookie, name: name))
                }
                rec.directory = dir
            }
            ns.inodes[number] = rec
        }
        let sessionCount = try r.count(itemBytesMin: 7)
        try check(sessionCount <= limits.sessionsMax, "sessions")
        var previousSession: SessionID = 0
        var handlesPerInode: [InodeNumber: Int] = [:]
        for _ in 0..<sessionCount {
            let id = try r.varint()
            try check(id > previousSession && id < ns.nextSession, "session ids out of order")
            previousSession = id
            var s = SessionRecord(lastHeartbeat: try r.timestamp(), ttlNanoseconds: try r.varint())
            try check(s.ttlNanoseconds > 0, "session ttl")
            s.nextHandle = try r.varint()
            s.forgottenThrough = try r.varint()
            let handleCount = try r.count(itemBytesMin: 3)
            try check(handleCount <= limits.handlesPerSessionMax, "handles per session")
            var previousHandle: HandleID = 0
            for _ in 0..<handleCount {
                let h = try r.varint(), inode = try r.varint(), flags = OpenFlags(rawValue: try r.uint32())
                try check(h > previousHandle && h < s.nextHandle, "handle ids out of order")
                previousHandle = h
                try check(ns.inodes[inode] != nil, "handle on a missing inode")
                try check(flags.subtracting([.read, .write]).isEmpty, "handle flags")
                s.handles[h] = SessionRecord.Handle(inode: inode, flags: flags)
                handlesPerInode[inode, default: 0] += 1
            }
            let replyCount = try r.count(itemBytesMin: 2)
            try check(replyCount <= limits.dedupRepliesPerSessionMax, "remembered replies")
            var previousSequence: UInt64 = 0
            for _ in 0..<replyCount {
                let seq = try r.varint(), reply = try r.data()
                try check(seq > previousSequence && seq > s.forgottenThrough, "reply sequences out of order")
                previousSequence = seq
                _ = try MetaReply(decoding: reply)
                s.replies[seq] = reply
            }
            ns.sessions[id] = s
        }
        ns.registry = try decodeRegistry(&r, limits: limits)
        try check(r.atEnd, "trailing bytes")

        // Cross-checks: the tree, the link counts, the open counts, the chunk references.
        try check(ns.inodes[rootInode]?.type == .directory && ns.inodes[rootInode]!.directory!.parent == rootInode, "root")
        var links: [InodeNumber: UInt32] = [:]
        var subdirectories: [InodeNumber: UInt32] = [:]
        for (number, rec) in ns.inodes {
            guard let dir = rec.directory else { continue }
            for entry in dir.entries.values {
                guard let child = ns.inodes[entry.inode] else { throw SnapshotInvalid(reason: "entry to a missing inode") }
                try check(entry.inode != rootInode, "entry to the root")
                links[entry.inode, default: 0] += 1
                if child.type == .directory {
                    try check(child.directory!.parent == number, "directory parent mismatch")
                    subdirectories[number, default: 0] += 1
                }
            }
        }
        var stack: [InodeNumber] = [rootInode]
        var seen: Set<InodeNumber> = [rootInode]
        while let dir = stack.popLast() {
            for entry in ns.inodes[dir]!.directory!.entries.values where ns.inodes[entry.inode]!.type == .directory {
                try check(seen.insert(entry.inode).inserted, "directory reached twice")
                stack.append(entry.inode)
            }
        }
        for (number, rec) in ns.inodes {
            try check(rec.openCount == handlesPerInode[number] ?? 0, "open count mismatch")
            if rec.type == .directory {
                let live = number == rootInode || links[number] != nil
                try check(links[number] ?? 0 <= 1, "directory linked twice")
                try check(rec.nlink == (live ? 2 + (subdirectories[number] ?? 0) : 0), "directory link count")
                try check(live == seen.contains(number), "directory not reachable from the root")
                try check(live || rec.openCount > 0, "removed directory kept without a handle")
            } else {
                try check(rec.nlink == links[number] ?? 0, "link count mismatch")
                try check(rec.nlink > 0 || rec.openCount > 0, "orphan without a handle")
            }
            for e in rec.extents { ns.chunkReferences[e.chunkID, default: 0] += 1 }
        }
        return (ns, appliedIndex)
    }
}
