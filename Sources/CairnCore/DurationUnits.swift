extension Duration {
    /// The duration in whole nanoseconds: 0 if negative, `Int64.max` past about 292 years (for
    /// APIs and wire fields that count nanoseconds).
    public var wholeNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, carry) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow || carry ? .max : total
    }
}
