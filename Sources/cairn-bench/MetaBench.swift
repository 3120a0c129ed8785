import ArgumentParser
import CairnCore
import Foundation
import MetaService
import MetaState

/// Namespace operations per second through the metadata service's gRPC API: each client is
/// its own session working in its own directory, all running at once.
struct MetaBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meta", abstract: "create (+close), stat (lookup) and unlink per second through `cairn meta` replicas.")

    @Option(help: "Metadata replicas, HOST:PORT,…") var meta: String
    @Option(help: "Concurrent clients (one session each).") var clients: Int = 16
    @Option(help: "Files per client.") var files: Int = 1000
    @Option(help: "Run label, to keep runs' directories apart.") var label: String = "run"

    func run() async throws {
        let servers = meta.split(separator: ",").compactMap { HostPort(String($0)) }
        let clients = self.clients, files = self.files, label = self.label
        let clock = ContinuousClock()
        try await MetaClient.with(servers: servers) { client in
            var sessions: [(MetaSession, InodeNumber)] = []
            for c in 0..<clients {
                let session = try await MetaSession.open(client)
                guard case .attributes(let directory) = try await session.perform(
                    .mkdir(parent: 1, name: Array("\(label)-c\(c)".utf8), mode: 0o755), as: .root) else {
                    throw CairnError(.internal, "mkdir failed")
                }
                sessions.append((session, directory.inode))
            }
            let frozen = sessions
            func phase(_ name: String, _ operation: @escaping @Sendable (MetaSession, InodeNumber, Int) async throws -> Void) async throws -> Double {
                let start = clock.now
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (session, directory) in frozen {
                        // On the client's thread, as the mount runs its metadata requests.
                        group.addTask(executorPreference: client.executor) {
                            for i in 0..<files { try await operation(session, directory, i) }
                            await session.closesDone()  // the phase includes the closes it queued
                        }
                    }
                    try await group.waitForAll()
                }
                return Double(clients * files) / (clock.now - start).seconds
            }
            let creates = try await phase("create") { session, directory, i in
                guard case .opened(let opened, _) = try await session.perform(
                    .create(parent: directory, name: Array("f\(i)".utf8), flags: [.write, .create, .exclusive], mode: 0o644), as: .root) else {
                    throw CairnError(.internal, "create failed")
                }
                session.closeLater(opened.handle)  // as the mount closes on release
            }
            let stats = try await phase("stat") { session, directory, i in
                guard case .attributes = try await session.perform(.lookup(parent: directory, name: Array("f\(i)".utf8)), as: .root) else {
                    throw CairnError(.internal, "lookup failed")
                }
            }
            let unlinks = try await phase("unlink") { session, directory, i in
                guard case .released = try await session.perform(.unlink(parent: directory, name: Array("f\(i)".utf8)), as: .root) else {
                    throw CairnError(.internal, "unlink failed")
                }
            }
            for (session, _) in frozen { await session.close() }
            print(String(format: "meta clients=%d files=%d create/s %.0f stat/s %.0f unlink/s %.0f", clients, clients * files, creates, stats, unlinks))
        }
    }
}

/// Memory of the metadata state machine per inode: applies `files` creates in process (no
/// network, no log) and reports the resident set growth and the snapshot size.
struct MetaMemoryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meta-memory", abstract: "Resident memory per inode of the metadata state with N files.")

    @Option(help: "Files to create.") var files: Int = 1_000_000
    @Option(help: "Files per directory.") var perDirectory: Int = 10_000

    func run() throws {
        let machine = MetaStateMachine()
        let before = residentBytes()
        var directory: InodeNumber = 1
        let now = Timestamp(seconds: 1_800_000_000, nanoseconds: 0)
        for i in 0..<files {
            if i % perDirectory == 0 {
                guard case .attributes(let made) = machine.apply(MetaCommand(now: now, operation: .mkdir(parent: 1, name: Array("d\(i / perDirectory)".utf8), mode: 0o755))) else {
                    throw CairnError(.internal, "mkdir failed")
                }
                directory = made.inode
            }
            guard case .attributes = machine.apply(MetaCommand(now: now, operation: .mknod(
                parent: directory, name: Array("file-\(i)".utf8), type: .regular, mode: 0o644, rdev: 0))) else {
                throw CairnError(.internal, "mknod failed")
            }
        }
        let after = residentBytes()
        let snapshot = machine.snapshot().count
        let perInode = Double(after - before) / Double(files)
        print(String(format: "meta-memory files=%d rss growth %.0f MiB = %.0f B per file (name ~11 B); snapshot %.0f MiB = %.0f B per file",
                     files, Double(after - before) / 1048576, perInode, Double(snapshot) / 1048576, Double(snapshot) / Double(files)))
    }

    /// VmRSS from /proc/self/status.
    func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kib * 1024
    }
}
