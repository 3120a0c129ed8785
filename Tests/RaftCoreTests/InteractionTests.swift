import Foundation
import RaftCore
import Testing

/// Transcript tests in the style of etcd-io/raft's testdata/*.txt: a script of commands, each followed by
/// `----` and the exact output it must produce, ending at a blank line. The files double as documentation of
/// how the protocol behaves. Set CAIRN_REWRITE_TRANSCRIPTS=1 to regenerate the expected output (then review the
/// diff: the point is that a human checked it).
@Suite struct InteractionTests {
    static let files = ["prevote_checkquorum.txt", "leader_transfer.txt", "slow_follower_after_compaction.txt",
                        "confchange_replace_leader.txt"]

    @Test(arguments: files)
    func transcript(_ name: String) throws {
        let url = try #require(Bundle.module.url(forResource: "testdata/\(name)", withExtension: nil)
            ?? Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "testdata"))
        let text = try String(contentsOf: url, encoding: .utf8)
        let blocks = try TranscriptParser.parse(text)
        let runner = TranscriptRunner()
        var rewritten = ""
        for block in blocks {
            let actual = runner.run(block.command)
            #expect(actual == block.expected, "\(name): `\(block.command)` (line \(block.line))")
            rewritten += block.preamble + block.command + "\n----\n" + actual.joined(separator: "\n") + "\n\n"
        }
        if ProcessInfo.processInfo.environment["CAIRN_REWRITE_TRANSCRIPTS"] == "1" {
            // Write back into the source tree (the bundle holds a copy).
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("testdata").appendingPathComponent(name)
            try rewritten.write(to: source, atomically: true, encoding: .utf8)
        }
    }
}

struct TranscriptBlock {
    var preamble: String
    var command: String
    var expected: [String]
    var line: Int
}

enum TranscriptParser {
    struct Malformed: Error { var line: Int }

    /// Comments and blank lines before a command are kept as its preamble (so a rewrite preserves them).
    static func parse(_ text: String) throws -> [TranscriptBlock] {
        let lines = text.components(separatedBy: "\n")
        var blocks: [TranscriptBlock] = []
        var i = 0
        var preamble = ""
        while i < lines.count {
            let line = lines[i]
            if line.isEmpty || line.hasPrefix("#") {
                if i < lines.count - 1 || !line.isEmpty { preamble += line + "\n" }
                i += 1
                continue
            }
            guard i + 1 < lines.count, lines[i + 1] == "----" else { throw Malformed(line: i + 1) }
            var expected: [String] = []
            var j = i + 2
            while j < lines.count && !lines[j].isEmpty {
                expected.append(lines[j])
                j += 1
            }
            blocks.append(TranscriptBlock(preamble: preamble, command: line, expected: expected, line: i + 1))
            preamble = ""
            i = j + 1
        }
        return blocks
    }
}

/// Interprets transcript commands against a `TestCluster` and returns what they printed.
final class TranscriptRunner {
    let cluster = TestCluster()

    init() { cluster.narrate = true }

    private func ids(_ s: String) -> [NodeID] { s.split(separator: ",").compactMap { NodeID(String($0)) } }

    func run(_ command: String) -> [String] {
        cluster.output = []
        let words = command.split(separator: " ").map(String.init)
        let args = Array(words.dropFirst())
        func id(_ i: Int) -> NodeID { NodeID(args[i])! }
        var keyed: [String: String] = [:]
        for a in args where a.contains("=") {
            let kv = a.split(separator: "=", maxSplits: 1).map(String.init)
            keyed[kv[0]] = kv[1]
        }
        switch words[0] {
        case "bootstrap":
            cluster.bootstrap(voters: ids(keyed["voters"] ?? ""), learners: ids(keyed["learners"] ?? ""))
        case "add-node":
            cluster.add(id(0))
        case "campaign":
            cluster.node(id(0)).campaign()
        case "tick":
            cluster.tick(id(0), times: args.count > 1 ? Int(args[1])! : 1)
        case "tick-election":
            cluster.tickElection(id(0))
        case "stabilize":
            cluster.stabilize(args.isEmpty ? nil : args.map { NodeID($0)! })
        case "process-ready":
            for a in args { cluster.processReady(NodeID(a)!) }
        case "deliver-msgs":
            if args.isEmpty { cluster.deliver() } else { for a in args { cluster.deliver(to: NodeID(a)!) } }
        case "drop-msgs":
            for a in args { cluster.drop(to: NodeID(a)!) }
        case "propose":
            do { try cluster.node(id(0)).propose(Array(args[1].utf8)) } catch { cluster.output.append("\(error)") }
        case "propose-conf-change":
            let kind: ConfChange.Kind = ["add-voter": .addVoter, "add-learner": .addLearner, "remove": .removeNode][args[1]]!
            do { try cluster.node(id(0)).proposeConfChange(ConfChange(kind: kind, nodeID: id(2))) } catch {
                cluster.output.append("\(error)")
            }
        case "transfer-leadership":
            cluster.node(id(0)).transferLeadership(to: id(1))
        case "read-index":
            do { try cluster.node(id(0)).readIndex(context: Array(args[1].utf8)) } catch { cluster.output.append("\(error)") }
        case "compact":
            cluster.compact(id(0), to: UInt64(args[1])!)
        case "isolate":
            cluster.isolate(id(0))
        case "heal":
            cluster.heal()
        case "status":
            for a in args { cluster.output.append(contentsOf: cluster.describeStatus(NodeID(a)!)) }
        case "log":
            let n = cluster.node(id(0))
            let s = n.status
            let entries = (try? n.entries(s.firstIndex..<(s.lastIndex + 1))) ?? []
            cluster.output.append(entries.isEmpty ? "(empty log after \(s.firstIndex - 1))" : entries.map(cluster.describe).joined(separator: "\n"))
        case "applied":
            let applied = cluster.nodes[id(0)]!.applied.filter { !$0.data.isEmpty }
            cluster.output.append(applied.isEmpty ? "(nothing applied)" : applied.map(cluster.describe).joined(separator: "\n"))
        default:
            cluster.output.append("unknown command \(words[0])")
        }
        return cluster.output.isEmpty ? ["ok"] : cluster.output.flatMap { $0.components(separatedBy: "\n") }
    }
}
