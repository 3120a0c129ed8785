import CairnCore
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import RaftCore
import Synchronization

/// Raft peer traffic: one TCP connection from this node to each peer, carrying RaftCore's own
/// message encoding in length-prefixed frames, on a SwiftNIO event loop of its own.
///
/// Why not gRPC streams (as the first version did): a message there costs HTTP/2 framing, a
/// protobuf wrapper and four thread hand-offs per hop (event loop → task → Raft thread →
/// task → event loop), and on two cores those hand-offs were most of a follower's CPU. Here a
/// received message goes from the event loop into the Raft loop, which runs on that same event
/// loop, and its messages go out with one flush per peer per `Ready`, without a hand-off.
///
/// Peers find each other through gRPC, which every node serves anyway: a node asks a peer's
/// `RaftPeer.Endpoint` (at the address the group knows it by) for the port of its Raft
/// listener, on the same host, then connects there. The address a member is known by stays
/// its one gRPC `HOST:PORT`.
///
/// Wire format, big-endian: the connecting side first sends a hello — u32 magic "CRFT", u8
/// version 1, u64 from, u64 to — then frames of u32 length + one encoded `Message`. The
/// receiver checks the magic, the version, that `to` is itself, and every length against
/// `messageBytesMax`; anything else closes the connection (Raft tolerates lost messages).
final class RaftTransport: Sendable {
    let id: NodeID
    /// Where the Raft listener binds: the host of this node's own address, and a port (0: any free).
    private let listenHost: String
    private let listenPort: Int
    private let queueMessagesMax: Int
    let messageBytesMax: Int
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    /// Whether the group is this transport's own (shut down when it stops) or its owner's.
    private let ownsGroup: Bool
    /// The group's one event loop: the connections' and the Raft loop's (`RaftLoop.start`).
    let eventLoop: any EventLoop
    private let state: Mutex<State>
    /// Where received messages go: the node's inbox. Called on the transport's event loop.
    private let deliver: @Sendable (Message) -> Void
    private let newLinks: AsyncStream<PeerLink>
    private let newLinksContinuation: AsyncStream<PeerLink>.Continuation

    private struct State {
        var links: [NodeID: PeerLink] = [:]
        var listener: (any Channel)?
        var listeningPort: Int?
        var stopped = false
    }

    /// - Parameter eventLoop: the thread to run on, shared with its owner's server (nil: one of
    ///   its own).
    init(id: NodeID, listenHost: String, listenPort: Int, peers: [NodeID: HostPort], queueMessagesMax: Int, messageBytesMax: Int,
         eventLoop shared: SharedEventLoop?, logger: Logger, deliver: @escaping @Sendable (Message) -> Void) {
        self.id = id
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.deliver = deliver
        self.queueMessagesMax = queueMessagesMax
        self.messageBytesMax = messageBytesMax
        self.logger = logger
        group = shared?.group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        ownsGroup = shared == nil
        eventLoop = shared?.eventLoop ?? group.next()
        state = Mutex(State())
        (newLinks, newLinksContinuation) = AsyncStream.makeStream(of: PeerLink.self)
        for (peer, address) in peers.sorted(by: { $0.key < $1.key }) where peer != id { setPeer(peer, address) }
    }

    // MARK: Sending (from the Raft thread)

    /// Queues a message for its peer without blocking; false if it cannot go (unknown or
    /// unconnected peer, full queue), which the caller reports to the core as unreachable.
    /// Nothing leaves before `flush()`.
    func send(_ message: Message) -> Bool {
        guard let link = state.withLock({ $0.links[message.to] }) else { return false }
        return link.enqueue(message.encode())
    }

    /// Hands every peer's queued messages to the network, one write and one flush per peer.
    func flush() {
        let links = state.withLock { Array($0.links.values) }
        for link in links { link.flush() }
    }

    /// Adds, moves or (with nil) removes a peer.
    func setPeer(_ peer: NodeID, _ address: HostPort?) {
        guard peer != id else { return }
        let (old, new) = state.withLock { s -> (PeerLink?, PeerLink?) in
            if let existing = s.links[peer], existing.address == address { return (nil, nil) }
            let old = s.links.removeValue(forKey: peer)
            guard let address, !s.stopped else { return (old, nil) }
            let link = PeerLink(from: id, to: peer, address: address, group: group, queueMessagesMax: queueMessagesMax,
                                messageBytesMax: messageBytesMax, logger: logger)
            s.links[peer] = link
            return (old, link)
        }
        old?.close()
        if let new { newLinksContinuation.yield(new) }
    }

    // MARK: Running

    /// Binds the Raft listener, then runs every peer's connection until `stop()`.
    func run() async {
        do {
            let listener = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { [id, messageBytesMax, deliver, logger] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(RaftFrameDecoder(expectedTo: id, messageBytesMax: messageBytesMax)))
                        try channel.pipeline.syncOperations.addHandler(RaftInboundHandler(deliver: deliver, logger: logger))
                    }
                }
                .bind(host: listenHost, port: listenPort).get()
            let stopped = state.withLock { s -> Bool in
                s.listener = listener
                s.listeningPort = listener.localAddress?.port
                return s.stopped
            }
            if stopped { try? await listener.close() }
            logger.debug("raft listener bound", metadata: ["address": "\(listener.localAddress.map { "\($0)" } ?? "?")"])
        } catch {
            logger.error("cannot bind the Raft listener; peers cannot reach this node",
                         metadata: ["host": "\(listenHost)", "port": "\(listenPort)", "error": "\(error)"])
        }
        await withDiscardingTaskGroup { tasks in
            for await link in newLinks {
                tasks.addTask { await link.run() }
            }
            tasks.cancelAll()
        }
        if ownsGroup { try? await group.shutdownGracefully() }
    }

    func stop() {
        let (links, listener) = state.withLock { s -> ([PeerLink], (any Channel)?) in
            s.stopped = true
            defer { s.links = [:] }
            return (Array(s.links.values), s.listener)
        }
        for link in links { link.close() }
        listener?.close(promise: nil)
        newLinksContinuation.finish()
    }

    /// The port of the Raft listener, once bound.
    var listeningPort: Int? { state.withLock { $0.listeningPort } }

    /// The gRPC service that tells peers where the Raft listener is; register it on the
    /// node's server.
    var service: RaftPeerService { RaftPeerService(transport: self) }
}

/// `RaftPeer` service: where this node's Raft listener is.
public struct RaftPeerService: Cairn_Raft_V1_RaftPeer.SimpleServiceProtocol {
    let transport: RaftTransport

    public func endpoint(request: Cairn_Raft_V1_EndpointRequest, context: ServerContext) async throws -> Cairn_Raft_V1_EndpointResponse {
        guard request.to == transport.id else {
            throw RPCError(code: .failedPrecondition, message: "this is node \(transport.id), not \(request.to)")
        }
        guard let port = transport.listeningPort else {
            throw RPCError(code: .unavailable, message: "the Raft listener is not bound yet")
        }
        var response = Cairn_Raft_V1_EndpointResponse()
        response.id = transport.id
        response.port = UInt32(port)
        return response
    }
}

// MARK: - One peer

/// The connection to one peer: asks the peer's gRPC service for its Raft port, connects,
/// sends the hello, then carries what the Raft thread queues; on any failure it reconnects
/// with bounded backoff, dropping what was queued meanwhile (Raft resends).
final class PeerLink: Sendable {
    let from: NodeID
    let to: NodeID
    let address: HostPort
    private let group: MultiThreadedEventLoopGroup
    private let queueMessagesMax: Int
    private let messageBytesMax: Int
    private let logger: Logger
    private let state = Mutex(LinkState())
    static let backoffMin: Duration = .milliseconds(20)
    static let backoffMax: Duration = .seconds(1)
    /// Bytes a connection may hold unsent before messages to it are refused.
    static let unsentBytesMax = 16 << 20

    private struct LinkState {
        var channel: (any Channel)?
        var queued: [[UInt8]] = []
        var closed = false
    }

    init(from: NodeID, to: NodeID, address: HostPort, group: MultiThreadedEventLoopGroup, queueMessagesMax: Int, messageBytesMax: Int,
         logger: Logger) {
        self.from = from
        self.to = to
        self.address = address
        self.group = group
        self.queueMessagesMax = queueMessagesMax
        self.messageBytesMax = messageBytesMax
        self.logger = logger
    }

    /// Queues an encoded message; false if the peer is not connected, the connection is
    /// backed up, or too many messages are queued.
    func enqueue(_ bytes: [UInt8]) -> Bool {
        guard bytes.count <= messageBytesMax else { return false }
        return state.withLock { s in
            guard let channel = s.channel, channel.isWritable, s.queued.count < queueMessagesMax else { return false }
            s.queued.append(bytes)
            return true
        }
    }

    /// Writes what is queued to the connection with one flush: at once when called on the
    /// connection's event loop (the Raft loop's own), so a leader's appends are on the wire
    /// before it starts its fsync.
    func flush() {
        let (channel, batch) = state.withLock { s -> ((any Channel)?, [[UInt8]]) in
            defer { s.queued = [] }
            return (s.channel, s.queued)
        }
        guard let channel, !batch.isEmpty else { return }
        let write: @Sendable () -> Void = {
            var buffer = channel.allocator.buffer(capacity: batch.reduce(0) { $0 + 4 + $1.count })
            for bytes in batch {
                buffer.writeInteger(UInt32(bytes.count))
                buffer.writeBytes(bytes)
            }
            channel.writeAndFlush(buffer, promise: nil)
        }
        if channel.eventLoop.inEventLoop { write() } else { channel.eventLoop.execute(write) }
    }

    func close() {
        let channel = state.withLock { s -> (any Channel)? in
            s.closed = true
            defer { s.channel = nil }
            return s.channel
        }
        channel?.close(promise: nil)
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    func run() async {
        var backoff = Self.backoffMin
        while !Task.isCancelled && !isClosed {
            do {
                let port = try await raftPort()
                let channel = try await ClientBootstrap(group: group)
                    .connectTimeout(.seconds(2))
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelOption(.writeBufferWaterMark, value: .init(low: Self.unsentBytesMax / 2, high: Self.unsentBytesMax))
                    .connect(host: address.host, port: port).get()
                var hello = channel.allocator.buffer(capacity: RaftFrameDecoder.helloBytes)
                hello.writeInteger(RaftFrameDecoder.magic)
                hello.writeInteger(RaftFrameDecoder.version)
                hello.writeInteger(from)
                hello.writeInteger(to)
                try await channel.writeAndFlush(hello).get()
                let closedMeanwhile = state.withLock { s -> Bool in
                    if s.closed { return true }
                    s.channel = channel
                    s.queued = []
                    return false
                }
                if closedMeanwhile {
                    try? await channel.close()
                    return
                }
                logger.debug("connected to peer", metadata: ["peer": "\(to)", "address": "\(address.host):\(port)"])
                backoff = Self.backoffMin
                try? await withTaskCancellationHandler {
                    try await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
                state.withLock { s in
                    if s.channel === channel { s.channel = nil }
                }
            } catch {
                logger.debug("peer unreachable", metadata: ["peer": "\(to)", "address": "\(address)", "error": "\(error)"])
            }
            if isClosed { return }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, Self.backoffMax)
        }
    }

    /// Asks the peer's gRPC service where its Raft listener is.
    private func raftPort() async throws -> Int {
        try await withGRPCClient(transport: .http2NIOPosix(
            target: .ipv4(address: address.host, port: address.port), transportSecurity: .plaintext)
        ) { client in
            var request = Cairn_Raft_V1_EndpointRequest()
            request.from = from
            request.to = to
            var options = CallOptions.defaults
            options.timeout = .seconds(2)
            let response = try await Cairn_Raft_V1_RaftPeer.Client(wrapping: client).endpoint(request, options: options)
            guard response.id == to, response.port > 0, response.port <= UInt32(UInt16.max) else {
                throw CairnError(.protocolViolation, "\(address) answered as node \(response.id) with port \(response.port)")
            }
            return Int(response.port)
        }
    }
}

// MARK: - Framing

/// Decodes the hello, then one `Message` per frame; throws (closing the connection) on
/// anything unexpected.
struct RaftFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = Message
    static let magic: UInt32 = 0x4352_4654  // "CRFT"
    static let version: UInt8 = 1
    static let helloBytes = 4 + 1 + 8 + 8

    let expectedTo: NodeID
    let messageBytesMax: Int
    private var greeted = false

    init(expectedTo: NodeID, messageBytesMax: Int) {
        self.expectedTo = expectedTo
        self.messageBytesMax = messageBytesMax
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if !greeted {
            guard buffer.readableBytes >= Self.helloBytes else { return .needMoreData }
            let magic = buffer.readInteger(as: UInt32.self)!
            let version = buffer.readInteger(as: UInt8.self)!
            _ = buffer.readInteger(as: UInt64.self)!
            let to = buffer.readInteger(as: UInt64.self)!
            guard magic == Self.magic else { throw CairnError(.protocolViolation, "not a Cairn Raft connection") }
            guard version == Self.version else { throw CairnError(.protocolViolation, "unsupported Raft wire version \(version)") }
            guard to == expectedTo else { throw CairnError(.protocolViolation, "a peer took this node for \(to), it is \(expectedTo)") }
            greeted = true
            return .continue
        }
        guard var frame = try buffer.readLengthPrefixedFrame(bytesMax: messageBytesMax, of: "Raft") else { return .needMoreData }
        let bytes = frame.readBytes(length: frame.readableBytes)!
        let message: Message
        do {
            message = try Message(decoding: bytes)
        } catch {
            throw CairnError(.protocolViolation, "undecodable Raft message: \(error)")
        }
        guard message.to == expectedTo else {
            throw CairnError(.protocolViolation, "a message for node \(message.to) reached node \(expectedTo)")
        }
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }
}

/// Hands each received message to the Raft thread; closes the connection on a decoding error.
final class RaftInboundHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Message
    private let deliver: @Sendable (Message) -> Void
    private let logger: Logger

    init(deliver: @escaping @Sendable (Message) -> Void, logger: Logger) {
        self.deliver = deliver
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        deliver(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("closing a Raft connection", metadata: ["peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "error": "\(error)"])
        context.close(promise: nil)
    }
}
