/// Parses and prints byte counts as operators write them: `4096`, `64KiB`, `4MiB`, `1G`, `2GB`.
/// Binary (`KiB`, `K`) and decimal (`KB`) units are distinct, as in `dd` and `fio`.
public enum ByteCount {
    /// Parses a byte count; nil for anything malformed, negative or overflowing.
    public static func parse(_ text: String) -> Int64? {
        let trimmed = text.trimmingPrefixAndSuffixSpaces()
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let value = Int64(digits) else { return nil }
        let unit = trimmed.dropFirst(digits.count).lowercased()
        let multipliers: [String: Int64] = [
            "": 1, "b": 1,
            "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
            "m": 1 << 20, "mib": 1 << 20, "mb": 1_000_000,
            "g": 1 << 30, "gib": 1 << 30, "gb": 1_000_000_000,
            "t": 1 << 40, "tib": 1 << 40, "tb": 1_000_000_000_000,
        ]
        guard let multiplier = multipliers[unit] else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    /// `4.0 MiB`, `812 B`: binary units, one decimal.
    public static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var unit = 0
        while abs(value) >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let tenths = Int64((value * 10).rounded())
        return "\(tenths / 10).\(abs(tenths % 10)) \(units[unit])"
    }
}

extension StringProtocol {
    func trimmingPrefixAndSuffixSpaces() -> Substring {
        let s = Substring(self)
        return s.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed().reduce(into: Substring()) { $0.append($1) }
    }
}
