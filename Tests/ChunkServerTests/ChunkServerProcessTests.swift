import CairnCore
import CairnTestSupport
import ChunkProtocol
import NIOCore
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Tests against real `cairn chunkserver` processes on loopback.
@Suite struct ChunkServerProcessTests {
    func start(_ dir: borrowing TestDirectory, logs: borrowing TestDirectory, name: String) throws -> DaemonProcess {
        try DaemonProcess(["chunkserver", "--data", dir.path.string, "--listen", "127.0.0.1:0", "--reserve", "0",
                           "--scrub-rate", "0"],
                          logDirectory: logs.path, name: name)
    }

    @Test func sigtermStopsGracefully() async throws {
        let dir = TestDirectory("proc")
        let logs = TestDirectory("logs")
        let daemon = try start(dir, logs: logs, name: "cs")
        let address = try await daemon.waitForAddress()
        let client = try await ChunkClient.connect(to: address)
        let (id, bytes) = testChunk(100_000, seed: 1)
        try await client.put(id, bytes: bytes)
        await client.close()
        let status = await daemon.stop(signal: SIGTERM)
        #expect(daemon.terminationReason == .exit)
        #expect(status == 0, "stderr: \(daemon.stderr)")
        #expect(daemon.stderr.contains("chunkserver stopped"))
    }

    @Test func killNineDuringAStreamOfPutsLosesNothingAcknowledged() async throws {
        let dir = TestDirectory("proc")
        let logs = TestDirectory("logs")
        let daemon = try start(dir, logs: logs, name: "cs1")
        let address = try await daemon.waitForAddress()
        let acknowledged = Acknowledged()
        // Four writers stream 512 KiB chunks until the daemon dies under them.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<4 {
                group.addTask {
                    let client = try await ChunkClient.connect(to: address)
                    var seed = UInt64(writer) << 32
                    while true {
                        seed += 1
                        let (id, bytes) = testChunk(512 << 10, seed: seed)
                        do {
                            try await client.put(id, bytes: bytes)
                        } catch {
                            return
                        }
                        acknowledged.ids.withLock { $0.append(id) }
                    }
                }
            }
            group.addTask {
                _ = await eventually(timeout: .seconds(30)) { acknowledged.ids.withLock { $0.count } >= 40 }
                await daemon.stop(signal: SIGKILL)
            }
            try await group.waitForAll()
        }
        #expect(daemon.terminationReason == .uncaughtSignal)
        let acked = acknowledged.ids.withLock { $0 }
        #expect(acked.count >= 40)

        let restarted = try start(dir, logs: logs, name: "cs2")
        let again = try await restarted.waitForAddress()
        #expect(dir.entries("tmp").isEmpty)
        let client = try await ChunkClient.connect(to: again)
        #expect(try await client.has(acked).allSatisfy { $0 })
        var listed = 0
        var after: ChunkID? = nil
        while true {
            let page = try await client.list(after: after, limit: 100)
            for entry in page.entries {
                let id = try ChunkID(field: entry.id)
                #expect(try await client.verify(id) == 512 << 10)
                listed += 1
            }
            guard page.more, let last = page.entries.last else { break }
            after = try ChunkID(field: last.id)
        }
        #expect(listed >= acked.count)
        #expect(try await client.stat().chunkCount == Int64(listed))
        await client.close()
        await restarted.stop()
    }

    @Test func tempFileOfAPutCutOffByACrashIsGoneAfterRestart() async throws {
        let dir = TestDirectory("proc")
        let logs = TestDirectory("logs")
        let daemon = try start(dir, logs: logs, name: "cs1")
        let address = try await daemon.waitForAddress()
        let (id, bytes) = testChunk(3 << 20, seed: 9)
        var put = ChunkRequest()
        put.put.id = id.field
        let frame = try requestFrame(put, body: Array(bytes.readableBytesView))
        let raw = try await RawConnection.open(address)
        // Send two thirds of the chunk and keep the connection open: the put is in progress.
        let exchange = Task { try await raw.exchange(Array(frame.prefix(2 << 20)), timeout: .seconds(30)) }
        #expect(await eventually { !dir.entries("tmp").isEmpty })
        await daemon.stop(signal: SIGKILL)
        _ = try? await exchange.value
        #expect(!dir.entries("tmp").isEmpty)

        let restarted = try start(dir, logs: logs, name: "cs2")
        let again = try await restarted.waitForAddress()
        #expect(dir.entries("tmp").isEmpty)
        let client = try await ChunkClient.connect(to: again)
        #expect(try await client.has([id]) == [false])
        await client.close()
        await restarted.stop()
    }

    @Test func cliPutGetHasRmLsStat() async throws {
        let dir = TestDirectory("proc")
        let logs = TestDirectory("logs")
        let daemon = try start(dir, logs: logs, name: "cs")
        let address = try await daemon.waitForAddress()
        let input = logs.path.appending("input.bin")
        let bytes = testBytes(count: 1_234_567, seed: 3)
        let fd = try FileDescriptor.open(input, .writeOnly, options: [.create], permissions: .ownerReadWrite)
        _ = try fd.writeAll(bytes)
        try fd.close()
        let put = try runCairn(["chunk", "put", "--server", "\(address)", input.string], logs: logs)
        #expect(put.status == 0)
        #expect(put.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == SHA256.hash(bytes).hex)
        let id = SHA256.hash(bytes).hex
        let output = logs.path.appending("output.bin").string
        #expect(try runCairn(["chunk", "get", "--server", "\(address)", id, "-o", output], logs: logs).status == 0)
        #expect(try testFileBytes(output) == bytes)
        #expect(try runCairn(["chunk", "has", "--server", "\(address)", id], logs: logs).stdout.contains("present"))
        #expect(try runCairn(["chunk", "ls", "--server", "\(address)"], logs: logs).stdout.contains("\(id) 1234567"))
        #expect(try runCairn(["chunk", "stat", "--server", "\(address)"], logs: logs).stdout.contains("chunks          1"))
        #expect(try runCairn(["chunk", "verify", "--server", "\(address)", id], logs: logs).status == 0)
        #expect(try runCairn(["chunk", "rm", "--server", "\(address)", id], logs: logs).stdout.contains("deleted"))
        let missing = try runCairn(["chunk", "get", "--server", "\(address)", id, "-o", output], logs: logs)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("notFound"))
        let bad = try runCairn(["chunk", "get", "--server", "\(address)", "xyz"], logs: logs)
        #expect(bad.status != 0)
        await daemon.stop()
    }
}

/// IDs of puts the server acknowledged, shared by the writer tasks.
final class Acknowledged: Sendable {
    let ids = Mutex<[ChunkID]>([])
}
