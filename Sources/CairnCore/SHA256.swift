import CCrypto

/// Incremental SHA-256 through OpenSSL libcrypto's EVP interface.
///
/// Wraps `EVP_MD_fetch`, `EVP_MD_CTX_new`, `EVP_DigestInit_ex2`, `EVP_DigestUpdate`,
/// `EVP_DigestFinal_ex` and `EVP_MD_CTX_free`. The algorithm object is fetched once per
/// process (fetching per hash costs a lock and a lookup). Not thread-safe: one hasher per stream.
public final class SHA256 {
    private let context: OpaquePointer

    /// The fetched algorithm, shared by every hasher. OpenSSL documents fetched
    /// `EVP_MD` objects as safe to share between threads.
    private static let algorithm = FetchedDigest()

    public init() {
        guard let context = EVP_MD_CTX_new() else {
            preconditionFailure("EVP_MD_CTX_new failed: out of memory")
        }
        self.context = context
        reset()
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Starts a new digest, discarding any bytes fed so far.
    public func reset() {
        let ok = EVP_DigestInit_ex2(context, Self.algorithm.pointer, nil)
        precondition(ok == 1, "EVP_DigestInit_ex2(sha256) failed")
    }

    /// Feeds bytes into the digest.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let ok = EVP_DigestUpdate(context, base, bytes.count)
        precondition(ok == 1, "EVP_DigestUpdate failed")
    }

    public func update<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        if done == nil {
            let array = Array(bytes)
            array.withUnsafeBytes { update($0) }
        }
    }

    /// Finishes the digest and resets the hasher for reuse.
    public func finalize() -> ChunkID {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = digest.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(context, $0.baseAddress, &length) }
        precondition(ok == 1 && length == 32, "EVP_DigestFinal_ex failed")
        reset()
        return ChunkID(digest: digest)!
    }

    /// The SHA-256 of `bytes` in one call.
    public static func hash<Bytes: Sequence>(_ bytes: Bytes) -> ChunkID where Bytes.Element == UInt8 {
        let hasher = SHA256()
        hasher.update(bytes)
        return hasher.finalize()
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> ChunkID {
        let hasher = SHA256()
        hasher.update(bytes)
        return hasher.finalize()
    }
}

/// The process-wide `EVP_MD` for SHA-256; immutable after fetch, so safe to share.
private final class FetchedDigest: @unchecked Sendable {
    let pointer: OpaquePointer
    init() {
        guard let md = EVP_MD_fetch(nil, "SHA256", nil) else {
            preconditionFailure("EVP_MD_fetch(SHA256) failed: is libcrypto's default provider available?")
        }
        pointer = md
    }
}
