import CairnCore
import NIOCore
@_exported import struct RaftCore.SplitMix64
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp for one test, removed when the test ends.
public struct TestDirectory: ~Copyable {
    public let path: FilePath

    public init(_ name: String = "store") {
        var template = Array("/tmp/cairn-test-\(name)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = FilePath(String(cString: template))
    }

    deinit { removeTree(path) }

    /// Files in a subdirectory (e.g. "tmp"), sorted; empty if it does not exist.
    public func entries(_ subdirectory: String) -> [String] {
        (try? FileSystemCalls.directoryEntries(path.appending(subdirectory))) ?? []
    }
}

public func removeTree(_ path: FilePath) {
    guard let status = try? FileSystemCalls.status(path) else { return }
    if status.isDirectory {
        for name in (try? FileSystemCalls.directoryEntries(path)) ?? [] { removeTree(path.appending(name)) }
        _ = path.withPlatformString { rmdir($0) }
    } else {
        _ = try? FileSystemCalls.unlink(path)
    }
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
public func testBytes(count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix(seed: seed &+ 0x9E37_79B9_7F4A_7C15)
    var out = [UInt8]()
    out.reserveCapacity(count + 8)
    while out.count < count {
        withUnsafeBytes(of: generator.next()) { out.append(contentsOf: $0) }
    }
    return Array(out.prefix(count))
}

public func quietLogger() -> Logger {
    var logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    return logger
}

/// Flips one bit of the byte at `offset` of a file, in place.
public func flipByte(in path: FilePath, at offset: Int64) throws {
    let fd = try FileDescriptor.open(path, .readWrite)
    defer { try? fd.close() }
    var byte: UInt8 = 0
    _ = try withUnsafeMutableBytes(of: &byte) { try fd.read(fromAbsoluteOffset: offset, into: $0) }
    byte ^= 0x10
    _ = try withUnsafeBytes(of: &byte) { try fd.write(toAbsoluteOffset: offset, $0) }
}

/// A chunk of `count` seeded bytes and its ID.
public func testChunk(_ count: Int, seed: UInt64) -> (ChunkID, ByteBuffer) {
    let bytes = testBytes(count: count, seed: seed)
    return (SHA256.hash(bytes), ByteBuffer(bytes: bytes))
}

/// The seeded generator of test data and random test schedules: RaftCore's SplitMix64, the one
/// the simulator uses.
public typealias SplitMix = SplitMix64

/// Waits until `condition` holds, polling every 20 ms; false if `timeout` passes first.
public func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Waits until `value` gives non-nil (polling every 20 ms) and returns it; nil if `timeout` passes first.
public func eventuallyValue<T>(timeout: Duration = .seconds(20), _ value: () async throws -> T?) async rethrows -> T? {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if let result = try await value() { return result }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await value()
}

/// The code of the `CairnError` that `body` throws; nil if it succeeds, `.internal` for any
/// other error. For `#expect(await errorCode { … } == .notFound)`.
public func errorCode(_ body: () async throws -> Void) async -> CairnError.Code? {
    do {
        try await body()
        return nil
    } catch let error as CairnError {
        return error.code
    } catch {
        return .internal
    }
}
