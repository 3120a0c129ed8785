import CairnCore
import MetaState
import Synchronization

/// A client session with the metadata service: what a mount holds. Mutations carry
/// `(session, sequence)` so a retry after a lost answer or a leader change applies once;
/// files the session has open stay readable after an unlink until it closes them or expires.
///
/// Keep the session alive with `keepAlive()` (heartbeats every third of its ttl).
public final class MetaSession: Sendable {
    public let client: MetaClient
    public let id: SessionID
    public let ttl: Duration
    /// Sequence numbers of mutations, never `mutationsInflightMax` or more past the oldest
    /// unanswered one: half the state machine's remembered replies per session
    /// (`MetaLimits.dedupRepliesPerSessionMax`), so any retry finds its first answer or applies.
    private let sequences: SequenceWindow
    public static let mutationsInflightMax = MetaLimits().dedupRepliesPerSessionMax / 2
    /// Handles waiting to be closed, whether a `closeHandles` is on its way, and who waits
    /// for all of them to be done.
    private struct PendingCloses {
        var handles: [HandleID] = []
        var flushing = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let pendingCloses = Mutex(PendingCloses())

    private init(client: MetaClient, id: SessionID, ttl: Duration) {
        self.client = client
        self.id = id
        self.ttl = ttl
        sequences = SequenceWindow(width: Self.mutationsInflightMax)
    }

    /// Registers a new session.
    /// - Throws: `CairnError` if the service is unreachable or refuses (too many sessions).
    public static func open(_ client: MetaClient, ttl: Duration = .seconds(60)) async throws(CairnError) -> MetaSession {
        switch try await client.execute(MetaCommand(now: .zero, operation: .openSession(ttlNanoseconds: UInt64(ttl.wholeNanoseconds)))) {
        case .session(let id): return MetaSession(client: client, id: id, ttl: ttl)
        case .failure(let error): throw CairnError(.unavailable, "the metadata service refused a session: \(error)")
        default: throw CairnError(.protocolViolation, "unexpected reply to openSession")
        }
    }

    /// Runs one operation as `credentials` within this session. Reads are not sequenced.
    public func perform(_ operation: MetaOperation, as credentials: Credentials) async throws(CairnError) -> MetaReply {
        try await performReportingDirectories(operation, as: credentials).reply
    }

    /// `perform`, plus the attributes of the directories a mutation changed, right after it
    /// (`MetaClient.executeReportingDirectories`).
    public func performReportingDirectories(_ operation: MetaOperation, as credentials: Credentials) async throws(CairnError)
        -> (reply: MetaReply, directories: [Attributes]) {
        guard operation.isMutation else {
            return (try await client.execute(MetaCommand(session: id, credentials: credentials, now: .zero, operation: operation)), [])
        }
        let sequence: UInt64
        do {
            sequence = try await sequences.begin()
        } catch {
            throw CairnError(.unavailable, "cancelled while waiting to send a mutation", cause: error)
        }
        defer { sequences.end(sequence) }
        return try await client.executeReportingDirectories(MetaCommand(session: id, sequence: sequence, credentials: credentials,
                                                                        now: .zero, operation: operation))
    }

    /// Heartbeats every third of the ttl until cancelled. Returns (throwing) if the service
    /// answers that the session is gone (it expired: its open files were released).
    public func keepAlive() async throws(CairnError) {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: ttl / 3)
            } catch {
                return
            }
            if case .failure(let error) = try await client.execute(MetaCommand(session: id, now: .zero, operation: .heartbeat)), error == .ESTALE {
                throw CairnError(.notFound, "session \(id) ended on the metadata service: \(error)")
            }
        }
    }

    /// Closes a handle without waiting: closes that arrive within `closeLinger` of the first, or
    /// while one `closeHandles` command is in flight, go together in the next (group commit for
    /// closes: a file's close costs a fraction of a replicated command). Nothing waits on a
    /// close — a FUSE release is not waited for by the application, the file's data is durable
    /// at its flush — and a close that never arrives (the mount dies) is done by the session's
    /// expiry.
    public func closeLater(_ handle: HandleID) {
        let start = pendingCloses.withLock { pending -> Bool in
            pending.handles.append(handle)
            if pending.flushing { return false }
            pending.flushing = true
            return true
        }
        if start { Task { await self.flushCloses() } }
    }

    /// How long a close waits for others to join its `closeHandles` command. Without it, one
    /// program creating files one after another sent a close command per file, which the leader
    /// committed between that program's creates: each create waited for about one and a half
    /// commits instead of one.
    public static let closeLinger: Duration = .milliseconds(10)

    private func flushCloses() async {
        while true {
            let queued = pendingCloses.withLock { $0.handles.count }
            if queued > 0 && queued < MetaOperation.closeHandlesMax {
                try? await Task.sleep(for: Self.closeLinger)
            }
            let (batch, waiters) = pendingCloses.withLock { pending -> ([HandleID], [CheckedContinuation<Void, Never>]) in
                let batch = Array(pending.handles.prefix(MetaOperation.closeHandlesMax))
                pending.handles.removeFirst(batch.count)
                guard batch.isEmpty else { return (batch, []) }
                pending.flushing = false
                defer { pending.waiters = [] }
                return ([], pending.waiters)
            }
            if batch.isEmpty {
                for waiter in waiters { waiter.resume() }
                return
            }
            _ = try? await perform(.closeHandles(batch), as: .root)
        }
    }

    /// Returns once every close handed to `closeLater` so far has been sent and answered.
    public func closesDone() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = pendingCloses.withLock { pending -> Bool in
                if !pending.flushing { return true }
                pending.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Ends the session: closes its handles on the service.
    public func close() async {
        _ = try? await client.execute(MetaCommand(session: id, now: .zero, operation: .closeSession))
    }
}
