import CairnCore
import ChunkProtocol
import ChunkStore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The `cairn chunkserver` daemon: serves one `ChunkStore` on the chunk data protocol and
/// scrubs it in the background.
///
/// Each connection is served in its own task; its requests are read in order (clients
/// pipeline by sending ahead) and answered as each finishes, at most
/// `requestsPerConnectionMax` at once, with bounded buffering: when a connection has
/// `connectionPartsBufferedMax` frame parts queued, the server stops reading from it, and a
/// put holds at most `PutPipeline.partsInflightMax` more parts in its hashing and writing
/// lanes (one of at most `wholePutBytesMax` is gathered whole and stored by one task). At most
/// `transfersMax` puts and gets run at once across all connections.
public final class ChunkServer: Service, Sendable {
    public let configuration: ChunkServerConfiguration
    public let store: ChunkStore
    private let logger: Logger
    private let threadPool: NIOThreadPool
    private let scrubber: Scrubber?
    private let transfers: AsyncSemaphore
    private let state = Mutex(State())
    /// The bound address once `run()` has bound it; `settled` once it never will be (bind failed).
    private let bound = Mutex<(address: SocketAddress?, settled: Bool)>((nil, false))

    private struct State {
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        /// Connections accepted and not yet finished (served or refused).
        var connectionTasks = 0
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
        var shuttingDown = false
    }

    /// Opens the store (cleaning leftover temp files) and prepares the server; `run()` serves.
    ///
    /// - Throws: `CairnError` for a bad configuration or a store that cannot be opened.
    public init(configuration: ChunkServerConfiguration, logger: Logger) throws(CairnError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        self.store = try ChunkStore(configuration: configuration.store, logger: logger)
        self.threadPool = NIOThreadPool(numberOfThreads: configuration.ioThreads)
        self.transfers = AsyncSemaphore(limit: configuration.store.limits.transfersMax)
        if configuration.scrubBytesPerSecond > 0 {
            scrubber = Scrubber(store: store, threadPool: threadPool, bytesPerSecond: configuration.scrubBytesPerSecond,
                                passInterval: configuration.scrubPassInterval, logger: logger)
        } else {
            scrubber = nil
        }
    }

    /// The address the data port is bound to, once `run()` has bound it (any number of
    /// callers may wait); nil if binding failed or the task is cancelled first.
    public func boundAddress() async -> SocketAddress? {
        while !Task.isCancelled {
            let (address, settled) = bound.withLock { $0 }
            if settled { return address }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    public var scrubStats: ScrubStats { scrubber?.stats ?? ScrubStats() }

    /// Serves until graceful shutdown (SIGTERM/SIGINT through a `ServiceGroup`) or cancellation.
    /// On shutdown it stops accepting, lets each connection finish the request it is on, and
    /// closes.
    ///
    /// - Throws: `CairnError.unavailable` when the port cannot be bound.
    public func run() async throws {
        threadPool.start()
        defer { threadPool.shutdownGracefully { _ in } }
        let limits = configuration.store.limits
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 4)
                // Chunk bodies arrive in reads of up to 1 MiB rather than NIO's default 64 KiB:
                // fewer, larger body parts (each at most `FrameDecoder.bodyPartBytesMax`).
                .childChannelOption(.recvAllocator, value: FrameDecoder.receiveBufferAllocator)
                // A client that half-closes after pipelining its requests still gets every answer.
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(FrameDecoder(expecting: .request, limits: limits)))
                        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                        let connection = try NIOAsyncChannel<FramePart, OutboundFrame>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(backPressureStrategy: .init(lowWatermark: 1, highWatermark: limits.connectionPartsBufferedMax)))
                        self.accepted(connection)
                    }
                }
                .bind(host: configuration.listen.host, port: configuration.listen.port).get()
        } catch {
            bound.withLock { $0.settled = true }
            throw CairnError(.unavailable, "cannot listen on \(configuration.listen)", cause: error)
        }
        let alreadyStopping = state.withLock { s -> Bool in
            s.serverChannel = channel
            return s.shuttingDown
        }
        if alreadyStopping { channel.close(promise: nil) }
        bound.withLock { $0 = (channel.localAddress, true) }
        logger.info("chunkserver listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")",
                                                        "data": "\(configuration.store.directory)"])

        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { group in
                    if let scrubber {
                        group.addTask { try? await scrubber.run() }
                    }
                    try? await channel.closeFuture.get()
                    await connectionsFinished()
                    // Accepting has stopped and every connection is done: stop the scrubber too.
                    group.cancelAll()
                }
            } onGracefulShutdown: {
                self.shutDown()
            }
        } onCancel: {
            self.shutDown()
        }
        logger.info("chunkserver stopped")
    }

    /// Takes a connection the listener accepted (on its event loop, as it is set up): serves
    /// it, or refuses it at `connectionsMax` or while shutting down, in a task of its own that
    /// holds it until then. Not through the async `bind`'s stream of accepted channels: when
    /// the listener closes, that stream can drop a channel it accepted but never handed out,
    /// and a connection dropped before `executeThenClose` ran is a fatal error in NIO
    /// (apple/swift-nio#2813; it crashed tests that stopped a server while clients dialled).
    private func accepted(_ connection: NIOAsyncChannel<FramePart, OutboundFrame>) {
        let limits = configuration.store.limits
        let key = ObjectIdentifier(connection.channel)
        let admitted = state.withLock { s -> Bool in
            s.connectionTasks += 1
            guard !s.shuttingDown, s.connections.count < limits.connectionsMax else { return false }
            s.connections[key] = connection.channel
            return true
        }
        // The connection's requests are read, answered and written on its own event loop: a
        // range read then costs the thread hops to and from the I/O pool, not also one from the
        // loop to a pool thread for the request and one back for the answer (every blocking
        // call of an answer runs on `threadPool`, nothing else heavy runs on the loop).
        Task(executorPreference: EventLoopTaskExecutor(connection.channel.eventLoop)) {
            if admitted {
                await self.serve(connection)
            } else {
                self.logger.warning("refusing connection: connectionsMax reached or shutting down")
                try? await connection.executeThenClose { _, _ in }
            }
            let waiters = self.state.withLock { s -> [CheckedContinuation<Void, Never>] in
                s.connections.removeValue(forKey: key)
                s.connectionTasks -= 1
                guard s.connectionTasks == 0 else { return [] }
                defer { s.idleWaiters = [] }
                return s.idleWaiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Returns once no connection is being served or refused.
    private func connectionsFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                if s.connectionTasks == 0 { return true }
                s.idleWaiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    /// Stops accepting and half-closes every connection's input: each finishes what it has
    /// read, answers, and closes.
    public func shutDown() {
        let (server, connections) = state.withLock { s in
            s.shuttingDown = true
            return (s.serverChannel, Array(s.connections.values))
        }
        server?.close(promise: nil)
        for connection in connections { connection.close(mode: .input, promise: nil) }
    }

    // MARK: One connection

    /// Requests of one connection being answered at once: a put's body is read in order, but
    /// its commit (fsync, rename) and any get, has, list… run beside the next requests, so a
    /// client that pipelines on one connection overlaps one chunk's fsync or read with the
    /// next chunk's transfer. Answers go out as each finishes (matched by request ID).
    public static let requestsPerConnectionMax = 8

    private func serve(_ connection: NIOAsyncChannel<FramePart, OutboundFrame>) async {
        let peer = connection.channel.remoteAddress.map { "\($0)" } ?? "?"
        do {
            try await connection.executeThenClose { inbound, outbound in
                let slots = AsyncSemaphore(limit: Self.requestsPerConnectionMax)
                // Answers still being worked on are finished (and written) before the connection closes.
                try await withThrowingDiscardingTaskGroup { answering in
                    var parts = inbound.makeAsyncIterator()
                    while true {
                        let part: FramePart?
                        do {
                            part = try await parts.next()
                        } catch let error as CairnError {
                            // A framing error: say why, then close.
                            self.logger.warning("closing connection after a protocol violation", metadata: ["peer": "\(peer)", "error": "\(error)"])
                            await self.send(.whole(ChunkResponse(error: error), nil), requestID: 0, to: outbound)
                            return
                        }
                        guard let part else { return }
                        guard case .head(let preamble, let header) = part else {
                            preconditionFailure("frame decoder yielded a body part outside a frame")
                        }
                        try await slots.acquire()
                        let answer = await self.receive(preamble: preamble, header: header, parts: &parts)
                        answering.addTask {
                            defer { slots.release() }
                            let reply: Reply
                            do {
                                reply = try await answer()
                            } catch {
                                // Every failure of a request is its answer, with the error's code.
                                reply = .whole(ChunkResponse(error: error as? CairnError ?? CairnError(.internal, "request failed", cause: error)), nil)
                            }
                            await self.send(reply, requestID: preamble.requestID, to: outbound)
                        }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Reads the body parts of the current frame through `.end` (bounded by the frame's body length).
    private func drainBody(_ parts: inout NIOAsyncChannelInboundStream<FramePart>.AsyncIterator) async throws {
        while let part = try await parts.next() {
            if case .end = part { return }
        }
        throw CairnError(.protocolViolation, "connection closed in the middle of a frame")
    }

    /// What answers one request, once its frame has been read; what it throws is the answer.
    private typealias Answer = @Sendable () async throws -> Reply

    /// A request's answer: a response with its whole body in memory, or (a whole-chunk get) a
    /// response whose body is a checked chunk file, sent from the page cache.
    private enum Reply: Sendable {
        case whole(ChunkResponse, ByteBuffer?)
        case file(ChunkResponse, CheckedChunkFile)
    }

    /// Writes one answer. A file body's descriptor is closed once it is sent, or when the frame
    /// is dropped because the connection closed.
    private func send(_ reply: Reply, requestID: UInt64, to outbound: NIOAsyncChannelOutboundWriter<OutboundFrame>) async {
        switch reply {
        case .whole(let response, let body):
            try? await outbound.write(OutboundFrame(kind: .response, requestID: requestID,
                                                    header: (try? response.serializedBytes()) ?? [], body: body))
        case .file(let response, let file):
            try? await outbound.write(.fileBody(kind: .response, requestID: requestID, header: (try? response.serializedBytes()) ?? [],
                                                descriptor: file.descriptor, length: file.length))
        }
    }

    /// Makes a buffer of `count` bytes filled by `fill`: the `output` of a chunk store read that
    /// reads straight into a network buffer.
    private static func byteBuffer(_ allocator: ByteBufferAllocator)
        -> (_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(CairnError) -> Void) throws(CairnError) -> ByteBuffer {
        { (count, fill) throws(CairnError) -> ByteBuffer in
            var buffer = allocator.buffer(capacity: count)
            _ = try typedCairnErrors {
                try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
                    try fill(UnsafeMutableRawBufferPointer(rebasing: raw[..<count]))
                    return count
                }
            }
            return buffer
        }
    }

    /// Reads the rest of one request's frame (a large put's body goes to disk as it arrives, a
    /// small one's is gathered) and returns the work that answers it, to run beside the next
    /// requests.
    private func receive(preamble: FramePreamble, header: ByteBuffer,
                         parts: inout NIOAsyncChannelInboundStream<FramePart>.AsyncIterator) async -> Answer {
        do {
            let request: ChunkRequest
            do {
                request = try ChunkRequest(serializedBytes: Array(header.readableBytesView))
            } catch {
                try await drainBody(&parts)
                throw CairnError(.invalidArgument, "malformed request header", cause: error)
            }
            if case .put(let put) = request.op {
                let commit = try await self.put(put, length: preamble.bodyLength, parts: &parts)
                return { .whole(try await commit(), nil) }
            }
            if preamble.bodyLength > 0 {
                try await drainBody(&parts)
                throw CairnError(.invalidArgument, "only a put carries a body")
            }
            try await drainBody(&parts)
            return { try await self.handleControl(request) }
        } catch {
            return { throw error }
        }
    }

    /// Receives a put's body and returns its commit, which runs beside the connection's next
    /// requests; the transfer permit is held until it is done. A body larger than
    /// `wholePutBytesMax` is hashed and written as it arrives, and its commit (the check of the
    /// hash, fsync, rename and directory fsync) holds no buffer; a smaller one is gathered and
    /// stored whole by its commit.
    private func put(_ request: Cairn_Chunk_V1_PutRequest, length: Int,
                     parts: inout NIOAsyncChannelInboundStream<FramePart>.AsyncIterator) async throws -> @Sendable () async throws -> ChunkResponse {
        let id: ChunkID
        do {
            id = try ChunkID(field: request.id)
        } catch {
            try await drainBody(&parts)
            throw error
        }
        try await transfers.acquire()
        var permitHandedOn = false
        defer { if !permitHandedOn { transfers.release() } }
        if length <= Self.wholePutBytesMax {
            let body = try await gatherBody(length: length, parts: &parts)
            permitHandedOn = true
            let threadPool = self.threadPool, transfers = self.transfers, store = self.store
            return {
                defer { transfers.release() }
                let outcome = try await threadPool.runIfActive {
                    try typedCairnErrors { try body.withUnsafeReadableBytes { raw in try store.put(id: id, bytes: raw) } }
                }
                var response = ChunkResponse()
                response.put.alreadyPresent = outcome == .alreadyPresent
                return response
            }
        }
        let session: PutSession
        do {
            session = try await threadPool.runIfActive { [store] in try store.beginPut(id: id, length: length) }
        } catch {
            try await drainBody(&parts)
            throw error
        }
        // Body parts go to the hashing and writing lanes as they arrive; the event loop goes on
        // reading the next ones meanwhile (up to the connection's buffering bound).
        let pipeline = PutPipeline(session: session, threadPool: threadPool)
        var ended = false
        do {
            receiving: while let part = try await parts.next() {
                switch part {
                case .body(let bytes):
                    try await pipeline.add(bytes)
                case .end:
                    ended = true
                    break receiving
                case .head:
                    preconditionFailure("frame decoder yielded a head inside a frame")
                }
            }
        } catch {
            _ = await pipeline.finish()
            _ = try? await threadPool.runIfActive { session.abort() }
            throw error
        }
        guard ended else {
            // The peer went away mid-chunk: the session's temp file is removed.
            _ = await pipeline.finish()
            _ = try? await threadPool.runIfActive { session.abort() }
            throw CairnError(.protocolViolation, "connection closed in the middle of a put")
        }
        permitHandedOn = true
        let threadPool = self.threadPool, transfers = self.transfers
        return {
            defer { transfers.release() }
            if let failure = await pipeline.finish() {
                _ = try? await threadPool.runIfActive { session.abort() }
                throw failure
            }
            let outcome = try await threadPool.runIfActive { try session.commit() }
            var response = ChunkResponse()
            response.put.alreadyPresent = outcome == .alreadyPresent
            return response
        }
    }

    /// A put body of at most this many bytes is gathered in memory and stored by one task on
    /// the thread pool (create, hash, write, fsync, rename, directory fsync), instead of going
    /// through the hashing and writing lanes part by part: a small chunk's put then crosses
    /// between the event loop and the pool once, not three times. Each is copied into a buffer
    /// of its own size (a part is a slice of a receive buffer of up to
    /// `FrameDecoder.bodyPartBytesMax`, which it would otherwise keep alive), so at most
    /// `transfersMax` × `wholePutBytesMax` bytes are held.
    public static let wholePutBytesMax = 256 << 10

    /// Reads a put's whole body (exactly `length` bytes, ended by the frame's end).
    private func gatherBody(length: Int, parts: inout NIOAsyncChannelInboundStream<FramePart>.AsyncIterator) async throws -> ByteBuffer {
        var body = ByteBuffer()
        body.reserveCapacity(length)
        while let part = try await parts.next() {
            switch part {
            case .body(var bytes):
                body.writeBuffer(&bytes)
            case .end:
                return body
            case .head:
                preconditionFailure("frame decoder yielded a head inside a frame")
            }
        }
        throw CairnError(.protocolViolation, "connection closed in the middle of a put")
    }

    private func handleControl(_ request: ChunkRequest) async throws -> Reply {
        var response = ChunkResponse()
        let store = self.store
        switch request.op {
        case .get(let get):
            let id = try ChunkID(field: get.id)
            try await transfers.acquire()
            defer { transfers.release() }
            guard get.offset <= UInt64(Int.max), get.length <= UInt64(configuration.store.limits.chunkBytesMax) else {
                throw CairnError(.invalidArgument, "range \(get.offset)+\(get.length) is out of bounds")
            }
            // Whole-chunk reads are checked like range reads, block by block against the
            // CRC-32C checksums written at put time from bytes that had hashed to the ID: a
            // flipped byte fails the get, quarantines the chunk and is never sent. The SHA-256 of
            // a whole chunk is the client's to check (`ChunkClient.get` re-hashes every chunk
            // it returns); `verify` and the scrubber still re-hash with SHA-256 here, and a
            // missing or damaged checksum file falls back to SHA-256 (`ChunkStore.read`).
            // Re-hashing on both sides would spend a second core on each byte. Once checked,
            // the chunk goes from the page cache to the socket with sendfile.
            if get.offset == 0 && get.length == 0 && !get.withChecksums,
               let file = try await threadPool.runIfActive({ try store.openChecked(id) }) {
                response.get.chunkLength = UInt64(file.length)
                return .file(response, file)
            }
            let offset = Int(get.offset)
            let length = get.length == 0 ? nil : Int(get.length)
            let withChecksums = get.withChecksums
            @Sendable func answer(_ read: (output: ByteBuffer, range: Range<Int>, chunkLength: Int, blocks: VerifiedBlocks))
                -> (ByteBuffer, Int, VerifiedBlocks) {
                var body = read.output
                if !withChecksums {
                    body.moveWriterIndex(to: read.range.upperBound)
                    body.moveReaderIndex(to: read.range.lowerBound)
                }
                return (body, read.chunkLength, read.blocks)
            }
            // A range of a chunk read recently, in the page cache: read and checked right here,
            // on the connection's event loop, without a trip to the I/O pool and back.
            let allocator = ByteBufferAllocator()
            let (body, chunkLength, blocks): (ByteBuffer, Int, VerifiedBlocks)
            if let cached = store.readIfCached(id, offset: offset, length: length, into: Self.byteBuffer(allocator)) {
                (body, chunkLength, blocks) = answer(cached)
            } else {
                (body, chunkLength, blocks) = try await threadPool.runIfActive {
                    answer(try store.read(id, offset: offset, length: length, into: Self.byteBuffer(allocator)))
                }
            }
            response.get.chunkLength = UInt64(chunkLength)
            response.get.offset = get.offset
            if withChecksums {
                response.get.bodyOffset = UInt64(blocks.offset)
                response.get.blockBytes = UInt32(blocks.blockBytes)
                response.get.blockChecksums = blocks.checksums
            }
            return .whole(response, body)
        case .has(let has):
            guard has.ids.count <= configuration.store.limits.batchIDsMax else {
                throw CairnError(.tooLarge, "has of \(has.ids.count) IDs exceeds batchIDsMax \(configuration.store.limits.batchIDsMax)")
            }
            let ids = try has.ids.map { (field) throws(CairnError) in try ChunkID(field: field) }
            response.has.present = try await threadPool.runIfActive { store.has(ids) }
        case .delete(let delete):
            guard delete.ids.count <= configuration.store.limits.batchIDsMax else {
                throw CairnError(.tooLarge, "delete of \(delete.ids.count) IDs exceeds batchIDsMax")
            }
            let ids = try delete.ids.map { (field) throws(CairnError) in try ChunkID(field: field) }
            response.delete.existed = try await threadPool.runIfActive { try ids.map { (id) throws(CairnError) in try store.delete(id) } }
            logger.info("deleted chunks", metadata: ["requested": "\(ids.count)", "existed": "\(response.delete.existed.filter { $0 }.count)"])
        case .list(let list):
            let after = list.after.isEmpty ? nil : try ChunkID(field: list.after, name: "after")
            let limit = list.limit == 0 ? configuration.store.limits.listPageEntriesMax : Int(min(list.limit, UInt32(Int32.max)))
            let page = try await threadPool.runIfActive { try store.list(after: after, limit: limit) }
            response.list.more = page.more
            response.list.entries = page.entries.map { info in
                var entry = Cairn_Chunk_V1_ChunkEntry()
                entry.id = info.id.field
                entry.sizeBytes = UInt64(info.sizeBytes)
                entry.storedAtNs = info.storedAtNanoseconds
                return entry
            }
        case .stat:
            let stats = try await threadPool.runIfActive { try store.stats() }
            let scrub = scrubStats
            response.stat.capacityBytes = stats.capacityBytes
            response.stat.availableBytes = stats.availableBytes
            response.stat.reserveBytes = stats.reserveBytes
            response.stat.usedBytes = stats.usedBytes
            response.stat.chunkCount = stats.chunkCount
            response.stat.quarantinedTotal = stats.quarantinedTotal
            response.stat.rejectedPutTotal = stats.rejectedPutTotal
            response.stat.corruptReadTotal = stats.corruptReadTotal
            response.stat.scrubPassesTotal = scrub.passesTotal
            response.stat.scrubbedChunksTotal = scrub.chunksTotal
            response.stat.scrubbedBytesTotal = scrub.bytesTotal
            response.stat.scrubCorruptTotal = scrub.corruptTotal
            response.stat.chunkBytesMax = Int64(configuration.store.limits.chunkBytesMax)
        case .verify(let verify):
            let id = try ChunkID(field: verify.id)
            try await transfers.acquire()
            defer { transfers.release() }
            let size = try await threadPool.runIfActive { try store.verify(id) }
            response.verify.ok = true
            response.verify.sizeBytes = UInt64(size)
        case .put:
            preconditionFailure("puts are handled before control requests")
        case nil:
            throw CairnError(.invalidArgument, "request names no operation")
        }
        return .whole(response, nil)
    }
}
