import ArgumentParser
import CCairnLinux

/// `cairn`: one executable, a subcommand per part (like `weed` or `juicefs`).
@main
struct Cairn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cairn",
        abstract: "Cairn: a distributed file system of content-addressed chunks.",
        version: "0.1.0",
        subcommands: [UpCommand.self, MountCommand.self, MetaReplicaCommand.self, ChunkserverCommand.self, StatusCommand.self, ChunkCommand.self, KVCommand.self,
                      PassthroughCommand.self]
    )

    /// Every subcommand moves chunk-sized buffers: malloc keeps them (see the C function).
    static func main() async {
        _ = cairn_malloc_keep_large_buffers()
        await main(nil)
    }
}
