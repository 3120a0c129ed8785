import CairnCore
import ChunkStore

/// Everything `cairn chunkserver` is told at start-up.
public struct ChunkServerConfiguration: Sendable {
    /// Where the data port listens. Port 0 picks a free port (printed at start-up).
    public var listen: HostPort
    public var store: ChunkStore.Configuration
    /// The scrubber re-verifies at most this many bytes per second; 0 turns it off.
    public var scrubBytesPerSecond: Int64
    /// Pause between two full scrub passes.
    public var scrubPassInterval: Duration
    /// Threads doing blocking disk I/O (reads, writes, fsyncs, hashing).
    public var ioThreads: Int

    public init(listen: HostPort, store: ChunkStore.Configuration, scrubBytesPerSecond: Int64 = 32 << 20,
                scrubPassInterval: Duration = .seconds(3600), ioThreads: Int = 8) {
        self.listen = listen
        self.store = store
        self.scrubBytesPerSecond = scrubBytesPerSecond
        self.scrubPassInterval = scrubPassInterval
        self.ioThreads = ioThreads
    }

    public func validate() throws(CairnError) {
        try store.limits.validate()
        guard scrubBytesPerSecond >= 0 else { throw CairnError(.invalidArgument, "scrub rate must not be negative") }
        guard ioThreads > 0 && ioThreads <= 256 else { throw CairnError(.invalidArgument, "ioThreads must be in 1...256") }
    }
}
