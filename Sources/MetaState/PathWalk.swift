/// Path resolution as path_resolution(7) describes it, over the namespace: search permission
/// on every directory walked, ENOTDIR for a non-directory in the middle, symlinks followed
/// (absolute targets restart at the root) up to `symlinksFollowedMax` before ELOOP.
///
/// The FUSE kernel walks paths itself and asks only for single lookups; this walker serves
/// tools that take paths (and lets the differential test drive the namespace with the same
/// paths it hands the kernel). Paths are relative to the root; a leading "/" is allowed.
extension Namespace {
    /// The inode `path` names. `followLast`: follow a symlink in the last component (stat vs lstat).
    public func resolve(_ path: [UInt8], _ cred: Credentials, followLast: Bool) -> Result<InodeNumber, FileSystemError> {
        attempt { () throws(FileSystemError) in
            let components = try split(path)
            var links = 0
            return try walk(components, from: Self.rootInode, cred, followLast: followLast, links: &links)
        }
    }

    /// The directory holding the last component of `path`, and that component (which may be
    /// "." or ".."; "/" alone gives the root and "."). Like link_path_walk, this checks search
    /// permission on that directory too, before the operation looks at the last component.
    public func resolveParent(_ path: [UInt8], _ cred: Credentials) -> Result<(InodeNumber, [UInt8]), FileSystemError> {
        attempt { () throws(FileSystemError) in
            var components = try split(path)
            guard let last = components.popLast() else { return (Self.rootInode, Self.dot) }
            var links = 0
            let parent = try walk(components, from: Self.rootInode, cred, followLast: true, links: &links)
            guard inodes[parent]!.type == .directory else { throw .ENOTDIR }
            guard permitted(inodes[parent]!, 1, cred) else { throw .EACCES }
            return (parent, last)
        }
    }

    func split(_ path: [UInt8]) throws(FileSystemError) -> [[UInt8]] {
        if path.isEmpty { throw .ENOENT }
        if path.count > limits.pathBytesMax { throw .ENAMETOOLONG }
        if path.contains(0) { throw .EINVAL }
        return path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
    }

    /// Walks `components` from `start`. Each symlink met (and the last one if `followLast`)
    /// is replaced by its target's components; `links` counts them across the whole walk.
    func walk(_ components: [[UInt8]], from start: InodeNumber, _ cred: Credentials, followLast: Bool,
              links: inout Int) throws(FileSystemError) -> InodeNumber {
        var current = start
        // A stack of what is left to walk, last component first; bounded because each symlink
        // expansion adds at most symlinkTargetBytesMax components and expansions are bounded.
        var pending = Array(components.reversed())
        while let name = pending.popLast() {
            let record = inodes[current]!
            guard record.type == .directory else { throw .ENOTDIR }
            let next = try lookupInode(current, name, cred)
            let nextRecord = inodes[next]!
            if nextRecord.type == .symlink, !pending.isEmpty || followLast {
                links += 1
                if links > limits.symlinksFollowedMax { throw .ELOOP }
                let target = nextRecord.target
                if target.first == UInt8(ascii: "/") { current = Self.rootInode }
                let parts = target.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
                pending.append(contentsOf: parts.reversed())
                continue
            }
            current = next
        }
        return current
    }
}
