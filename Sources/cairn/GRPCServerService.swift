import GRPCCore
import ServiceLifecycle

/// Runs a `GRPCServer` as a `Service`: serves until graceful shutdown, then lets in-flight
/// RPCs finish.
struct GRPCServerService<Transport: ServerTransport>: Service {
    let server: GRPCServer<Transport>

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.serve()
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}
