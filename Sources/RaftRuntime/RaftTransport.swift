import CairnCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import RaftCore
import Synchronization

/// Raft peer traffic over gRPC: one long-lived client stream (`RaftPeer.Deliver`) from this node
/// to each peer, fed by a bounded `BatchQueue`; and the service that receives such streams and
/// hands each message to the local Raft thread.
final class RaftTransport: Sendable {
    let id: NodeID
    private let queueMessagesMax: Int
    private let batchBytesMax: Int
    let messageBytesMax: Int
    private let logger: Logger
    private let state: Mutex<State>
    /// Where received messages go: the node's inbox.
    private let deliver: @Sendable (Message) -> Void
    private let newSenders: AsyncStream<PeerSender>
    private let newSendersContinuation: AsyncStream<PeerSender>.Continuation

    private struct State {
        var senders: [NodeID: PeerSender] = [:]
        var stopped = false
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
    }

    init(id: NodeID, peers: [NodeID: HostPort], queueMessagesMax: Int, batchBytesMax: Int, messageBytesMax: Int, logger: Logger,
         deliver: @escaping @Sendable (Message) -> Void) {
        self.id = id
        self.deliver = deliver
        self.queueMessagesMax = queueMessagesMax
        self.batchBytesMax = batchBytesMax
        self.messageBytesMax = messageBytesMax
        self.logger = logger
        state = Mutex(State())
        (newSenders, newSendersContinuation) = AsyncStream.makeStream(of: PeerSender.self)
        for (peer, address) in peers.sorted(by: { $0.key < $1.key }) where peer != id { setPeer(peer, address) }
    }

    /// Queues a message for its peer without blocking; false if it cannot be queued (unknown
    /// peer, full queue), which the caller reports to the core as unreachable.
    func send(_ message: Message) -> Bool {
        guard let sender = state.withLock({ $0.senders[message.to] }) else { return false }
        return sender.queue.push(message.encode())
    }

    /// Adds, moves or (with nil) removes a peer.
    func setPeer(_ peer: NodeID, _ address: HostPort?) {
        guard peer != id else { return }
        let (old, new) = state.withLock { s -> (PeerSender?, PeerSender?) in
            if let existing = s.senders[peer], existing.address == address { return (nil, nil) }
            let old = s.senders.removeValue(forKey: peer)
            guard let address, !s.stopped else { return (old, nil) }
            let sender = PeerSender(from: id, to: peer, address: address,
                                    queue: BatchQueue(elementsMax: queueMessagesMax, batchWeightMax: batchBytesMax, drainsOnClose: false, weigh: \.count),
                                    logger: logger)
            s.senders[peer] = sender
            return (old, sender)
        }
        old?.queue.close()
        if let new { newSendersContinuation.yield(new) }
    }

    /// Runs every peer's sender until `stop()`.
    func run() async {
        await withDiscardingTaskGroup { group in
            for await sender in newSenders {
                group.addTask { await sender.run() }
            }
            group.cancelAll()
        }
    }

    func stop() {
        let (senders, waiters) = state.withLock { s -> ([PeerSender], [CheckedContinuation<Void, Never>]) in
            s.stopped = true
            defer {
                s.senders = [:]
                s.stopWaiters = []
            }
            return (Array(s.senders.values), s.stopWaiters)
        }
        for sender in senders { sender.queue.close() }
        newSendersContinuation.finish()
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once `stop()` has been called: inbound peer streams end then, so that a server
    /// shutting down gracefully is not held open by peers that never stop streaming.
    func waitUntilStopped() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.stopped { return true }
                s.stopWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Hands a received batch to the Raft thread.
    func received(_ batch: Cairn_Raft_V1_RaftBatch) throws(RPCError) {
        guard batch.to == id else {
            throw RPCError(code: .failedPrecondition, message: "this is node \(id), not \(batch.to)")
        }
        for data in batch.messages {
            do {
                deliver(try Message(decoding: Array(data)))
            } catch {
                logger.warning("dropping an undecodable message from a peer", metadata: ["from": "\(batch.from)", "error": "\(error)"])
            }
        }
    }

    /// The gRPC service receiving peer streams; register it on the node's server.
    var service: RaftPeerService { RaftPeerService(transport: self) }
}

/// `RaftPeer` service: each inbound stream is one peer's messages to this node.
public struct RaftPeerService: Cairn_Raft_V1_RaftPeer.SimpleServiceProtocol {
    let transport: RaftTransport

    public func deliver(
        request: RPCAsyncSequence<Cairn_Raft_V1_RaftBatch, any Error>,
        context: ServerContext
    ) async throws -> Cairn_Raft_V1_DeliverSummary {
        let transport = self.transport
        let received = try await withThrowingTaskGroup(of: UInt64?.self) { group in
            group.addTask {
                var count: UInt64 = 0
                for try await batch in request {
                    try transport.received(batch)
                    count += UInt64(batch.messages.count)
                }
                return count
            }
            group.addTask {
                await transport.waitUntilStopped()
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first ?? 0
        }
        var summary = Cairn_Raft_V1_DeliverSummary()
        summary.messagesReceived = received
        return summary
    }
}

/// Sends one peer's queue over a `Deliver` stream, reconnecting with bounded backoff.
final class PeerSender: Sendable {
    let from: NodeID
    let to: NodeID
    let address: HostPort
    let queue: BatchQueue<[UInt8]>
    private let logger: Logger
    static let backoffMin: Duration = .milliseconds(20)
    static let backoffMax: Duration = .seconds(1)

    init(from: NodeID, to: NodeID, address: HostPort, queue: BatchQueue<[UInt8]>, logger: Logger) {
        self.from = from
        self.to = to
        self.address = address
        self.queue = queue
        self.logger = logger
    }

    func run() async {
        var backoff = Self.backoffMin
        while !Task.isCancelled && !queue.isClosed {
            do {
                try await withGRPCClient(transport: .http2NIOPosix(
                    target: .ipv4(address: address.host, port: address.port),
                    transportSecurity: .plaintext,
                    config: .defaults {
                        $0.http2.targetWindowSize = 16 << 20
                        $0.http2.maxFrameSize = 1 << 20
                        // The peer queue already batches: a flush delay would only add latency.
                        $0.connection.flushCoalescing = nil
                    })
                ) { client in
                    let peer = Cairn_Raft_V1_RaftPeer.Client(wrapping: client)
                    var options = CallOptions.defaults
                    options.waitForReady = true
                    options.maxRequestMessageBytes = 64 << 20
                    _ = try await peer.deliver(options: options, requestProducer: { [queue, from, to] writer in
                        while let messages = await queue.popBatch() {
                            var batch = Cairn_Raft_V1_RaftBatch()
                            batch.from = from
                            batch.to = to
                            batch.messages = messages.map { Data($0) }
                            try await writer.write(batch)
                        }
                    })
                }
                backoff = Self.backoffMin
            } catch {
                logger.debug("peer stream ended", metadata: ["peer": "\(to)", "address": "\(address)", "error": "\(error)"])
            }
            if queue.isClosed { return }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, Self.backoffMax)
        }
    }
}
