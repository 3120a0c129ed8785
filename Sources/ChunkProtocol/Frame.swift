import CairnCore
import NIOCore

/// The fixed preamble of every frame on a chunkserver's data port (24 bytes, big-endian):
///
///     0  u32 magic "CAIR" (0x43414952)
///     4  u8  version (1)
///     5  u8  kind: 1 request, 2 response
///     6  u16 flags (must be 0)
///     8  u64 request ID, echoed by the response
///     16 u32 header length: a protobuf `ChunkRequest` or `ChunkResponse`
///     20 u32 body length: raw bytes that follow the header (a put's chunk, a get's range)
///
/// Lengths are checked against `ChunkLimits` before a byte of the header or body is buffered,
/// so a peer cannot make the other side allocate more than the limits allow.
public struct FramePreamble: Sendable, Equatable {
    public static let byteCount = 24
    public static let magic: UInt32 = 0x4341_4952
    public static let version: UInt8 = 1

    public enum Kind: UInt8, Sendable {
        case request = 1
        case response = 2
    }

    public var kind: Kind
    public var requestID: UInt64
    public var headerLength: Int
    public var bodyLength: Int

    public init(kind: Kind, requestID: UInt64, headerLength: Int, bodyLength: Int) {
        self.kind = kind
        self.requestID = requestID
        self.headerLength = headerLength
        self.bodyLength = bodyLength
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(requestID)
        buffer.writeInteger(UInt32(headerLength))
        buffer.writeInteger(UInt32(bodyLength))
    }

    /// Reads a preamble if 24 bytes are available; nil if more bytes are needed.
    ///
    /// - Throws: `.protocolViolation` for a wrong magic, version, kind or flags, or a length
    ///   past the limits.
    public static func read(from buffer: inout ByteBuffer, expecting kind: Kind, limits: ChunkLimits) throws(CairnError) -> FramePreamble? {
        guard buffer.readableBytes >= byteCount else { return nil }
        let start = buffer.readerIndex
        let magic = buffer.getInteger(at: start, as: UInt32.self)!
        let version = buffer.getInteger(at: start + 4, as: UInt8.self)!
        let kindByte = buffer.getInteger(at: start + 5, as: UInt8.self)!
        let flags = buffer.getInteger(at: start + 6, as: UInt16.self)!
        let requestID = buffer.getInteger(at: start + 8, as: UInt64.self)!
        let headerLength = Int(buffer.getInteger(at: start + 16, as: UInt32.self)!)
        let bodyLength = Int(buffer.getInteger(at: start + 20, as: UInt32.self)!)
        guard magic == Self.magic else {
            throw CairnError(.protocolViolation, "not a Cairn chunk frame (bad magic 0x\(String(magic, radix: 16)))")
        }
        guard version == Self.version else { throw CairnError(.protocolViolation, "unsupported frame version \(version)") }
        guard kindByte == kind.rawValue else { throw CairnError(.protocolViolation, "unexpected frame kind \(kindByte)") }
        guard flags == 0 else { throw CairnError(.protocolViolation, "unknown frame flags 0x\(String(flags, radix: 16))") }
        guard headerLength > 0, headerLength <= limits.frameHeaderBytesMax else {
            throw CairnError(.protocolViolation, "frame header of \(headerLength) bytes outside 1...\(limits.frameHeaderBytesMax)")
        }
        guard bodyLength <= limits.chunkBytesMax else {
            throw CairnError(.protocolViolation, "frame body of \(bodyLength) bytes exceeds chunkBytesMax \(limits.chunkBytesMax)")
        }
        buffer.moveReaderIndex(forwardBy: byteCount)
        return FramePreamble(kind: kind, requestID: requestID, headerLength: headerLength, bodyLength: bodyLength)
    }
}

/// What the frame decoder hands on: a frame's preamble and header, then its body in parts
/// (each at most `bodyPartBytesMax`, as many bytes as had arrived), then the end. Bodies stream: a 4 MiB put is written to
/// disk while the rest of it is still arriving.
public enum FramePart: Sendable {
    case head(FramePreamble, header: ByteBuffer)
    case body(ByteBuffer)
    case end
}

/// Splits a byte stream into `FramePart`s. Closes nothing itself: an error it throws makes
/// the connection's owner answer with `protocolViolation` and close.
public struct FrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = FramePart

    /// Body bytes are handed on in parts of at most this size.
    public static let bodyPartBytesMax = 1 << 20

    /// The receive buffers for a connection carrying frames: they grow to `bodyPartBytesMax`,
    /// so a chunk body arrives in a few large reads, each handed on as one body part without
    /// a copy. A buffered part never pins more than one such buffer.
    public static var receiveBufferAllocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 << 10, maximum: bodyPartBytesMax)
    }

    private enum State {
        case preamble
        case header(FramePreamble)
        case body(remaining: Int)
    }

    private let expecting: FramePreamble.Kind
    private let limits: ChunkLimits
    private var state = State.preamble

    public init(expecting: FramePreamble.Kind, limits: ChunkLimits) {
        self.expecting = expecting
        self.limits = limits
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch state {
        case .preamble:
            guard let preamble = try FramePreamble.read(from: &buffer, expecting: expecting, limits: limits) else {
                return .needMoreData
            }
            state = .header(preamble)
            return .continue
        case .header(let preamble):
            guard let header = buffer.readSlice(length: preamble.headerLength) else { return .needMoreData }
            context.fireChannelRead(wrapInboundOut(.head(preamble, header: header)))
            if preamble.bodyLength == 0 {
                context.fireChannelRead(wrapInboundOut(.end))
                state = .preamble
            } else {
                state = .body(remaining: preamble.bodyLength)
            }
            return .continue
        case .body(let remaining):
            // Hand on whatever body bytes have arrived (up to a part's bound) instead of
            // waiting for a full part: a slice that stays alive while the decoder's buffer
            // grows forces NIO to copy that buffer (copy-on-write), so slicing everything
            // that is readable leaves nothing behind to copy.
            let want = min(remaining, Self.bodyPartBytesMax, buffer.readableBytes)
            guard want > 0, let part = buffer.readSlice(length: want) else { return .needMoreData }
            context.fireChannelRead(wrapInboundOut(.body(part)))
            if remaining == want {
                context.fireChannelRead(wrapInboundOut(.end))
                state = .preamble
            } else {
                state = .body(remaining: remaining - want)
            }
            return .continue
        }
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if case .preamble = state, buffer.readableBytes == 0 { return .needMoreData }
        throw CairnError(.protocolViolation, "connection closed in the middle of a frame")
    }
}

/// An outbound frame: preamble, header bytes, and a body that is bytes in memory or a
/// region of an open file (sent with `sendfile`, never copied into this process).
public struct OutboundFrame: Sendable {
    public var kind: FramePreamble.Kind
    public var requestID: UInt64
    public var header: [UInt8]
    public var body: ByteBuffer?
    /// A file body: `length` bytes from the start of the file behind `descriptor`. The encoder
    /// takes the descriptor and closes it once the bytes are written (or the write fails); a
    /// frame dropped before it reaches the encoder closes it as it goes.
    public private(set) var file: (descriptor: OwnedFileDescriptor, length: Int)?

    public init(kind: FramePreamble.Kind, requestID: UInt64, header: [UInt8], body: ByteBuffer? = nil) {
        self.kind = kind
        self.requestID = requestID
        self.header = header
        self.body = body
    }

    /// A frame whose body is the first `length` bytes of the file open as `descriptor`.
    public static func fileBody(kind: FramePreamble.Kind, requestID: UInt64, header: [UInt8],
                                descriptor: OwnedFileDescriptor, length: Int) -> OutboundFrame {
        var frame = OutboundFrame(kind: kind, requestID: requestID, header: header)
        frame.file = (descriptor, length)
        return frame
    }

    var bodyLength: Int { file?.length ?? body?.readableBytes ?? 0 }
}

/// Writes `OutboundFrame`s: the preamble and header in one buffer, the body as its own write
/// (no copy of chunk bytes).
public final class FrameEncoder: ChannelOutboundHandler, Sendable {
    public typealias OutboundIn = OutboundFrame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var head = context.channel.allocator.buffer(capacity: FramePreamble.byteCount + frame.header.count)
        FramePreamble(kind: frame.kind, requestID: frame.requestID, headerLength: frame.header.count,
                      bodyLength: frame.bodyLength).write(to: &head)
        head.writeBytes(frame.header)
        if let file = frame.file {
            guard let descriptor = file.descriptor.take() else {
                promise?.fail(CairnError(.internal, "a frame's file body was sent twice"))
                return
            }
            let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor.rawValue)
            let sent = context.eventLoop.makePromise(of: Void.self)
            sent.futureResult.whenComplete { _ in try? handle.close() }
            if let promise { sent.futureResult.cascade(to: promise) }
            context.write(wrapOutboundOut(head), promise: nil)
            context.write(NIOAny(IOData.fileRegion(FileRegion(fileHandle: handle, readerIndex: 0, endIndex: file.length))), promise: sent)
        } else if let body = frame.body, body.readableBytes > 0 {
            context.write(wrapOutboundOut(head), promise: nil)
            context.write(wrapOutboundOut(body), promise: promise)
        } else {
            context.write(wrapOutboundOut(head), promise: promise)
        }
    }
}
