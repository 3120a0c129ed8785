import CairnCore

/// The metadata state machine as the Raft runtime drives it: encoded commands in, encoded
/// replies out, snapshots of the whole state. A thin adapter makes it a
/// `ReplicatedStateMachine` (apply / snapshot / restore) without this module knowing Raft.
///
/// Deterministic: the reply and the new state depend only on the state and the command bytes.
/// Malformed input gets an error reply, never a crash.
public final class MetaStateMachine {
    public private(set) var namespace: Namespace
    /// The log index of the last command applied (restored from snapshots).
    public private(set) var appliedIndex: UInt64 = 0

    public init(limits: MetaLimits = MetaLimits()) {
        namespace = Namespace(limits: limits)
    }

    /// Applies one encoded command at log index `index` and returns the encoded reply.
    /// Mutations carrying `(session, sequence)` apply once: a retry gets the first reply back.
    public func apply(_ command: [UInt8], at index: UInt64) -> [UInt8] {
        appliedIndex = max(appliedIndex, index)
        guard command.count <= namespace.limits.commandBytesMax else { return MetaReply.failure(.E2BIG).encoded() }
        let decoded: MetaCommand
        do { decoded = try MetaCommand(decoding: command) } catch { return MetaReply.failure(error).encoded() }
        return apply(decoded).encoded()
    }

    /// Applies one decoded command (deduplicating as above).
    public func apply(_ command: MetaCommand) -> MetaReply {
        if command.credentials.groups.count > namespace.limits.callerGroupsMax { return .failure(.EINVAL) }
        let deduplicated = command.operation.isMutation && command.session != 0 && command.sequence != 0
        if deduplicated, let remembered = namespace.rememberedReply(session: command.session, sequence: command.sequence) {
            switch remembered {
            case .success(let bytes): return (try? MetaReply(decoding: bytes)) ?? .failure(.EIO)
            case .failure(let error): return .failure(error)
            }
        }
        let reply = namespace.apply(command)
        if deduplicated { namespace.remember(session: command.session, sequence: command.sequence, reply: reply.encoded()) }
        return reply
    }

    /// The whole state, encoded deterministically (equal states give equal bytes).
    public func snapshot() -> [UInt8] { namespace.snapshot(appliedIndex: appliedIndex) }

    /// Replaces the state with a snapshot's. Throws `.corrupt` (and keeps the old state) for
    /// anything that is not a valid snapshot under this machine's limits.
    public func restore(_ snapshot: [UInt8]) throws(CairnError) {
        let (restored, index) = try Namespace.restore(snapshot, limits: namespace.limits)
        namespace = restored
        appliedIndex = index
    }

    /// SHA-256 of the snapshot: replicas holding the same state have the same digest.
    public var digest: ChunkID { SHA256.hash(snapshot()) }
}

extension Namespace {
    /// Runs one command's operation (no deduplication: `MetaStateMachine` does that).
    public mutating func apply(_ c: MetaCommand) -> MetaReply {
        let cred = c.credentials, now = c.now
        func reply<T>(_ result: Result<T, FileSystemError>, _ make: (T) -> MetaReply) -> MetaReply {
            switch result {
            case .success(let v): make(v)
            case .failure(let e): .failure(e)
            }
        }
        switch c.operation {
        case .openSession(let ttl): return reply(openSession(ttlNanoseconds: ttl, now: now)) { .session($0) }
        case .heartbeat: return reply(heartbeat(c.session, now: now)) { .done }
        case .closeSession: return reply(closeSession(c.session)) { .released($0) }
        case .expireSessions:
            let (ended, released) = expireSessions(now: now)
            return .expired(sessions: ended, released: released)
        case .lookup(let p, let n): return reply(lookup(p, n, cred)) { .attributes($0) }
        case .getattr(let i): return reply(getattr(i)) { .attributes($0) }
        case .readlink(let i): return reply(readlink(i)) { .bytes($0) }
        case .readdir(let i, let after, let count): return reply(readdir(i, after: after, count: Int(count), cred)) { .page($0) }
        case .statfs: return .statistics(statistics())
        case .getxattr(let i, let n, let size): return reply(getxattr(i, n, sizeMax: size.map(Int.init), cred)) { .bytes($0) }
        case .listxattr(let i, let size): return reply(listxattr(i, sizeMax: size.map(Int.init), cred)) { .names($0) }
        case .mkdir(let p, let n, let mode): return reply(mkdir(p, n, mode: mode, cred, now: now)) { .attributes($0) }
        case .mknod(let p, let n, let type, let mode, let rdev):
            return reply(mknod(p, n, type: type, mode: mode, rdev: rdev, cred, now: now)) { .attributes($0) }
        case .symlink(let p, let n, let t): return reply(symlink(p, n, target: t, cred, now: now)) { .attributes($0) }
        case .create(let p, let n, let flags, let mode):
            return reply(create(p, n, flags: flags, mode: mode, session: c.session, cred, now: now)) { .opened($0.0, released: $0.1) }
        case .open(let i, let flags):
            return reply(open(i, flags: flags, session: c.session, cred, now: now)) { .opened($0.0, released: $0.1) }
        case .close(let h): return reply(close(session: c.session, handle: h)) { .released($0) }
        case .closeHandles(let handles): return reply(closeHandles(session: c.session, handles: handles)) { .released($0) }
        case .link(let i, let np, let nn): return reply(link(i, np, nn, cred, now: now)) { .attributes($0) }
        case .unlink(let p, let n): return reply(unlink(p, n, cred, now: now)) { .released($0) }
        case .rmdir(let p, let n): return reply(rmdir(p, n, cred, now: now)) { .done }
        case .rename(let op, let on, let np, let nn, let flags):
            return reply(rename(op, on, np, nn, flags: flags, cred, now: now)) { .released($0) }
        case .setattr(let i, let changes, let handle):
            return reply(setattr(i, changes, handle: handle.map { (c.session, $0) }, cred, now: now)) { .attributesReleased($0.0, released: $0.1) }
        case .commitWrite(let h, let extents):
            return reply(commitWrite(session: c.session, handle: h, extents: extents, cred, now: now)) { .attributesReleased($0.0, released: $0.1) }
        case .setxattr(let i, let n, let v, let flags): return reply(setxattr(i, n, v, flags: flags, cred, now: now)) { .done }
        case .removexattr(let i, let n): return reply(removexattr(i, n, cred, now: now)) { .done }
        case .registerChunkserver(let identity, let address, let weight, let domain):
            return reply(registerChunkserver(identity: identity, address: address, weight: weight, failureDomain: domain)) {
                .chunkserver($0.0, epoch: $0.1)
            }
        case .setChunkserverState(let id, let state): return reply(setChunkserverState(id, state)) { .ring($0) }
        case .setChunkserverWeight(let id, let weight): return reply(setChunkserverWeight(id, weight)) { .ring($0) }
        case .ring: return .ring(ringState)
        case .readExtents(let i, let offset, let length):
            return reply(readExtents(i, offset: offset, length: length)) { .extents($0.0, size: $0.1) }
        }
    }
}
