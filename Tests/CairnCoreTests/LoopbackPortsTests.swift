@testable import CairnCore
import Testing

@Suite struct LoopbackPortsTests {
    /// Picked ports are distinct, bindable, and outside the kernel's ephemeral range (which a
    /// bind to port 0 or an outgoing connection could take before the daemon binds them).
    @Test func portsAreDistinctFreeAndBelowTheEphemeralRange() throws {
        let range = try #require(ephemeralPortRange())
        let ports = try freeLoopbackPorts(8)
        #expect(Set(ports).count == 8)
        for port in ports {
            #expect(port >= 10_000 && port < range.lowerBound)
            #expect(loopbackPortIsFree(port))
        }
    }
}
