import Synchronization
import SystemPackage

/// An open file descriptor with one owner at a time, passed between threads and tasks: whoever
/// `take()`s it closes it; one never taken is closed when this object goes away, so a
/// descriptor dropped on a path that fails (a write queued on a connection that closed) does
/// not leak.
public final class OwnedFileDescriptor: Sendable {
    private let descriptor: Mutex<FileDescriptor?>

    public init(_ descriptor: FileDescriptor) {
        self.descriptor = Mutex(descriptor)
    }

    /// The descriptor, handed over once (nil after): the taker closes it.
    public func take() -> FileDescriptor? {
        descriptor.withLock { owned in
            defer { owned = nil }
            return owned
        }
    }

    deinit {
        try? take()?.close()
    }
}
