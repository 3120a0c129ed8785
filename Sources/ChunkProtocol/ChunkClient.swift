import CairnCore
import Dispatch
import NIOCore
import NIOPosix
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A connection to one chunkserver's data port.
///
/// Requests may be issued concurrently from many tasks: they are pipelined on the one
/// connection (at most `requestsInflightMax` outstanding; further callers wait) and matched to
/// responses by request ID. Every method throws `CairnError`: the server's error as sent, or
/// `.unavailable` when the connection fails, in which case every outstanding request fails.
public final class ChunkClient: Sendable {
    public let server: HostPort
    private let channel: any Channel
    private let handler: NIOLoopBound<ResponseHandler>
    private let inflight: AsyncSemaphore
    private let nextRequestID = Atomic<UInt64>(1)

    /// Requests outstanding on one connection before callers wait.
    public static let requestsInflightMaxDefault = 16

    private init(server: HostPort, channel: any Channel, handler: NIOLoopBound<ResponseHandler>, requestsInflightMax: Int) {
        self.server = server
        self.channel = channel
        self.handler = handler
        self.inflight = AsyncSemaphore(limit: requestsInflightMax)
    }

    /// Connects to `server`.
    /// - Throws: `.unavailable` if the connection cannot be made within `connectTimeout`.
    public static func connect(to server: HostPort, limits: ChunkLimits = ChunkLimits(),
                               requestsInflightMax: Int = requestsInflightMaxDefault,
                               connectTimeout: Duration = .seconds(5),
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws(CairnError) -> ChunkClient {
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.nanoseconds(connectTimeout.wholeNanoseconds))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelOption(.recvAllocator, value: FrameDecoder.receiveBufferAllocator)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(expecting: .response, limits: limits)))
                        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                        try channel.pipeline.syncOperations.addHandler(ResponseHandler())
                    }
                }
                .connect(host: server.host, port: server.port).get()
            let handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ResponseHandler.self), eventLoop: channel.eventLoop)
            }.get()
            return ChunkClient(server: server, channel: channel, handler: handler, requestsInflightMax: requestsInflightMax)
        } catch {
            throw CairnError(.unavailable, "cannot connect to chunkserver \(server)", cause: error)
        }
    }

    /// False once the connection has failed or been closed; every later request fails with
    /// `.unavailable`, so a pool drops such a client and dials again.
    public var isConnected: Bool { channel.isActive }

    /// Closes the connection; outstanding requests fail with `.unavailable`.
    public func close() async {
        try? await channel.close()
    }

    /// A request's deadline: unless `cancel()`ed within `timeout`, the connection is closed,
    /// which fails every request on it. The connection's event loop keeps it — no task, no
    /// timer of its own — so a request pays one scheduled task instead of two child tasks.
    public func deadline(after timeout: Duration) -> ConnectionDeadline {
        let expired = ConnectionDeadline.Flag()
        let channel = self.channel
        let scheduled = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.wholeNanoseconds)) {
            expired.value.store(true, ordering: .releasing)
            channel.close(promise: nil)
        }
        return ConnectionDeadline(scheduled: scheduled, flag: expired)
    }

    /// Sends one request and waits for its response. The response's error is thrown.
    public func call(_ request: ChunkRequest, body: ByteBuffer? = nil) async throws(CairnError) -> (ChunkResponse, ByteBuffer?) {
        let received = try await exchange(request, body: body, hashingBody: false)
        return (received.response, received.body)
    }

    /// `call`, and with `hashingBody` the SHA-256 of the response body, computed part by part as
    /// the body arrives (so hashing a chunk overlaps receiving the rest of it, instead of
    /// starting after its last byte): on the connection's event loop, or beside it when more
    /// hashed responses are pipelined behind (`ResponseHandler`).
    private func exchange(_ request: ChunkRequest, body: ByteBuffer?, hashingBody: Bool) async throws(CairnError) -> ReceivedResponse {
        do {
            try await inflight.acquire()
        } catch {
            throw CairnError(.unavailable, "cancelled while waiting to send", cause: error)
        }
        defer { inflight.release() }
        let header: [UInt8]
        do {
            header = try request.serializedBytes()
        } catch {
            throw CairnError(.invalidArgument, "cannot encode request", cause: error)
        }
        let requestID = nextRequestID.add(1, ordering: .relaxed).oldValue
        let promise = channel.eventLoop.makePromise(of: ReceivedResponse.self)
        let frame = OutboundFrame(kind: .request, requestID: requestID, header: header, body: body)
        let handler = self.handler
        let channel = self.channel
        channel.eventLoop.execute {
            handler.value.register(requestID, promise, hashingBody: hashingBody)
            channel.writeAndFlush(frame).whenFailure { error in
                handler.value.fail(requestID, CairnError(.unavailable, "cannot send to chunkserver", cause: error))
            }
        }
        let result: ReceivedResponse
        do {
            result = try await promise.futureResult.get()
        } catch let error as CairnError {
            throw error
        } catch {
            throw CairnError(.unavailable, "chunkserver \(server) failed", cause: error)
        }
        if let error = result.response.error { throw error }
        return result
    }

    // MARK: Operations

    /// Stores a chunk. Returns true if it was already stored.
    /// - Throws: `.hashMismatch`, `.tooLarge`, `.insufficientSpace`, `.io`, `.unavailable`.
    @discardableResult
    public func put(_ id: ChunkID, bytes: ByteBuffer) async throws(CairnError) -> Bool {
        var request = ChunkRequest()
        request.put.id = id.field
        return try await call(request, body: bytes).0.put.alreadyPresent
    }

    /// Reads a whole chunk and verifies it here with SHA-256 before returning: no byte that does
    /// not hash to `id` is ever handed back. (The server checks the chunk's per-block CRC-32Cs
    /// as it reads and quarantines a chunk that fails; the full SHA-256 is this check, so keep it.)
    /// - Throws: `.notFound`, `.corrupt`, `.io`, `.unavailable`.
    public func get(_ id: ChunkID) async throws(CairnError) -> ByteBuffer {
        var request = ChunkRequest()
        request.get.id = id.field
        let received = try await exchange(request, body: nil, hashingBody: true)
        let bytes = received.body ?? ByteBuffer()
        guard let actual = received.bodyHash else { throw CairnError(.internal, "a get's response came without its body's hash") }
        guard actual == id else {
            throw CairnError(.corrupt, "chunkserver \(server) returned bytes hashing to \(actual) for \(id)")
        }
        return bytes
    }

    /// Reads `length` bytes at `offset` checked here, not only by the server: the server sends
    /// the whole blocks covering the range with the CRC-32Cs stored beside the chunk (written at
    /// put time from bytes that hashed to `id`), and every block is checked against its
    /// checksum before a byte of the range is returned. What a reader of a few kilobytes uses
    /// instead of fetching and hashing the whole chunk.
    /// - Throws: `.corrupt` when a block does not match its checksum or the answer is
    ///   inconsistent; `.notFound`, `.invalidArgument` (a range outside the chunk), `.io`,
    ///   `.unavailable`.
    public func readChecked(_ id: ChunkID, offset: Int, length: Int) async throws(CairnError) -> ByteBuffer {
        guard offset >= 0, length > 0 else { throw CairnError(.invalidArgument, "bad range \(offset)+\(length)") }
        var request = ChunkRequest()
        request.get.id = id.field
        request.get.offset = UInt64(offset)
        request.get.length = UInt64(length)
        request.get.withChecksums = true
        let (response, body) = try await call(request)
        let bytes = body ?? ByteBuffer()
        let result = response.get
        let blocks = VerifiedBlocks(offset: Int(clamping: result.bodyOffset), blockBytes: Int(result.blockBytes),
                                    checksums: result.blockChecksums)
        guard blocks.offset <= offset, offset + length <= blocks.offset + bytes.readableBytes,
              bytes.withUnsafeReadableBytes({ blocks.check($0) }) else {
            throw CairnError(.corrupt, "chunkserver \(server) returned blocks of \(id) that fail their checksums")
        }
        return bytes.getSlice(at: bytes.readerIndex + offset - blocks.offset, length: length)!
    }

    /// Reads `length` bytes at `offset` (length nil: to the end), checked by the server
    /// against the chunk's block checksums. Returns the bytes and the chunk's length.
    public func read(_ id: ChunkID, offset: Int, length: Int?) async throws(CairnError) -> (bytes: ByteBuffer, chunkLength: Int) {
        guard offset >= 0, (length ?? 1) > 0 else { throw CairnError(.invalidArgument, "bad range \(offset)+\(length ?? -1)") }
        var request = ChunkRequest()
        request.get.id = id.field
        request.get.offset = UInt64(offset)
        request.get.length = UInt64(length ?? 0)
        if offset == 0 && length == nil {
            let bytes = try await get(id)
            return (bytes, bytes.readableBytes)
        }
        let (response, body) = try await call(request)
        return (body ?? ByteBuffer(), Int(response.get.chunkLength))
    }

    public func has(_ ids: [ChunkID]) async throws(CairnError) -> [Bool] {
        var request = ChunkRequest()
        request.has.ids = ids.map(\.field)
        let present = try await call(request).0.has.present
        guard present.count == ids.count else { throw CairnError(.internal, "has answered \(present.count) of \(ids.count)") }
        return present
    }

    /// Deletes chunks; returns which existed.
    @discardableResult
    public func delete(_ ids: [ChunkID]) async throws(CairnError) -> [Bool] {
        var request = ChunkRequest()
        request.delete.ids = ids.map(\.field)
        return try await call(request).0.delete.existed
    }

    /// One page of the chunks after `after`.
    public func list(after: ChunkID?, limit: Int = 0) async throws(CairnError) -> (entries: [Cairn_Chunk_V1_ChunkEntry], more: Bool) {
        var request = ChunkRequest()
        request.list.after = after?.field ?? Data()
        request.list.limit = UInt32(clamping: limit)
        let list = try await call(request).0.list
        return (list.entries, list.more)
    }

    public func stat() async throws(CairnError) -> Cairn_Chunk_V1_StatResult {
        var request = ChunkRequest()
        request.stat = Cairn_Chunk_V1_StatRequest()
        return try await call(request).0.stat
    }

    /// Asks the server to re-hash a chunk now. Returns its size.
    /// - Throws: `.corrupt` (quarantined on the server), `.notFound`.
    public func verify(_ id: ChunkID) async throws(CairnError) -> Int {
        var request = ChunkRequest()
        request.verify.id = id.field
        return Int(try await call(request).0.verify.sizeBytes)
    }
}

/// A request's deadline on a connection (`ChunkClient.deadline(after:)`).
public struct ConnectionDeadline: Sendable {
    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    private let scheduled: Scheduled<Void>
    private let flag: Flag

    fileprivate init(scheduled: Scheduled<Void>, flag: Flag) {
        self.scheduled = scheduled
        self.flag = flag
    }

    /// The request is done: the connection stays open.
    public func cancel() { scheduled.cancel() }

    /// Whether the deadline passed (and the connection was closed because of it).
    public var hasExpired: Bool { flag.value.load(ordering: .acquiring) }
}

/// Matches response frames to waiting requests. Lives on the channel's event loop.
/// A response as the handler hands it over: with the SHA-256 of its body when the request
/// asked for it (nil otherwise; an absent body hashes as the empty one).
struct ReceivedResponse: Sendable {
    var response: ChunkResponse
    var body: ByteBuffer?
    var bodyHash: ChunkID?
}

/// Hashes response bodies beside the event loop, part by part in arrival order, on a serial
/// queue of the connection's own: the loop goes on receiving and gathering the next bytes while
/// the ones before are hashed. What is queued is bounded by the responses in flight (each at
/// most `chunkBytesMax`).
final class BodyHasher: @unchecked Sendable {
    private let queue = DispatchQueue(label: "cairn.chunk-client.hash")
    /// Touched only on `queue`.
    private let sha = SHA256()

    func start() { queue.async { self.sha.reset() } }

    func update(_ part: ByteBuffer) {
        queue.async { part.withUnsafeReadableBytes { self.sha.update($0) } }
    }

    /// Calls `done` with the hash of the parts since `start()`, once they are all hashed.
    func finish(_ done: @escaping @Sendable (ChunkID) -> Void) {
        queue.async { done(self.sha.finalize()) }
    }
}

final class ResponseHandler: ChannelInboundHandler {
    typealias InboundIn = FramePart

    private var waiting: [UInt64: (promise: EventLoopPromise<ReceivedResponse>, hashingBody: Bool)] = [:]
    /// The response being received; `hashing` when its request asked for the body's hash.
    private var current: (requestID: UInt64, response: ChunkResponse, body: ByteBuffer?, hashing: Hashing)?
    private enum Hashing { case no, onLoop, offLoop }
    /// Hashed bodies being received right now, over every connection of the process.
    private static let hashedBodiesReceiving = Atomic<Int>(0)
    /// The body length of the frame in `current`, from its preamble.
    private var bodyLength = 0
    /// Fed the body of `current` as it arrives when it is `hashing`: beside the loop
    /// (`offLoopHasher`) when more hashed responses are pipelined behind it on this connection and
    /// no other connection is receiving one, else on the loop (`hasher`). SHA-256 costs more than
    /// receiving, so with every body hashed on the loop one connection's pipelined gets were bound
    /// by one core; but handing parts to another thread costs wake-ups, which a lone get (its hash
    /// then ends later) and many busy connections (every core already working) pay for nothing.
    /// `cairn-bench chunks --get-only`, MB/s, all on the loop vs all beside it: 1 stream x 4 in
    /// flight ~1,060 vs ~1,240; 1 x 1 ~900 vs ~850; 8 x 1 ~1,400 vs ~1,290; 8 x 4 ~1,330 vs ~1,310
    /// (~1,250 beside it when only pipelining decided).
    private let hasher = SHA256()
    private let offLoopHasher = BodyHasher()
    private var failure: CairnError?

    func register(_ requestID: UInt64, _ promise: EventLoopPromise<ReceivedResponse>, hashingBody: Bool) {
        if let failure {
            promise.fail(failure)
            return
        }
        waiting[requestID] = (promise, hashingBody)
    }

    func fail(_ requestID: UInt64, _ error: CairnError) {
        waiting.removeValue(forKey: requestID)?.promise.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let preamble, let header):
            do {
                let response = try ChunkResponse(serializedBytes: Array(header.readableBytesView))
                var hashing = Hashing.no
                if waiting[preamble.requestID]?.hashingBody == true {
                    let othersReceiving = Self.hashedBodiesReceiving.add(1, ordering: .relaxed).oldValue
                    let pipelinedBehind = waiting.contains { $0.key != preamble.requestID && $0.value.hashingBody }
                    hashing = pipelinedBehind && othersReceiving == 0 ? .offLoop : .onLoop
                }
                current = (preamble.requestID, response, nil, hashing)
                bodyLength = preamble.bodyLength
                switch hashing {
                case .no: break
                case .onLoop: hasher.reset()
                case .offLoop: offLoopHasher.start()
                }
            } catch {
                failAll(context: context, CairnError(.protocolViolation, "malformed response header", cause: error))
            }
        case .body(var part):
            guard current != nil else { return }
            switch current!.hashing {
            case .no: break
            case .onLoop: part.withUnsafeReadableBytes { hasher.update($0) }
            case .offLoop: offLoopHasher.update(part)
            }
            if current!.body == nil && part.readableBytes == bodyLength {
                // The whole body in one part: keep the slice, no copy.
                current!.body = part
            } else {
                // Gather the parts into one buffer of the body's size (bounded by the frame
                // decoder's chunkBytesMax check), allocated once: one copy per byte, and no
                // copy-on-write of a slice that shares the decoder's storage.
                if current!.body == nil { current!.body = context.channel.allocator.buffer(capacity: bodyLength) }
                current!.body!.writeBuffer(&part)
            }
        case .end:
            guard let done = current else { return }
            current = nil
            if done.hashing != .no { Self.hashedBodiesReceiving.subtract(1, ordering: .relaxed) }
            if done.requestID == 0, let error = done.response.error {
                // The server closes after an error it cannot tie to a request.
                failAll(context: context, error)
                return
            }
            guard let waiter = waiting.removeValue(forKey: done.requestID) else { return }
            var received = ReceivedResponse(response: done.response, body: done.body, bodyHash: nil)
            switch done.hashing {
            case .no:
                waiter.promise.succeed(received)
            case .onLoop:
                received.bodyHash = hasher.finalize()
                waiter.promise.succeed(received)
            case .offLoop:
                let unhashed = received
                offLoopHasher.finish { hash in
                    var hashed = unhashed
                    hashed.bodyHash = hash
                    waiter.promise.succeed(hashed)
                }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(context: context, CairnError(.unavailable, "chunk connection failed", cause: error))
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(context: context, CairnError(.unavailable, "chunk connection closed"))
        context.fireChannelInactive()
    }

    private func failAll(context: ChannelHandlerContext, _ error: CairnError) {
        if failure == nil { failure = error }
        let pending = waiting
        waiting.removeAll()
        if let receiving = current, receiving.hashing != .no { Self.hashedBodiesReceiving.subtract(1, ordering: .relaxed) }
        current = nil
        for id in pending.keys.sorted() { pending[id]!.promise.fail(error) }
        context.close(promise: nil)
    }
}
