import CairnCore
import SwiftProtobuf

// Short names for the generated messages of Protos/chunk.proto.
public typealias ChunkRequest = Cairn_Chunk_V1_ChunkRequest
public typealias ChunkResponse = Cairn_Chunk_V1_ChunkResponse

extension ChunkResponse {
    /// A response carrying an error and no result.
    public init(error: CairnError) {
        self.init()
        status.code = error.code.rawValue
        status.message = error.message + (error.cause.map { " (\($0))" } ?? "")
    }

    /// The response's error, or nil on success. An unknown code from a newer peer reads as `.internal`.
    public var error: CairnError? {
        guard status.code != 0 else { return nil }
        return CairnError(CairnError.Code(rawValue: status.code) ?? .internal, status.message)
    }
}

extension ChunkID {
    /// Decodes an ID from a message field.
    /// - Throws: `.invalidArgument` unless the field holds exactly 32 bytes.
    public init(field: Data, name: String = "id") throws(CairnError) {
        guard let id = ChunkID(digest: field) else {
            throw CairnError(.invalidArgument, "\(name) must be 32 bytes (a SHA-256), got \(field.count)")
        }
        self = id
    }

    public var field: Data { Data(bytes) }
}

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
