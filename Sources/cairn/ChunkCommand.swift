import ArgumentParser
import CairnCore
import ChunkProtocol
import NIOCore
import SystemPackage

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `cairn chunk …`: an operator's client for one chunkserver.
struct ChunkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chunk",
        abstract: "Talk to one chunkserver: put, get, has, rm, ls, stat, verify.",
        subcommands: [Put.self, Get.self, Has.self, Remove.self, List.self, Stat.self, Verify.self]
    )

    struct ServerOption: ParsableArguments {
        @Option(help: "The chunkserver's data port, HOST:PORT.")
        var server: String

        func validate() throws {
            guard HostPort(server) != nil else { throw ValidationError("--server must be HOST:PORT, got '\(server)'") }
        }

        func connect() async throws -> ChunkClient {
            try await ChunkClient.connect(to: HostPort(server)!)
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Store a file (at most chunkBytesMax) as a chunk; prints its ID.")
        @OptionGroup var server: ServerOption
        @Argument(help: "The file to store.") var file: String

        func run() async throws {
            let bytes = try readFile(file, bytesMax: 64 << 20)
            let id = SHA256.hash(bytes)
            try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                try await client.put(id, bytes: ByteBuffer(bytes: bytes))
            }
            print(id.hex)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Fetch a chunk (verified) to a file or standard output.")
        @OptionGroup var server: ServerOption
        @Argument(help: "The chunk's ID (64 hex digits).") var id: String
        @Option(name: .shortAndLong, help: "Write here instead of standard output.") var output: String?

        func validate() throws {
            guard ChunkID(hex: id) != nil else { throw ValidationError("not a chunk ID: '\(id)'") }
        }

        func run() async throws {
            let bytes = try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                return try await client.get(ChunkID(hex: id)!)
            }
            let data = Array(bytes.readableBytesView)
            if let output {
                try writeFile(output, bytes: data)
            } else {
                _ = try FileDescriptor.standardOutput.writeAll(data)
            }
        }
    }

    struct Has: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tell which of the IDs are stored (exit 1 if any is missing).")
        @OptionGroup var server: ServerOption
        @Argument(help: "Chunk IDs.") var ids: [String]

        func validate() throws {
            for id in ids where ChunkID(hex: id) == nil { throw ValidationError("not a chunk ID: '\(id)'") }
        }

        func run() async throws {
            let present = try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                return try await client.has(ids.map { ChunkID(hex: $0)! })
            }
            for (id, here) in zip(ids, present) { print("\(id) \(here ? "present" : "missing")") }
            if present.contains(false) { throw ExitCode(1) }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete chunks.")
        @OptionGroup var server: ServerOption
        @Argument(help: "Chunk IDs.") var ids: [String]

        func validate() throws {
            for id in ids where ChunkID(hex: id) == nil { throw ValidationError("not a chunk ID: '\(id)'") }
        }

        func run() async throws {
            let existed = try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                return try await client.delete(ids.map { ChunkID(hex: $0)! })
            }
            for (id, was) in zip(ids, existed) { print("\(id) \(was ? "deleted" : "not stored")") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List stored chunks: ID, size, store time.")
        @OptionGroup var server: ServerOption
        @Option(help: "Stop after this many chunks (0: all).") var limit: Int = 0

        func run() async throws {
            try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                var after: ChunkID? = nil
                var printed = 0
                while true {
                    let page = try await client.list(after: after)
                    for entry in page.entries {
                        let id = try ChunkID(field: entry.id)
                        let seconds = Double(entry.storedAtNs) / 1e9
                        print("\(id.hex) \(entry.sizeBytes) \(Date(timeIntervalSince1970: seconds).formatted(.iso8601))")
                        printed += 1
                        if limit > 0 && printed >= limit { return }
                    }
                    guard page.more, let last = page.entries.last else { return }
                    after = try ChunkID(field: last.id)
                }
            }
        }
    }

    struct Stat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Capacity, usage and counters of a chunkserver.")
        @OptionGroup var server: ServerOption

        func run() async throws {
            let s = try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                return try await client.stat()
            }
            print("""
                capacity        \(ByteCount.format(s.capacityBytes))
                available       \(ByteCount.format(s.availableBytes))
                reserve         \(ByteCount.format(s.reserveBytes))
                chunks          \(s.chunkCount)
                used            \(ByteCount.format(s.usedBytes))
                chunk max       \(ByteCount.format(s.chunkBytesMax))
                quarantined     \(s.quarantinedTotal)
                rejected puts   \(s.rejectedPutTotal)
                corrupt reads   \(s.corruptReadTotal)
                scrub passes    \(s.scrubPassesTotal)
                scrubbed        \(s.scrubbedChunksTotal) chunks, \(ByteCount.format(s.scrubbedBytesTotal))
                scrub corrupt   \(s.scrubCorruptTotal)
                """)
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Have the server re-hash chunks now (exit 1 if any is bad).")
        @OptionGroup var server: ServerOption
        @Argument(help: "Chunk IDs.") var ids: [String]

        func validate() throws {
            for id in ids where ChunkID(hex: id) == nil { throw ValidationError("not a chunk ID: '\(id)'") }
        }

        func run() async throws {
            var bad = false
            try await runReporting {
                let client = try await server.connect()
                defer { Task { await client.close() } }
                for id in ids {
                    do {
                        let size = try await client.verify(ChunkID(hex: id)!)
                        print("\(id) ok \(size)")
                    } catch let error as CairnError where error.code == .corrupt || error.code == .notFound {
                        print("\(id) \(error.code) \(error.message)")
                        bad = true
                    }
                }
            }
            if bad { throw ExitCode(1) }
        }
    }
}

/// Runs a client operation, printing a `CairnError` as `cairn: <message>` and exiting 1.
func runReporting<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as CairnError {
        printError("cairn: \(error)")
        throw ExitCode.failure
    }
}

func readFile(_ path: String, bytesMax: Int) throws -> [UInt8] {
    do {
        let fd = try FileDescriptor.open(FilePath(path), .readOnly)
        defer { try? fd.close() }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
            if n == 0 { return out }
            out.append(contentsOf: buffer[..<n])
            if out.count > bytesMax { throw ValidationError("\(path) is larger than \(bytesMax) bytes") }
        }
    } catch let error as Errno {
        printError("cairn: cannot read \(path): \(error)")
        throw ExitCode.failure
    }
}

func writeFile(_ path: String, bytes: [UInt8]) throws {
    do {
        let fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate],
                                         permissions: [.ownerReadWrite, .groupRead, .otherRead])
        defer { try? fd.close() }
        _ = try fd.writeAll(bytes)
    } catch let error as Errno {
        printError("cairn: cannot write \(path): \(error)")
        throw ExitCode.failure
    }
}
