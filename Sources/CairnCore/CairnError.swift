/// An operating error: a disk, a network or a user did something the code must survive.
///
/// Programmer errors crash (`precondition`); everything else is one of these, carrying a
/// code callers can switch on, a message for people, and the underlying cause if any.
public struct CairnError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: UInt32, Sendable, Equatable, CaseIterable {
        /// The request itself is malformed (bad ID, bad range, bad frame).
        case invalidArgument = 1
        /// The named thing does not exist.
        case notFound = 2
        /// Bytes do not match the ID they were sent under; nothing was stored.
        case hashMismatch = 3
        /// Stored bytes fail their checksum; the copy was quarantined and not served.
        case corrupt = 4
        /// The disk is full or would fall under its configured reserve.
        case insufficientSpace = 5
        /// Something exceeds a configured bound (chunk size, frame size, page size).
        case tooLarge = 6
        /// A concurrency bound is reached; try again later.
        case busy = 7
        /// A local I/O error other than running out of space.
        case io = 8
        /// The peer broke the wire protocol; the connection is closed.
        case protocolViolation = 9
        /// The peer cannot be reached or went away.
        case unavailable = 10
        /// The thing already exists in a conflicting form.
        case alreadyExists = 11
        /// An invariant of the remote side broke; report it.
        case `internal` = 12
    }

    public var code: Code
    public var message: String
    /// A description of the underlying error (an errno, a decoder error), if any.
    public var cause: String?

    public init(_ code: Code, _ message: String, cause: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public init(_ code: Code, _ message: String, cause: any Error) {
        self.init(code, message, cause: String(describing: cause))
    }

    public var description: String {
        if let cause { return "\(code): \(message) (\(cause))" }
        return "\(code): \(message)"
    }
}

/// Runs `body`, which only throws `CairnError` but through an untyped-`rethrows` API
/// (`Array.withUnsafeBytes` and friends), and gives its error back its type.
@inlinable
public func typedCairnErrors<T>(_ body: () throws -> T) throws(CairnError) -> T {
    do {
        return try body()
    } catch let error as CairnError {
        throw error
    } catch {
        throw CairnError(.internal, "unexpected error", cause: error)
    }
}
