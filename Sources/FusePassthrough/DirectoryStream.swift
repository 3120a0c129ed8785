import FuseKernel
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An open source directory (`fdopendir(3)`) read with `readdir(3)`, positioned with
/// `seekdir(3)` to the offset (the source's `d_off` cookie) each request asks for.
final class DirectoryStream: Sendable {
    private struct State: @unchecked Sendable {
        var dir: OpaquePointer?
        /// The cookie of the next entry `readdir` returns (0: the start).
        var position: Int64 = 0
    }

    private let state: Mutex<State>

    init(_ dir: OpaquePointer) { state = Mutex(State(dir: dir)) }

    func close() {
        state.withLock { s in
            if let dir = s.dir { closedir(dir) }
            s.dir = nil
        }
    }

    /// Entries from `offset` whose records fit in `bytesMax`; the stream stays at the first
    /// entry left out.
    func entries(from offset: Int64, bytesMax: Int, plus: Bool) throws(Errno) -> [FuseDirectoryEntry] {
        try state.withLock { s throws(Errno) -> [FuseDirectoryEntry] in
            guard let dir = s.dir else { throw Errno.badFileDescriptor }
            if offset != s.position {
                seekdir(dir, Int(offset))
                s.position = offset
            }
            var entries: [FuseDirectoryEntry] = []
            var bytes = 0
            while true {
                errno = 0
                guard let entry = readdir(dir) else {
                    if errno != 0 { throw Errno(rawValue: errno) }
                    break
                }
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix(while: { $0 != 0 })) }
                bytes += FuseDirectoryEntry.recordBytes(nameBytes: name.count, plus: plus)
                if bytes > bytesMax {
                    // Give this entry back: the next request starts at it.
                    seekdir(dir, Int(s.position))
                    break
                }
                let next = Int64(entry.pointee.d_off)
                entries.append(FuseDirectoryEntry(name: FuseName(bytes: name), ino: UInt64(entry.pointee.d_ino),
                                                  fileType: UInt32(entry.pointee.d_type) << 12, nextOffset: next))
                s.position = next
            }
            return entries
        }
    }
}
