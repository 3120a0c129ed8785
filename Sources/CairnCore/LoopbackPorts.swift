#if canImport(Glibc)
import Glibc
#endif

/// `count` distinct TCP ports on 127.0.0.1 that were free a moment ago, for daemons that must
/// know each other's ports before they start.
///
/// Taken below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`): a
/// port from that range, free when picked, can be handed by the kernel to any later bind to
/// port 0 or outgoing connection (a daemon's own Raft listener, a client's socket) before the
/// daemon it was meant for binds it — which failed a test run with "address already in use".
/// Below the range only another explicit picker can take it; candidates are random and each
/// is checked by binding it.
public func freeLoopbackPorts(_ count: Int) throws(CairnError) -> [Int] {
    let ephemeralLow = ephemeralPortRange()?.lowerBound ?? 32_768
    let first = 10_000, last = ephemeralLow - 1
    guard last - first >= 100 * count else {
        throw CairnError(.unavailable, "no port range below the ephemeral ports (\(ephemeralLow)...) to pick \(count) from")
    }
    var ports: [Int] = []
    var attempts = 0
    while ports.count < count {
        attempts += 1
        guard attempts <= 100 * count + 1000 else { throw CairnError(.unavailable, "no free loopback port found in \(first)...\(last)") }
        let candidate = Int.random(in: first...last)
        if !ports.contains(candidate) && loopbackPortIsFree(candidate) { ports.append(candidate) }
    }
    return ports
}

/// The kernel's range of ephemeral ports, if it can be read.
func ephemeralPortRange() -> ClosedRange<Int>? {
    guard let file = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r") else { return nil }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 64)
    guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
    let fields = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
    guard fields.count == 2, fields[0] <= fields[1] else { return nil }
    return fields[0]...fields[1]
}

/// Whether a listening socket could bind `port` on 127.0.0.1 just now.
func loopbackPortIsFree(_ port: Int) -> Bool {
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard s >= 0 else { return false }
    defer { close(s) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}
