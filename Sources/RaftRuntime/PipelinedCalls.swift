import CairnCore
import GRPCCore
import Synchronization

/// A call or an answer of a pipelined stream: every call carries an id chosen by the client,
/// and its answer the same id (answers come back in the order calls finish).
public protocol PipelinedMessage: Sendable {
    var id: UInt64 { get set }
    /// About how many bytes it takes on the wire (to bound the messages that carry batches).
    var wireBytes: Int { get }
}

/// One message of a pipelined stream: as many calls (or answers) as were ready at once.
public protocol PipelinedBatch: Sendable {
    associatedtype Item: PipelinedMessage
    init()
    var items: [Item] { get set }
}

/// A response of a pipelined stream: a result, or the error a unary call would have thrown
/// (with the leader's address on a not-leader answer, as `LeaderFollower` expects).
public protocol PipelinedResponse: PipelinedMessage {
    init(id: UInt64, error: RPCError)
    /// The error this response carries, if it is one.
    var rpcError: RPCError? { get }
}

/// The error message of a pipelined response (each service's `CallError`): a gRPC status
/// code, its message, and the leader's address on a not-leader answer.
public protocol PipelinedCallError: Sendable {
    init()
    var code: Int32 { get set }
    var message: String { get set }
    var leader: String { get set }
}

/// A pipelined response whose failure travels in an `error` field of a `PipelinedCallError`
/// type: the error conversions come with it.
public protocol PipelinedResponseWithError: PipelinedResponse {
    associatedtype CallError: PipelinedCallError
    init()
    var error: CallError { get set }
    var hasError: Bool { get }
}

extension PipelinedResponseWithError {
    public init(id: UInt64, error: RPCError) {
        self.init()
        self.id = id
        var fields = CallError()
        fields.code = Int32(error.code.rawValue)
        fields.message = error.message
        fields.leader = error.metadata[stringValues: leaderMetadataKey].first(where: { _ in true }) ?? ""
        self.error = fields
    }

    public var rpcError: RPCError? {
        guard hasError else { return nil }
        var metadata = Metadata()
        if !error.leader.isEmpty { metadata.addString(error.leader, forKey: leaderMetadataKey) }
        let status = Status.Code(rawValue: Int(error.code)) ?? .unknown
        return RPCError(code: RPCError.Code(status) ?? .unknown, message: error.message, metadata: metadata)
    }
}

/// Many calls on one long-lived connection instead of one gRPC call each: a unary call costs
/// an HTTP/2 stream set-up and several thread hops on each side (0.35-0.85 ms here,
/// FIELD-NOTES), a message on an open connection a few microseconds. The connection is a
/// `FramedPipeline` (plain TCP frames, served on the replica's event loop).
public enum PipelinedCalls {
    /// Calls or answers are gathered into one message up to about this many bytes (a single
    /// larger one travels alone).
    public static let messageBytesMax = 1 << 20
}

/// The client side of a pipelined stream to one server: callers from any task send requests
/// on one shared stream and each waits for its own answer. The stream opens on first use and
/// again after it ends; when it ends, every call waiting on it fails with the stream's error
/// (`LeaderFollower` then retries it, like a failed unary call). A call unanswered after
/// `callTimeout` fails with `deadlineExceeded` (checked every `callTimeout / 4`, at most a second).
public final class PipelinedClient<Request: PipelinedMessage, Response: PipelinedResponse>: Sendable {
    /// Runs one stream: sends the batches of `requests` (each as one message) until the queue
    /// is closed, handing each answer to `received`; returns when the server ends the stream.
    public typealias Open = @Sendable (_ requests: BatchQueue<Request>, _ received: @escaping @Sendable (Response) -> Void) async throws -> Void

    private struct Waiting {
        var generation: UInt64
        var deadline: ContinuousClock.Instant
        var continuation: CheckedContinuation<Response, any Error>
    }

    private struct State {
        var generation: UInt64 = 0
        var outbound: BatchQueue<Request>?
        var waiting: [UInt64: Waiting] = [:]
        var nextID: UInt64 = 1
        var closed = false
    }

    private let open: Open
    private let state = Mutex(State())
    private let permits: AsyncSemaphore
    public let callTimeout: Duration
    public let callBytesMax: Int
    /// Where the stream's sending and receiving tasks run (nil: the global pool).
    private let executor: (any TaskExecutor)?

    /// - Parameter inflightMax: calls waiting for an answer at once (more wait for a slot).
    /// - Parameter executor: where the stream's tasks run: the event loop of its connection
    ///   (`SharedEventLoop`) saves a thread hand-off per message each way.
    /// - Parameter callBytesMax: the largest call (`wireBytes`) sent; a larger one fails at once
    ///   with `resourceExhausted` (it could not be framed, and would fail the calls beside it).
    public init(inflightMax: Int, callTimeout: Duration, callBytesMax: Int = .max, executor: (any TaskExecutor)? = nil, open: @escaping Open) {
        precondition(callTimeout > .zero && callBytesMax > 0)
        self.callBytesMax = callBytesMax
        self.open = open
        self.executor = executor
        self.callTimeout = callTimeout
        permits = AsyncSemaphore(limit: inflightMax)
    }

    /// Sends `request` (its id is set here) and waits for its answer; an error answer is
    /// thrown as its `RPCError`.
    public func call(_ request: Request) async throws -> Response {
        guard request.wireBytes <= callBytesMax else {
            throw RPCError(code: .resourceExhausted, message: "a call of about \(request.wireBytes) bytes exceeds \(callBytesMax)")
        }
        try await permits.acquire()
        defer { permits.release() }
        let response: Response = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Response, any Error>) in
            let (outbound, id, start) = register(continuation)
            guard let outbound else {
                return continuation.resume(throwing: RPCError(code: .unavailable, message: "the client is closed"))
            }
            if let start {
                Task(executorPreference: executor) { await self.run(generation: start.generation, requests: start.requests) }
            }
            var request = request
            request.id = id
            _ = outbound.push(request)
        }
        if let error = response.rpcError { throw error }
        return response
    }

    /// Records a waiting call: its id, the stream to send it on (nil once closed), and the
    /// stream to start if none is open.
    private func register(_ continuation: CheckedContinuation<Response, any Error>)
        -> (BatchQueue<Request>?, UInt64, (generation: UInt64, requests: BatchQueue<Request>)?) {
        state.withLock { s in
            guard !s.closed else { return (nil, 0, nil) }
            var start: (generation: UInt64, requests: BatchQueue<Request>)?
            if s.outbound == nil {
                let outbound = BatchQueue<Request>(elementsMax: permits.limit, batchWeightMax: PipelinedCalls.messageBytesMax,
                                                   drainsOnClose: true, weigh: { $0.wireBytes })
                s.generation += 1
                s.outbound = outbound
                start = (s.generation, outbound)
            }
            let id = s.nextID
            s.nextID += 1
            s.waiting[id] = Waiting(generation: s.generation, deadline: .now + callTimeout, continuation: continuation)
            return (s.outbound, id, start)
        }
    }

    /// Ends the stream once the calls in flight are answered; later calls fail.
    public func close() {
        let outbound = state.withLock { s -> BatchQueue<Request>? in
            s.closed = true
            return s.outbound
        }
        outbound?.close()
    }

    private func run(generation: UInt64, requests: BatchQueue<Request>) async {
        var failure: any Error = RPCError(code: .unavailable, message: "the server ended the stream")
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await self.open(requests) { [self] response in
                        let waiting = state.withLock { $0.waiting.removeValue(forKey: response.id) }
                        waiting?.continuation.resume(returning: response)
                    }
                }
                group.addTask { await self.expireOverdueCalls(generation: generation) }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            failure = error
        }
        let (outbound, failed) = state.withLock { s -> (BatchQueue<Request>?, [Waiting]) in
            var outbound: BatchQueue<Request>?
            if s.generation == generation {
                outbound = s.outbound
                s.outbound = nil
            }
            let failed = s.waiting.filter { $0.value.generation == generation }
            for id in failed.keys { s.waiting.removeValue(forKey: id) }
            return (outbound, Array(failed.values))
        }
        outbound?.close()
        for waiting in failed { waiting.continuation.resume(throwing: failure) }
    }

    /// Fails the calls of one stream that are past their deadline, until cancelled.
    private func expireOverdueCalls(generation: UInt64) async {
        let period = min(callTimeout / 4, .seconds(1))
        while (try? await Task.sleep(for: period)) != nil {
            let now = ContinuousClock.now
            let overdue = state.withLock { s -> [Waiting] in
                let overdue = s.waiting.filter { $0.value.generation == generation && $0.value.deadline < now }
                for id in overdue.keys { s.waiting.removeValue(forKey: id) }
                return Array(overdue.values)
            }
            for waiting in overdue {
                waiting.continuation.resume(throwing: RPCError(code: .deadlineExceeded, message: "no answer within \(callTimeout)"))
            }
        }
    }
}
