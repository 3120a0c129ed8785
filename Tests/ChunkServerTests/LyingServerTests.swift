import CairnCore
import CairnTestSupport
import ChunkProtocol
import NIOCore
import NIOPosix
import Testing

/// The client's own check, with nothing on the server side to catch the fault: a fake server
/// answers every get with the body it is given, sent as one write (it reaches the client in
/// several reads, so the client hashes it part by part as it arrives).
@Suite struct LyingServerTests {
    @Test func aGetWhoseBytesDoNotHashToTheIDIsCorruptNeverTheBytes() async throws {
        let (id, chunk) = testChunk(3 << 20, seed: 41)
        var flipped = chunk
        flipped.setInteger(flipped.getInteger(at: 2_000_000, as: UInt8.self)! ^ 0x01, at: 2_000_000)
        let cases: [(answer: ByteBuffer?, expected: ByteBuffer?)] = [
            (chunk, chunk),                      // the truth passes
            (flipped, nil),                      // one flipped bit
            (chunk.getSlice(at: 0, length: 1 << 20)!, nil),  // a short body
            (nil, nil),                          // no body at all
        ]
        for (answer, expected) in cases {
            try await withServer(answering: answer) { address in
                let client = try await ChunkClient.connect(to: address)
                do {
                    let bytes = try await client.get(id)
                    #expect(bytes == expected, "bytes that do not hash to the ID came back")
                } catch {
                    #expect(expected == nil, "a truthful server's chunk was refused: \(error)")
                    #expect((error as? CairnError)?.code == .corrupt)
                }
                // The connection stays usable: the next answer is matched to the next request.
                if expected != nil { #expect(try await client.get(id) == expected) }
                // Pipelined gets (each hashed beside the event loop while others wait) are checked alike.
                let results = await withTaskGroup(of: Result<ByteBuffer, CairnError>.self) { group in
                    for _ in 0..<6 {
                        group.addTask {
                            do { return .success(try await client.get(id)) } catch { return .failure(error as! CairnError) }
                        }
                    }
                    return await group.reduce(into: []) { $0.append($1) }
                }
                for result in results {
                    switch result {
                    case .success(let bytes): #expect(bytes == expected, "pipelined: bytes that do not hash to the ID came back")
                    case .failure(let error): #expect(expected == nil && error.code == .corrupt, "pipelined: \(error)")
                    }
                }
                await client.close()
            }
        }
    }

    private func withServer(answering body: ByteBuffer?, _ run: (HostPort) async throws -> Void) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(expecting: .request, limits: ChunkLimits())))
                    try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                    try channel.pipeline.syncOperations.addHandler(AnsweringHandler(body: body))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { channel.close(promise: nil) }
        try await run(HostPort(host: "127.0.0.1", port: channel.localAddress!.port!))
    }
}

/// Answers each request's end with a get response carrying `body`.
private final class AnsweringHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = FramePart
    typealias OutboundOut = OutboundFrame
    let body: ByteBuffer?

    init(body: ByteBuffer?) { self.body = body }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let preamble, _) = unwrapInboundIn(data) else { return }
        var response = ChunkResponse()
        response.get.chunkLength = UInt64(body?.readableBytes ?? 0)
        let frame = OutboundFrame(kind: .response, requestID: preamble.requestID, header: try! response.serializedBytes(), body: body)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }
}
