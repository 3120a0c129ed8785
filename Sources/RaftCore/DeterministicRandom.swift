/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator. RaftCore never touches global
/// randomness; every node gets its own generator from a seed in its `Config`, so a simulation replays exactly.
public struct SplitMix64: RandomNumberGenerator, Sendable, Equatable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniformly distributed value in `0..<bound` (Lemire's method without the rejection loop's bias issue:
    /// we use the standard library's unbiased algorithm, which is deterministic given the generator).
    public mutating func next(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "bound must be positive")
        return UInt64.random(in: 0..<bound, using: &self)
    }

    /// A uniformly distributed Int in `range`.
    public mutating func int(in range: ClosedRange<Int>) -> Int {
        Int.random(in: range, using: &self)
    }

    /// True with probability `numerator / denominator`.
    public mutating func chance(_ numerator: UInt64, in denominator: UInt64) -> Bool {
        next(below: denominator) < numerator
    }
}
