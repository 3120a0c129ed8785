@testable import RaftRuntime
import Testing

/// The one batching rule `BatchQueue` and the pipelined server's answers share.
@Suite struct BatchLengthTests {
    @Test func takesWhatFitsAndAtLeastOne() {
        #expect(batchLength([Int](), weightMax: 10, weigh: { $0 }) == 0)
        #expect(batchLength([3, 3, 3], weightMax: 10, weigh: { $0 }) == 3)
        #expect(batchLength([3, 3, 3, 3], weightMax: 10, weigh: { $0 }) == 3)
        #expect(batchLength([4, 6, 1], weightMax: 10, weigh: { $0 }) == 2)
        // A single element heavier than the bound travels alone.
        #expect(batchLength([25, 1], weightMax: 10, weigh: { $0 }) == 1)
        #expect(batchLength([1, 25], weightMax: 10, weigh: { $0 }) == 1)
    }
}
