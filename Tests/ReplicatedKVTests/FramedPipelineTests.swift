import CairnCore
import CairnTestSupport
import Foundation
import NIOCore
import GRPCCore
import Logging
import RaftRuntime
import ReplicatedKV
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `FramedPipelineServer` and `FramedPipeline.open` on loopback, with a scripted handler in
/// place of a Raft node: answers reach their own callers whatever the order and thread they
/// come from, and bad input closes that one connection while the server serves the others.
@Suite struct FramedPipelineTests {
    typealias Server = FramedPipelineServer<Cairn_Kv_V1_PipelineRequest, Cairn_Kv_V1_PipelineResponse>
    typealias Client = PipelinedClient<Cairn_Kv_V1_PipelineCall, Cairn_Kv_V1_PipelineAnswer>
    static let service = "test.Echo"
    /// The server logs each connection it closes; these tests close many on purpose.
    static let quietLogger: Logger = {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }()

    /// Puts held until 8 arrived, then answered in reverse order from another thread (odd
    /// values as errors); a get is answered at once on the loop with its key reversed.
    final class Holder: Sendable {
        let held = Mutex<[(Cairn_Kv_V1_PipelineCall, @Sendable (Cairn_Kv_V1_PipelineAnswer) -> Void)]>([])
        /// Gets handled so far.
        let gets = Atomic<Int>(0)

        func handle(_ call: Cairn_Kv_V1_PipelineCall, _ respond: @escaping @Sendable (Cairn_Kv_V1_PipelineAnswer) -> Void) {
            if case .get(let get) = call.call {
                gets.add(1, ordering: .relaxed)
                var answer = Cairn_Kv_V1_PipelineAnswer()
                answer.id = call.id
                // "big": a 4 KiB answer; otherwise the key reversed.
                answer.get.value = get.key == Data("big".utf8) ? Data(count: 4 << 10) : Data(get.key.reversed())
                return respond(answer)
            }
            let ready = held.withLock { h -> [(Cairn_Kv_V1_PipelineCall, @Sendable (Cairn_Kv_V1_PipelineAnswer) -> Void)] in
                h.append((call, respond))
                guard h.count == 8 else { return [] }
                defer { h = [] }
                return h
            }
            guard !ready.isEmpty else { return }
            Thread.detachNewThread {
                for (call, respond) in ready.reversed() {
                    let value = Int(call.put.value.first ?? 0)
                    if value % 2 == 1 {
                        respond(.init(id: call.id, error: RPCError(code: .aborted, message: "odd \(value)")))
                    } else {
                        var answer = Cairn_Kv_V1_PipelineAnswer()
                        answer.id = call.id
                        answer.put.index = UInt64(value * 10)
                        respond(answer)
                    }
                }
            }
        }
    }

    func withServer<T: Sendable>(inflightMax: Int = 64, connectionsMax: Int = FramedPipeline.connectionsMax,
                                 idleTimeout: TimeAmount = FramedPipeline.idleTimeout, holder: Holder = Holder(),
                                 _ body: (Server, SharedEventLoop) async throws -> T) async throws -> T {
        try await SharedEventLoop.with { eventLoop in
            let server = try await Server(service: Self.service, host: "127.0.0.1", port: 0, group: eventLoop.group, inflightMax: inflightMax,
                                          frameBytesMax: 1 << 16, connectionsMax: connectionsMax, idleTimeout: idleTimeout,
                                          logger: Self.quietLogger) { holder.handle($0, $1) }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                // Serves until cancelled (no ServiceGroup here): then closes its listener and connections.
                group.addTask { try await server.run() }
                defer { group.cancelAll() }
                return try await body(server, eventLoop)
            }
        }
    }

    func client(port: Int, eventLoop: SharedEventLoop, service: String = service) -> Client {
        Client(inflightMax: 64, callTimeout: .seconds(20), executor: eventLoop.executor) { requests, received in
            try await FramedPipeline.open(service: service, to: HostPort(host: "127.0.0.1", port: port), group: eventLoop.group,
                                          frameBytesMax: 1 << 16, requests: requests, received: received,
                                          as: (Cairn_Kv_V1_PipelineRequest.self, Cairn_Kv_V1_PipelineResponse.self))
        }
    }

    func put(_ client: Client, _ value: UInt8) async -> Result<UInt64, RPCError> {
        var call = Cairn_Kv_V1_PipelineCall()
        call.put.value = Data([value])
        do {
            return .success(try await client.call(call).put.index)
        } catch let error as RPCError {
            return .failure(error)
        } catch {
            return .failure(RPCError(code: .unknown, message: "\(error)"))
        }
    }

    @Test func answersInAnyOrderAndFromAnyThreadReachTheirOwnCallers() async throws {
        try await withServer { server, eventLoop in
            let client = client(port: server.port, eventLoop: eventLoop)
            defer { client.close() }
            try await withThrowingTaskGroup(of: (UInt8, Result<UInt64, RPCError>).self) { group in
                for value in UInt8(0)..<8 { group.addTask { (value, await put(client, value)) } }
                for try await (value, result) in group {
                    switch result {
                    case .success(let index): #expect(value % 2 == 0 && index == UInt64(value) * 10)
                    case .failure(let error): #expect(value % 2 == 1 && error.code == .aborted && error.message == "odd \(value)")
                    }
                }
            }
            var get = Cairn_Kv_V1_PipelineCall()
            get.get.key = Data("abc".utf8)
            #expect(try await client.call(get).get.value == Data("cba".utf8))
        }
    }

    @Test func badInputClosesThatConnectionAndTheServerServesOthers() async throws {
        try await withServer(inflightMax: 4) { server, eventLoop in
            let hello = pipelineHello(Self.service)
            var fivePuts = Cairn_Kv_V1_PipelineRequest()
            for id in 1...5 {
                var call = Cairn_Kv_V1_PipelineCall()
                call.id = UInt64(id)
                call.put.value = Data([2])  // held: never answered (fewer than 8)
                fivePuts.items.append(call)
            }
            let attacks: [(String, [UInt8])] = [
                ("random bytes", testBytes(count: 64, seed: 7)),
                ("another wire version", pipelineHello(Self.service, version: 2)),
                ("another service", pipelineHello("kv!")),
                ("an empty frame", hello + [0, 0, 0, 0]),
                ("an oversized frame", hello + [0xFF, 0xFF, 0xFF, 0xFF] + testBytes(count: 32, seed: 8)),
                ("an undecodable request", hello + lengthPrefixed([0xFF, 0xFF, 0xFF])),
            ]
            // The control: a proper hello alone is kept open.
            #expect(try !closedAfterSending(hello, to: server.port))
            for (name, bytes) in attacks {
                #expect(try closedAfterSending(bytes, to: server.port), "\(name): the connection stayed open")
            }
            // Calls past inflightMax (4 held here, a fifth in the same frame) are refused with
            // their own error answer, and the connection stays open.
            let fd = try connectLoopback(server.port)
            defer { close(fd) }
            try sendAll(fd, hello + lengthPrefixed(try fivePuts.serializedBytes()))
            let refused = try Cairn_Kv_V1_PipelineResponse(serializedBytes: try #require(try readFrame(fd)))
            #expect(refused.items.map(\.id) == [5])
            #expect(refused.items.first?.rpcError?.code == .resourceExhausted)
            // A client that names another service gets an error, not a hang.
            let lost = client(port: server.port, eventLoop: eventLoop, service: "kv!")
            defer { lost.close() }
            if case .failure(let error) = await put(lost, 0) { #expect(error.code == .unavailable) } else { Issue.record("answered") }
            // Others are served.
            let client = client(port: server.port, eventLoop: eventLoop)
            defer { client.close() }
            var get = Cairn_Kv_V1_PipelineCall()
            get.get.key = Data("xy".utf8)
            #expect(try await client.call(get).get.value == Data("yx".utf8))
        }
    }

    @Test func aClientThatDoesNotReadItsAnswersIsNotReadEither() async throws {
        let holder = Holder()
        try await withServer(holder: holder) { server, eventLoop in
            // 40,000 gets of 4 KiB answers (160 MiB if all were answered) from a client that never reads.
            var bytes = pipelineHello(Self.service)
            for batch in 0..<1000 {
                var request = Cairn_Kv_V1_PipelineRequest()
                for i in 0..<40 {
                    var call = Cairn_Kv_V1_PipelineCall()
                    call.id = UInt64(batch * 40 + i + 1)
                    call.get.key = Data("big".utf8)
                    request.items.append(call)
                }
                bytes += lengthPrefixed(try request.serializedBytes())
            }
            let (fd, sent) = try sendWithoutReading(bytes, to: server.port, for: .seconds(3))
            defer { close(fd) }
            // Let the server work through what it read: until its count stops growing.
            var handled = holder.gets.load(ordering: .relaxed)
            for _ in 0..<40 {
                try await Task.sleep(for: .milliseconds(250))
                let now = holder.gets.load(ordering: .relaxed)
                if now == handled { break }
                handled = now
            }
            // The server stops reading, and holds the calls it had read, once its unsent answers
            // pass its bound (8 MiB, about 2,000 answers, plus the sockets' buffers: about 3,100
            // here); the rest stay unread. Starting every call of the last read (thousands of tiny
            // ones) answered 10,000 and more.
            #expect(handled < 6_000, "\(handled) gets answered to a client that reads nothing (it sent \(sent) of \(bytes.count) bytes)")
            // Others are still served.
            let client = client(port: server.port, eventLoop: eventLoop)
            defer { client.close() }
            var get = Cairn_Kv_V1_PipelineCall()
            get.get.key = Data("ok".utf8)
            #expect(try await client.call(get).get.value == Data("ko".utf8))
        }
    }
}

/// Connects to 127.0.0.1:`port` and sends as much of `bytes` as the other side takes within
/// `duration`, never reading; returns the connection (the caller closes it) and how many bytes it took.
func sendWithoutReading(_ bytes: [UInt8], to port: Int, for duration: Duration) throws -> (Int32, Int) {
    let fd = try connectLoopback(port)
    var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let deadline = ContinuousClock.now + duration
    var sent = 0
    while sent < bytes.count && ContinuousClock.now < deadline {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, min($0.count, 1 << 16), Int32(MSG_NOSIGNAL)) }
        if n > 0 { sent += n } else if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK { break }
    }
    return (fd, sent)
}

extension FramedPipelineTests {
    @Test func connectionsPastTheBoundAndIdleOnesAreClosed() async throws {
        try await withServer(connectionsMax: 2, idleTimeout: .milliseconds(300)) { server, _ in
            let hello = pipelineHello(Self.service)
            // Two connections are served; a third is closed on arrival.
            let first = try connectLoopback(server.port)
            defer { close(first) }
            let second = try connectLoopback(server.port)
            defer { close(second) }
            try sendAll(first, hello)
            try sendAll(second, hello)
            try await Task.sleep(for: .milliseconds(50))
            #expect(try closedAfterSending(hello, to: server.port), "a third connection was served")
            // The first holds a call in flight (a put the handler keeps until it has 8): it stays
            // open past the idle timeout; the second, idle, is closed.
            var put = Cairn_Kv_V1_PipelineRequest()
            put.items = [Cairn_Kv_V1_PipelineCall.with { $0.id = 1; $0.put.value = Data([2]) }]
            try sendAll(first, lengthPrefixed(try put.serializedBytes()))
            try await Task.sleep(for: .seconds(1))
            #expect(try readFrame(second) == nil, "the idle connection was not closed")
            #expect(try isOpen(first), "the connection with a call in flight was closed")
        }
    }
}

/// A pipelined connection's hello, as `FramedPipeline.open` sends it: "CPIP", version, service name.
func pipelineHello(_ service: String, version: UInt8 = FramedPipeline.version) -> [UInt8] {
    let name = Array(service.utf8)
    return withUnsafeBytes(of: FramedPipeline.magic.bigEndian) { Array($0) } + [version, UInt8(name.count)] + name
}

/// `bytes` as one frame: u32 big-endian length, then the bytes.
func lengthPrefixed(_ bytes: [UInt8]) -> [UInt8] {
    withUnsafeBytes(of: UInt32(bytes.count).bigEndian) { Array($0) } + bytes
}

func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { throw CairnError(.io, "send failed: \(errno)") }
        sent += n
    }
}

/// Reads one u32-length-prefixed frame within two seconds; nil if the other side closed the connection.
func readFrame(_ fd: Int32) throws -> [UInt8]? {
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    func read(_ count: Int) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 || (n < 0 && errno == ECONNRESET) { return nil }
            guard n > 0 else { throw CairnError(.unavailable, "no frame within two seconds") }
            got += n
        }
        return out
    }
    guard let header = try read(4) else { return nil }
    let length = header.reduce(0) { $0 << 8 | Int($1) }
    return try read(length)
}

/// Whether the other side has not closed the connection (nothing to read is still open).
func isOpen(_ fd: Int32) throws -> Bool {
    var byte: UInt8 = 0
    let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
    if n == 0 || (n < 0 && errno == ECONNRESET) { return false }
    return true
}
