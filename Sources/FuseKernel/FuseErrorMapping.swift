import CairnCore
import SystemPackage

/// The one place where errors become the positive Linux errno a FUSE reply carries.
public enum FuseErrorMapping {
    /// `Errno` passes through; `CairnError` maps by code; anything else is `EIO`.
    public static func errno(for error: any Error) -> Int32 {
        switch error {
        case let error as Errno:
            return error.rawValue > 0 ? error.rawValue : Errno.ioError.rawValue
        case let error as CairnError:
            return errno(for: error.code).rawValue
        case is CancellationError:
            return Errno.interrupted.rawValue
        default:
            return Errno.ioError.rawValue
        }
    }

    /// What a `CairnError.Code` means to a system call.
    public static func errno(for code: CairnError.Code) -> Errno {
        switch code {
        case .invalidArgument: .invalidArgument
        case .notFound: .noSuchFileOrDirectory
        case .hashMismatch, .corrupt, .io, .protocolViolation, .internal: .ioError
        case .insufficientSpace: .noSpace
        case .tooLarge: .fileTooLarge
        case .busy: .resourceTemporarilyUnavailable
        case .unavailable: .ioError
        case .alreadyExists: .fileExists
        }
    }
}
