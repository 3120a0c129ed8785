/// Runs `body`, then `cleanup` whether `body` returned or threw: the `defer` that an `await`
/// cannot go in (closing a pool, shutting down an event loop after a scoped use).
public func withAsyncCleanup<T>(_ body: () async throws -> T, cleanup: () async -> Void) async throws -> T {
    let result: T
    do {
        result = try await body()
    } catch {
        await cleanup()
        throw error
    }
    await cleanup()
    return result
}
