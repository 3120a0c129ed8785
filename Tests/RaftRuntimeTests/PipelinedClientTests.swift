import GRPCCore
import RaftRuntime
import Synchronization
import Testing

/// `PipelinedClient` against scripted streams (no network): answers reach their own callers
/// whatever the order, a stream that ends fails exactly the calls it left unanswered and the
/// next call opens a new stream, and an unanswered call times out.
@Suite struct PipelinedClientTests {
    struct Request: PipelinedMessage {
        var id: UInt64 = 0
        var value: Int
        var wireBytes: Int { 16 }
    }

    struct Response: PipelinedResponse {
        var id: UInt64
        var value: Int
        var error: RPCError?
        init(id: UInt64, value: Int) {
            self.id = id
            self.value = value
        }
        init(id: UInt64, error: RPCError) {
            self.id = id
            value = -1
            self.error = error
        }
        var rpcError: RPCError? { error }
        var wireBytes: Int { 16 }
    }

    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    @Test func answersInAnyOrderReachTheirOwnCallers() async throws {
        // The server holds requests until it has 8, then answers them in reverse order, odd ones as errors.
        let client = PipelinedClient<Request, Response>(inflightMax: 16, callTimeout: .seconds(30)) { requests, received in
            var held: [Request] = []
            await requests.forEachBatch { batch in
                for request in batch {
                    held.append(request)
                    guard held.count == 8 else { continue }
                    for r in held.reversed() {
                        received(r.value % 2 == 0 ? Response(id: r.id, value: r.value * 10)
                                                  : Response(id: r.id, error: RPCError(code: .aborted, message: "odd \(r.value)")))
                    }
                    held = []
                }
            }
        }
        try await withThrowingTaskGroup(of: (Int, Result<Int, RPCError>).self) { group in
            for value in 0..<8 {
                group.addTask {
                    do {
                        return (value, .success(try await client.call(Request(value: value)).value))
                    } catch let error as RPCError {
                        return (value, .failure(error))
                    }
                }
            }
            for try await (value, result) in group {
                switch result {
                case .success(let answer): #expect(value % 2 == 0 && answer == value * 10)
                case .failure(let error): #expect(value % 2 == 1 && error.code == .aborted && error.message == "odd \(value)")
                }
            }
        }
        client.close()
    }

    @Test func aStreamThatEndsFailsItsCallsAndTheNextCallOpensAnother() async throws {
        let opened = Atomic<Int>(0)
        // The first stream answers its first request, then dies with the second unanswered;
        // later streams answer everything.
        let client = PipelinedClient<Request, Response>(inflightMax: 4, callTimeout: .seconds(30)) { requests, received in
            let stream = opened.add(1, ordering: .relaxed).newValue
            var seen = 0
            try await requests.forEachBatch { batch in
                for request in batch {
                    seen += 1
                    if stream == 1 && seen == 2 { throw RPCError(code: .unavailable, message: "connection reset") }
                    received(Response(id: request.id, value: request.value + 1))
                }
            }
        }
        #expect(try await client.call(Request(value: 1)).value == 2)
        do {
            _ = try await client.call(Request(value: 2))
            Issue.record("a call on a dead stream got an answer")
        } catch let error as RPCError {
            #expect(error.code == .unavailable && error.message == "connection reset")
        }
        #expect(try await client.call(Request(value: 3)).value == 4)
        #expect(opened.load(ordering: .relaxed) == 2)
        client.close()
        do {
            _ = try await client.call(Request(value: 4))
            Issue.record("a closed client sent a call")
        } catch let error as RPCError {
            #expect(error.code == .unavailable)
        }
    }

    @Test func aStreamWhoseResponsesFailWhileItsSenderWaitsEndsAtOnce() async throws {
        // As gRPC runs a stream: the sender waits for requests while the response side reads;
        // when the connection dies the response side fails and the sender is cancelled. The
        // stream must end then (not when the next request would wake the sender), so the next
        // call opens a new stream instead of going into the dead one.
        let opened = Atomic<Int>(0)
        let client = PipelinedClient<Request, Response>(inflightMax: 4, callTimeout: .seconds(20)) { requests, received in
            let stream = opened.add(1, ordering: .relaxed).newValue
            let dead = Flag()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    await requests.forEachBatch { batch in
                        for request in batch where !dead.value.load(ordering: .relaxed) {
                            received(Response(id: request.id, value: request.value + 100 * stream))
                        }
                    }
                }
                group.addTask {
                    guard stream == 1 else { return try await Task.sleep(for: .seconds(3600)) }
                    try await Task.sleep(for: .milliseconds(100))
                    dead.value.store(true, ordering: .relaxed)
                    throw RPCError(code: .unavailable, message: "connection reset")
                }
                defer { group.cancelAll() }
                try await group.next()
            }
        }
        #expect(try await client.call(Request(value: 1)).value == 101)
        try await Task.sleep(for: .milliseconds(400))
        let clock = ContinuousClock()
        let start = clock.now
        #expect(try await client.call(Request(value: 2)).value == 202)
        #expect(clock.now - start < .seconds(5))
        client.close()
    }

    @Test func anUnansweredCallTimesOut() async throws {
        let client = PipelinedClient<Request, Response>(inflightMax: 4, callTimeout: .milliseconds(200)) { requests, received in
            await requests.forEachBatch { batch in
                for request in batch where request.value != 0 { received(Response(id: request.id, value: request.value)) }
            }
        }
        let clock = ContinuousClock()
        let start = clock.now
        do {
            _ = try await client.call(Request(value: 0))
            Issue.record("an unanswered call returned")
        } catch let error as RPCError {
            #expect(error.code == .deadlineExceeded)
        }
        #expect(clock.now - start < .seconds(2))
        // The stream itself is still fine.
        #expect(try await client.call(Request(value: 5)).value == 5)
        client.close()
    }
}
