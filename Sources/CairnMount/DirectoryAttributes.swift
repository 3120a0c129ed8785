import MetaState
import Synchronization

/// Directory attributes as this mount's own mutations left them, for the kernel's next getattr.
///
/// After a create, unlink, mkdir, rename… in a directory the kernel marks the directory's
/// attributes stale and, to check the caller may search it (default_permissions), asks for
/// them on the next path lookup through it: a round trip to the metadata service per file
/// created. The service answers each such mutation with the directories' attributes right
/// after it; they are kept here and the next getattr of each is answered with them — once,
/// and only within the attribute timeout the kernel itself caches attributes for, so no
/// answer is staler than the kernel's own cache could be. A change this mount makes to a
/// directory's own attributes (chmod, utimes, xattrs) forgets it, before and after.
final class DirectoryAttributes: Sendable {
    /// Directories remembered at once; beyond it the oldest entries go.
    static let entriesMax = 4096

    /// Every entry is kept for the same time, so the order of `expires` is the order entries
    /// were recorded in.
    private struct Entry {
        var attributes: Attributes
        var expires: ContinuousClock.Instant
    }
    private struct State {
        var entries: [InodeNumber: Entry] = [:]
        var servedTotal: UInt64 = 0
    }
    private let state = Mutex(State())
    private let keptFor: Duration

    init(keptFor: Duration) { self.keptFor = keptFor }

    /// Remembers directories' attributes as a mutation just left them.
    func record(_ directories: [Attributes]) {
        guard keptFor > .zero, !directories.isEmpty else { return }
        let expires = ContinuousClock.now + keptFor
        state.withLock { s in
            for attributes in directories {
                // Concurrent mutations may answer out of order: keep the later state (the
                // leader's times never go back).
                if let kept = s.entries[attributes.inode], kept.attributes.ctime > attributes.ctime { continue }
                s.entries[attributes.inode] = Entry(attributes: attributes, expires: expires)
            }
            if s.entries.count > Self.entriesMax {
                // Expired ones go, then the oldest.
                let now = ContinuousClock.now
                s.entries = s.entries.filter { $0.value.expires > now }
                let excess = s.entries.count - Self.entriesMax
                if excess > 0 {
                    for inode in s.entries.sorted(by: { $0.value.expires < $1.value.expires }).prefix(excess).map(\.key) {
                        s.entries.removeValue(forKey: inode)
                    }
                }
            }
        }
    }

    /// The remembered attributes of `inode` if still fresh; forgets them either way.
    func take(_ inode: InodeNumber) -> Attributes? {
        state.withLock { s in
            guard let entry = s.entries.removeValue(forKey: inode), entry.expires > ContinuousClock.now else { return nil }
            s.servedTotal += 1
            return entry.attributes
        }
    }

    func forget(_ inode: InodeNumber) {
        _ = state.withLock { $0.entries.removeValue(forKey: inode) }
    }

    /// Getattrs answered from here so far.
    var servedTotal: UInt64 { state.withLock { $0.servedTotal } }
}
