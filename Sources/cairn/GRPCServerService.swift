import GRPCCore
import ServiceLifecycle

/// Runs a `GRPCServer` as a `Service`: serves until graceful shutdown, then lets in-flight
/// RPCs finish. With an executor, the server's handlers run on it (a replica's
/// `SharedEventLoop`).
struct GRPCServerService<Transport: ServerTransport>: Service {
    let server: GRPCServer<Transport>
    var executor: (any TaskExecutor)? = nil

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await withTaskExecutorPreference(executor) { try await server.serve() }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}
