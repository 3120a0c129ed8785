import CairnCore
import Foundation
import CairnTestSupport
import ChunkProtocol
import ChunkServer
import ChunkStore
import NIOCore
import NIOPosix
import SystemPackage
import Testing

/// Runs an in-process chunkserver on a free loopback port for the duration of `body`.
func withChunkServer(
    directory: FilePath, limits: ChunkLimits = ChunkLimits(), reserveBytes: Int64 = 0,
    scrubBytesPerSecond: Int64 = 0, scrubPassInterval: Duration = .seconds(3600),
    _ body: (ChunkServer, HostPort) async throws -> Void
) async throws {
    let configuration = ChunkServerConfiguration(
        listen: HostPort(host: "127.0.0.1", port: 0),
        store: .init(directory: directory, limits: limits, reserveBytes: reserveBytes),
        scrubBytesPerSecond: scrubBytesPerSecond, scrubPassInterval: scrubPassInterval, ioThreads: 4)
    let server = try ChunkServer(configuration: configuration, logger: quietLogger())
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        guard let address = await server.boundAddress(), let port = address.port else {
            Issue.record("server did not bind")
            return
        }
        do {
            try await body(server, HostPort(host: "127.0.0.1", port: port))
        } catch {
            server.shutDown()
            throw error
        }
        server.shutDown()
        try await group.waitForAll()
    }
}

/// A bare TCP connection that sends arbitrary bytes and collects whatever comes back until
/// the server closes it.
struct RawConnection {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func open(_ server: HostPort) async throws -> RawConnection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: server.host, port: server.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        return RawConnection(channel: channel)
    }

    /// Sends `bytes`, optionally closes our side, and returns everything received until the
    /// server closed the connection (nil if it did not close within `timeout`).
    func exchange(_ bytes: [UInt8], closeAfterSending: Bool = false, timeout: Duration = .seconds(10)) async throws -> [UInt8]? {
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: bytes))
            if closeAfterSending { outbound.finish() }
            return try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
                group.addTask {
                    var received: [UInt8] = []
                    do {
                        for try await buffer in inbound { received += Array(buffer.readableBytesView) }
                    } catch {
                        // A reset after the error frame still counts as closed.
                    }
                    return received
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
        }
    }
}

/// Encodes a request frame by hand (for malformed-input tests).
func requestFrame(_ request: ChunkRequest, requestID: UInt64 = 1, body: [UInt8] = [], declaredBodyLength: Int? = nil) throws -> [UInt8] {
    let header: [UInt8] = try request.serializedBytes()
    var buffer = ByteBuffer()
    FramePreamble(kind: .request, requestID: requestID, headerLength: header.count,
                  bodyLength: declaredBodyLength ?? body.count).write(to: &buffer)
    buffer.writeBytes(header)
    buffer.writeBytes(body)
    return Array(buffer.readableBytesView)
}

/// Decodes the first response frame in `bytes`.
func firstResponse(_ bytes: [UInt8]) throws -> ChunkResponse? {
    var buffer = ByteBuffer(bytes: bytes)
    guard let preamble = try FramePreamble.read(from: &buffer, expecting: .response, limits: ChunkLimits()),
          let header = buffer.readBytes(length: preamble.headerLength) else { return nil }
    return try ChunkResponse(serializedBytes: header)
}

@Suite struct ChunkServerTests {
    @Test func everyOperationThroughTheClient() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (id, bytes) = testChunk(3_000_000, seed: 1)
            #expect(try await client.put(id, bytes: bytes) == false)
            #expect(try await client.put(id, bytes: bytes) == true)
            #expect(try await client.get(id) == bytes)
            let range = try await client.read(id, offset: 1_000_000, length: 70_000)
            #expect(range.chunkLength == 3_000_000)
            #expect(range.bytes == bytes.getSlice(at: 1_000_000, length: 70_000))
            let (missing, _) = testChunk(10, seed: 2)
            #expect(try await client.has([id, missing]) == [true, false])
            #expect(try await client.verify(id) == 3_000_000)
            let page = try await client.list(after: nil)
            #expect(page.entries.count == 1 && !page.more)
            #expect(try ChunkID(field: page.entries[0].id) == id)
            let stat = try await client.stat()
            #expect(stat.chunkCount == 1 && stat.usedBytes == 3_000_000 && stat.capacityBytes > 0)
            #expect(await errorCode { _ = try await client.get(missing) } == .notFound)
            #expect(try await client.delete([id, missing]) == [true, false])
            #expect(try await client.has([id]) == [false])
            await client.close()
        }
    }

    @Test func pipelinedConcurrentRequestsOnOneConnection() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address, requestsInflightMax: 8)
            let chunks = (0..<48).map { testChunk(200_000 + $0, seed: UInt64(100 + $0)) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (id, bytes) in chunks {
                    group.addTask { try await client.put(id, bytes: bytes) }
                }
                try await group.waitForAll()
            }
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for (id, bytes) in chunks {
                    group.addTask { try await client.get(id) == bytes }
                }
                for try await same in group { #expect(same) }
            }
            #expect(try await client.stat().chunkCount == 48)
            await client.close()
        }
    }

    /// Both ways a put is stored: gathered whole (at most `wholePutBytesMax`) or streamed through the lanes.
    static let putSizes = [100_000, ChunkServer.wholePutBytesMax, ChunkServer.wholePutBytesMax + 1, 1 << 20]

    @Test(arguments: putSizes) func wrongHashIsRefusedAndTheConnectionGoesOn(size: Int) async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (id, _) = testChunk(size, seed: 3)
            let (_, otherBytes) = testChunk(size, seed: 4)
            #expect(await errorCode { try await client.put(id, bytes: otherBytes) } == .hashMismatch)
            #expect(try await client.has([id, SHA256.hash(Array(otherBytes.readableBytesView))]) == [false, false])
            #expect(dir.entries("tmp").isEmpty)
            let (good, goodBytes) = testChunk(5000, seed: 5)
            try await client.put(good, bytes: goodBytes)
            #expect(try await client.get(good) == goodBytes)
            #expect(try await client.stat().rejectedPutTotal == 1)
            await client.close()
        }
    }

    @Test func malformedHeadersGetAnErrorAndTheConnectionGoesOn() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            // A well-framed request whose protobuf header is garbage, then a valid stat.
            var frame = ByteBuffer()
            FramePreamble(kind: .request, requestID: 7, headerLength: 5, bodyLength: 0).write(to: &frame)
            frame.writeBytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
            var stat = ChunkRequest()
            stat.stat = .init()
            let bytes = Array(frame.readableBytesView) + (try requestFrame(stat, requestID: 8))
            let raw = try await RawConnection.open(address)
            let received = try await raw.exchange(bytes, closeAfterSending: true)
            let response = try firstResponse(try #require(received))
            #expect(response?.error?.code == .invalidArgument)
            #expect(received!.count > 2 * FramePreamble.byteCount)  // the stat was answered too

            // A bad ID length in a get.
            let client = try await ChunkClient.connect(to: address)
            var get = ChunkRequest()
            get.get.id = .init([1, 2, 3])
            #expect(await errorCode { _ = try await client.call(get) } == .invalidArgument)
            #expect(try await client.stat().chunkCount == 0)
            await client.close()
        }
    }

    @Test(arguments: ["random", "oversized-body", "oversized-header", "zero-header", "bad-version", "response-kind"])
    func badFramesCloseTheConnectionWithAnError(kind: String) async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            var put = ChunkRequest()
            put.put.id = testChunk(10, seed: 1).0.field
            var bytes: [UInt8]
            switch kind {
            case "random":
                var rng = SplitMix(seed: 99)
                bytes = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case "oversized-body":
                bytes = try requestFrame(put, declaredBodyLength: (4 << 20) + 1)
            case "oversized-header":
                var buffer = ByteBuffer()
                FramePreamble(kind: .request, requestID: 1, headerLength: (64 << 10) + 1, bodyLength: 0).write(to: &buffer)
                bytes = Array(buffer.readableBytesView)
            case "zero-header":
                var buffer = ByteBuffer()
                FramePreamble(kind: .request, requestID: 1, headerLength: 0, bodyLength: 0).write(to: &buffer)
                bytes = Array(buffer.readableBytesView)
            case "bad-version":
                bytes = try requestFrame(put)
                bytes[4] = 9
            default:
                bytes = try requestFrame(put)
                bytes[5] = FramePreamble.Kind.response.rawValue
            }
            let raw = try await RawConnection.open(address)
            // The server answers with an error frame and closes, without our side closing.
            let received = try #require(try await raw.exchange(bytes))
            let response = try #require(try firstResponse(received))
            #expect(response.error?.code == .protocolViolation)
            // Others are still served.
            let client = try await ChunkClient.connect(to: address)
            let (id, good) = testChunk(1000, seed: 6)
            try await client.put(id, bytes: good)
            #expect(try await client.get(id) == good)
            await client.close()
        }
    }

    @Test(arguments: [100_000, 2 << 20]) func aConnectionDroppedHalfWayThroughAChunkStoresNothing(size: Int) async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let (id, bytes) = testChunk(size, seed: 7)
            var put = ChunkRequest()
            put.put.id = id.field
            let whole = try requestFrame(put, body: Array(bytes.readableBytesView))
            let raw = try await RawConnection.open(address)
            _ = try await raw.exchange(Array(whole.prefix(whole.count / 2)), closeAfterSending: true)
            #expect(await eventually { dir.entries("tmp").isEmpty })
            let client = try await ChunkClient.connect(to: address)
            #expect(try await client.has([id]) == [false])
            #expect(try await client.stat().chunkCount == 0)
            await client.close()
        }
    }

    @Test func scrubberFindsAFlippedByteAndQuarantinesTheChunk() async throws {
        let dir = TestDirectory("server")
        let chunks = (0..<6).map { testChunk(300_000, seed: UInt64(20 + $0)) }
        // Store first, then damage one chunk while no server runs.
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            for (id, bytes) in chunks { try await client.put(id, bytes: bytes) }
            await client.close()
        }
        let victim = chunks[3].0
        try flipByte(in: dir.path.appending("chunks").appending(String(victim.hex.prefix(2))).appending(victim.hex), at: 123_456)
        try await withChunkServer(directory: dir.path, scrubBytesPerSecond: 1 << 30, scrubPassInterval: .milliseconds(100)) { server, address in
            let client = try await ChunkClient.connect(to: address)
            #expect(await eventually {
                guard let stat = try? await client.stat() else { return false }
                return stat.scrubCorruptTotal == 1 && stat.scrubPassesTotal >= 1
            })
            let stat = try await client.stat()
            #expect(stat.quarantinedTotal == 1)
            #expect(stat.chunkCount == 5)
            #expect(stat.scrubPassesTotal >= 1)
            #expect(await errorCode { _ = try await client.get(victim) } == .notFound)
            for (id, bytes) in chunks where id != victim { #expect(try await client.get(id) == bytes) }
            #expect(dir.entries("quarantine").count == 1)
            await client.close()
        }
    }

    @Test func aFlippedByteIsAnErrorOnGetNeverTheBadBytes() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (id, bytes) = testChunk(1 << 20, seed: 30)
            try await client.put(id, bytes: bytes)
            try flipByte(in: dir.path.appending("chunks").appending(String(id.hex.prefix(2))).appending(id.hex), at: 777)
            #expect(await errorCode { _ = try await client.get(id) } == .corrupt)
            #expect(try await client.stat().quarantinedTotal == 1)
            #expect(try await client.has([id]) == [false])
            await client.close()
        }
    }

    /// A whole chunk is checked piece by piece (`checkPieceBytes`) before it is sent: a flipped
    /// byte in a later piece, after good ones were checked, still fails the get as corrupt, the
    /// chunk is quarantined, and the same connection goes on answering.
    @Test func aFlippedByteInALaterPieceFailsTheGetAndTheConnectionGoesOn() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (victim, victimBytes) = testChunk(4 << 20, seed: 31)
            let (other, otherBytes) = testChunk(3 << 20 + 12_345, seed: 32)
            try await client.put(victim, bytes: victimBytes)
            try await client.put(other, bytes: otherBytes)
            #expect(try await client.get(victim) == victimBytes)
            // Past the first two pieces.
            let offset = Int64(2 * ChunkStore.checkPieceBytes + 4_321)
            try flipByte(in: dir.path.appending("chunks").appending(String(victim.hex.prefix(2))).appending(victim.hex), at: offset)
            #expect(await errorCode { _ = try await client.get(victim) } == .corrupt)
            #expect(try await client.get(other) == otherBytes)
            #expect(try await client.stat().quarantinedTotal == 1)
            #expect(try await client.has([victim, other]) == [false, true])
            await client.close()
        }
    }

    /// Whole gets send the chunk file itself (sendfile): its descriptor is closed once the bytes
    /// are out, and also when the client goes away with gets still queued on the connection.
    @Test func wholeGetsLeaveNoChunkFileOpen() async throws {
        let dir = TestDirectory("server")
        let chunks = dir.path.appending("chunks").string
        func openChunkFiles() -> Int {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)"))?.hasPrefix(chunks) == true }.count
        }
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (id, bytes) = testChunk(1 << 20 + 3, seed: 34)
            try await client.put(id, bytes: bytes)
            for _ in 0..<20 { #expect(try await client.get(id) == bytes) }
            #expect(openChunkFiles() == 0)
            // Gets queued on a connection that closes before their answers are read.
            let leaving = try await ChunkClient.connect(to: address)
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 { group.addTask { _ = try? await leaving.get(id) } }
                try? await Task.sleep(for: .milliseconds(5))
                await leaving.close()
            }
            #expect(try await client.get(id) == bytes)
            #expect(await eventually(timeout: .seconds(2)) { openChunkFiles() == 0 }, "open chunk files: \(openChunkFiles())")
            await client.close()
        }
    }

    /// Without its checksum file a chunk is re-hashed whole (not sent from the file), served, and the file rewritten.
    @Test func aChunkWithoutItsChecksumFileIsReHashedAndServedWhole() async throws {
        let dir = TestDirectory("server")
        try await withChunkServer(directory: dir.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            let (id, bytes) = testChunk(2 << 20 + 7, seed: 33)
            try await client.put(id, bytes: bytes)
            let sums = dir.path.appending("sums").appending(String(id.hex.prefix(2))).appending(id.hex)
            guard FileManager.default.fileExists(atPath: sums.string) else {
                Issue.record("no checksum file at \(sums)")
                return
            }
            try FileManager.default.removeItem(atPath: sums.string)
            #expect(try await client.get(id) == bytes)
            #expect(FileManager.default.fileExists(atPath: sums.string))
            #expect(try await client.get(id) == bytes)
            await client.close()
        }
    }

    @Test func aFullDiskFailsPutsCleanlyAndGetsStillWork() async throws {
        let disk = try SmallDisk(sizeBytes: 12 << 20)
        try await withChunkServer(directory: disk.path) { _, address in
            let client = try await ChunkClient.connect(to: address)
            var stored: [(ChunkID, ByteBuffer)] = []
            var refusal: CairnError?
            for seed in 0..<20 {
                let (id, bytes) = testChunk(1 << 20, seed: UInt64(40 + seed))
                do {
                    try await client.put(id, bytes: bytes)
                    stored.append((id, bytes))
                } catch let error as CairnError {
                    refusal = error
                    break
                }
            }
            #expect(refusal?.code == .insufficientSpace)
            #expect(stored.count >= 5 && stored.count < 12)
            #expect(await eventually { (try? FileSystemCalls.directoryEntries(disk.path.appending("tmp")).isEmpty) == true })
            for (id, bytes) in stored { #expect(try await client.get(id) == bytes) }
            let page = try await client.list(after: nil)
            #expect(page.entries.count == stored.count)
            for entry in page.entries { _ = try await client.verify(try ChunkID(field: entry.id)) }
            // Deleting makes room again.
            try await client.delete([stored[0].0])
            let (id, bytes) = testChunk(1 << 20, seed: 99)
            try await client.put(id, bytes: bytes)
            await client.close()
        }
    }
}
