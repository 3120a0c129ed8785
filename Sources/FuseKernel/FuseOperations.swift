import CFuse
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The `fuse_lowlevel_ops` table: one capture-free C callback per operation. Each copies what
/// libfuse lends it only for the call (names, buffers, `fuse_file_info`) and hands the request
/// to `FuseBridge.dispatch`, which answers it from a task.
enum FuseOperations {
    static func table() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            let bridge = Unmanaged<FuseBridge>.fromOpaque(userdata!).takeUnretainedValue()
            FuseOperations.negotiate(conn!, options: bridge.options)
        }
        ops.lookup = { req, parent, name in
            let name = FuseName(name!)
            let bridge = FuseBridge.of(req)
            let remembersMissing = bridge.options.negativeTimeout > 0
            bridge.dispatch(req, "lookup") { fs, context in
                do {
                    return .entry(try await fs.lookup(parent: parent, name: name, context: context))
                } catch where remembersMissing && FuseErrorMapping.errno(for: error) == ENOENT {
                    return .missingEntry
                }
            }
        }
        ops.forget = { req, node, lookups in
            FuseBridge.of(req).dispatch(req, "forget") { fs, _ in
                await fs.forget(node: node, lookups: lookups)
                return .none
            }
        }
        ops.forget_multi = { req, count, forgets in
            let items = UnsafeBufferPointer(start: forgets, count: count).map { ($0.ino, $0.nlookup) }
            FuseBridge.of(req).dispatch(req, "forget_multi") { fs, _ in
                for (node, lookups) in items { await fs.forget(node: node, lookups: lookups) }
                return .none
            }
        }
        ops.getattr = { req, node, fi in
            let handle = fi.map { $0.pointee.fh }
            FuseBridge.of(req).dispatch(req, "getattr") { fs, context in
                .attributes(try await fs.getattr(node: node, handle: handle, context: context))
            }
        }
        ops.setattr = { req, node, attr, toSet, fi in
            let changes = FuseOperations.attributeChanges(attr!.pointee, toSet)
            let handle = fi.map { $0.pointee.fh }
            FuseBridge.of(req).dispatch(req, "setattr") { fs, context in
                .attributes(try await fs.setattr(node: node, changes: changes, handle: handle, context: context))
            }
        }
        ops.readlink = { req, node in
            FuseBridge.of(req).dispatch(req, "readlink") { fs, context in
                .link(try await fs.readlink(node: node, context: context))
            }
        }
        ops.mknod = { req, parent, name, mode, rdev in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "mknod") { fs, context in
                .entry(try await fs.mknod(parent: parent, name: name, mode: mode, rdev: UInt64(rdev), context: context))
            }
        }
        ops.mkdir = { req, parent, name, mode in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "mkdir") { fs, context in
                .entry(try await fs.mkdir(parent: parent, name: name, mode: mode, context: context))
            }
        }
        ops.unlink = { req, parent, name in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "unlink") { fs, context in
                try await fs.unlink(parent: parent, name: name, context: context)
                return .success
            }
        }
        ops.rmdir = { req, parent, name in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "rmdir") { fs, context in
                try await fs.rmdir(parent: parent, name: name, context: context)
                return .success
            }
        }
        ops.symlink = { req, target, parent, name in
            let target = FuseName(target!).bytes
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "symlink") { fs, context in
                .entry(try await fs.symlink(target: target, parent: parent, name: name, context: context))
            }
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            let name = FuseName(name!)
            let newName = FuseName(newName!)
            FuseBridge.of(req).dispatch(req, "rename") { fs, context in
                try await fs.rename(parent: parent, name: name, newParent: newParent, newName: newName,
                                    flags: FuseRenameFlags(rawValue: flags), context: context)
                return .success
            }
        }
        ops.link = { req, node, newParent, newName in
            let newName = FuseName(newName!)
            FuseBridge.of(req).dispatch(req, "link") { fs, context in
                .entry(try await fs.link(node: node, newParent: newParent, newName: newName, context: context))
            }
        }
        ops.open = { req, node, fi in
            let flags = fi!.pointee.flags
            FuseBridge.of(req).dispatch(req, "open") { fs, context in
                .open(try await fs.open(node: node, flags: flags, context: context))
            }
        }
        ops.create = { req, parent, name, mode, fi in
            let name = FuseName(name!)
            let flags = fi!.pointee.flags
            FuseBridge.of(req).dispatch(req, "create") { fs, context in
                let (entry, file) = try await fs.create(parent: parent, name: name, mode: mode, flags: flags, context: context)
                return .create(entry, file)
            }
        }
        ops.read = { req, node, size, offset, fi in
            let handle = fi!.pointee.fh
            FuseBridge.of(req).dispatch(req, "read", lane: .read(size: size)) { fs, context in
                .bytes(try await fs.read(node: node, handle: handle, offset: Int64(offset), size: size, context: context))
            }
        }
        ops.write = { req, node, buffer, size, offset, fi in
            let handle = fi!.pointee.fh
            let bytes = [UInt8](UnsafeRawBufferPointer(start: buffer, count: size))
            FuseBridge.of(req).dispatch(req, "write", lane: .data) { fs, context in
                .written(try await fs.write(node: node, handle: handle, offset: Int64(offset), bytes: bytes, context: context))
            }
        }
        ops.flush = { req, node, fi in
            let handle = fi!.pointee.fh
            let lockOwner = fi!.pointee.lock_owner
            FuseBridge.of(req).dispatch(req, "flush", lane: .data) { fs, context in
                try await fs.flush(node: node, handle: handle, lockOwner: lockOwner, context: context)
                return .success
            }
        }
        ops.release = { req, node, fi in
            let handle = fi!.pointee.fh
            let flags = fi!.pointee.flags
            FuseBridge.of(req).dispatch(req, "release", lane: .data) { fs, context in
                try await fs.release(node: node, handle: handle, flags: flags, context: context)
                return .success
            }
        }
        ops.fsync = { req, node, dataOnly, fi in
            let handle = fi!.pointee.fh
            FuseBridge.of(req).dispatch(req, "fsync", lane: .data) { fs, context in
                try await fs.fsync(node: node, handle: handle, dataOnly: dataOnly != 0, context: context)
                return .success
            }
        }
        ops.opendir = { req, node, fi in
            let flags = fi!.pointee.flags
            FuseBridge.of(req).dispatch(req, "opendir") { fs, context in
                .open(try await fs.opendir(node: node, flags: flags, context: context))
            }
        }
        ops.readdir = { req, node, size, offset, fi in
            let handle = fi!.pointee.fh
            FuseBridge.of(req).dispatch(req, "readdir") { fs, context in
                let entries = try await fs.readdir(node: node, handle: handle, offset: Int64(offset), bytesMax: size, context: context)
                return .directory(entries, bytesMax: size)
            }
        }
        ops.readdirplus = { req, node, size, offset, fi in
            let handle = fi!.pointee.fh
            FuseBridge.of(req).dispatch(req, "readdirplus") { fs, context in
                let entries = try await fs.readdirplus(node: node, handle: handle, offset: Int64(offset), bytesMax: size,
                                                       context: context)
                return .directoryPlus(entries, bytesMax: size)
            }
        }
        ops.releasedir = { req, node, fi in
            let handle = fi!.pointee.fh
            FuseBridge.of(req).dispatch(req, "releasedir") { fs, context in
                try await fs.releasedir(node: node, handle: handle, context: context)
                return .success
            }
        }
        ops.fsyncdir = { req, _, _, _ in
            // Directory entries reach the backing store when each operation returns.
            FuseBridge.of(req).dispatch(req, "fsyncdir") { _, _ in .success }
        }
        ops.statfs = { req, node in
            FuseBridge.of(req).dispatch(req, "statfs") { fs, context in
                .volume(try await fs.statfs(node: node, context: context))
            }
        }
        ops.setxattr = { req, node, name, value, size, flags in
            let name = FuseName(name!)
            let value = [UInt8](UnsafeRawBufferPointer(start: value, count: size))
            FuseBridge.of(req).dispatch(req, "setxattr") { fs, context in
                try await fs.setxattr(node: node, name: name, value: value, flags: flags, context: context)
                return .success
            }
        }
        ops.getxattr = { req, node, name, size in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "getxattr") { fs, context in
                FuseOperations.xattrReply(try await fs.getxattr(node: node, name: name, context: context), callerBytes: size)
            }
        }
        ops.listxattr = { req, node, size in
            FuseBridge.of(req).dispatch(req, "listxattr") { fs, context in
                let names = try await fs.listxattr(node: node, context: context)
                return FuseOperations.xattrReply(names.flatMap { $0.bytes + [0] }, callerBytes: size)
            }
        }
        ops.removexattr = { req, node, name in
            let name = FuseName(name!)
            FuseBridge.of(req).dispatch(req, "removexattr") { fs, context in
                try await fs.removexattr(node: node, name: name, context: context)
                return .success
            }
        }
        ops.access = { req, node, mask in
            FuseBridge.of(req).dispatch(req, "access") { fs, context in
                try await fs.access(node: node, mask: mask, context: context)
                return .success
            }
        }
        return ops
    }

    /// The `init` negotiation: the write size, and which optional behaviours to use.
    static func negotiate(_ conn: UnsafeMutablePointer<fuse_conn_info>, options: FuseMount.Options) {
        conn.pointee.max_write = UInt32(options.writeBytesMax)
        let writeback = UInt32(FUSE_CAP_WRITEBACK_CACHE)
        if options.writebackCache && conn.pointee.capable & writeback != 0 {
            conn.pointee.want |= writeback
        } else {
            // Off by default: with it the kernel delays writes, which breaks close-to-open consistency.
            conn.pointee.want &= ~writeback
        }
        // Names are not exported over NFS; the kernel applies the umask itself.
        conn.pointee.want &= ~UInt32(FUSE_CAP_EXPORT_SUPPORT | FUSE_CAP_DONT_MASK)
    }

    /// The xattr answer rules of `getxattr(2)`/`listxattr(2)`: a caller buffer of size 0 asks for
    /// the size; a buffer too small fails with `ERANGE`.
    static func xattrReply(_ value: [UInt8], callerBytes: Int) -> FuseReply {
        if callerBytes == 0 { return .xattrSize(value.count) }
        if value.count > callerBytes { return .error(Errno.outOfRange.rawValue) }
        return .bytes(value)
    }

    /// What a `setattr` request changes (`to_set` bits of `FUSE_SET_ATTR_*`).
    static func attributeChanges(_ attr: stat, _ toSet: Int32) -> FuseAttributeChanges {
        func has(_ bit: Int32) -> Bool { toSet & bit != 0 }
        var changes = FuseAttributeChanges()
        if has(FUSE_SET_ATTR_MODE) { changes.mode = attr.st_mode & 0o7777 }
        if has(FUSE_SET_ATTR_UID) { changes.uid = attr.st_uid }
        if has(FUSE_SET_ATTR_GID) { changes.gid = attr.st_gid }
        if has(FUSE_SET_ATTR_SIZE) { changes.size = UInt64(clamping: attr.st_size) }
        if has(FUSE_SET_ATTR_ATIME_NOW) {
            changes.atime = .now
        } else if has(FUSE_SET_ATTR_ATIME) {
            changes.atime = .set(FuseTime(attr.st_atim))
        }
        if has(FUSE_SET_ATTR_MTIME_NOW) {
            changes.mtime = .now
        } else if has(FUSE_SET_ATTR_MTIME) {
            changes.mtime = .set(FuseTime(attr.st_mtim))
        }
        return changes
    }
}

extension FuseName {
    /// Copies a NUL-terminated name libfuse lends for the duration of a callback.
    init(_ cString: UnsafePointer<CChar>) {
        self.init(bytes: Array(UnsafeRawBufferPointer(start: cString, count: strlen(cString))))
    }
}
