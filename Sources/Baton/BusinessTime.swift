import Foundation

/// Business time has one precision everywhere — whole milliseconds — so that a deadline computed by a
/// handler, stored in a timer row, written to JSON and read back compares equal to itself.
extension Date {
    /// Milliseconds since 1970, rounded.
    public var millisecondsSince1970: Int64 {
        Int64((timeIntervalSince1970 * 1000).rounded())
    }

    /// The date at a whole number of milliseconds since 1970.
    public init(millisecondsSince1970 milliseconds: Int64) {
        self.init(timeIntervalSince1970: Double(milliseconds) / 1000)
    }

    /// This date rounded to whole milliseconds (the precision of business time).
    public var roundedToMilliseconds: Date {
        Date(millisecondsSince1970: millisecondsSince1970)
    }

    /// This date moved by `duration`.
    public func adding(_ duration: Duration) -> Date {
        let (seconds, attoseconds) = duration.components
        return addingTimeInterval(Double(seconds) + Double(attoseconds) / 1e18)
    }
}

/// ISO 8601 with milliseconds, UTC: what Baton's JSON writes for dates; reading also accepts whole seconds.
public enum ISO8601Milliseconds {
    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)
    private static let withoutFraction = Date.ISO8601FormatStyle(timeZone: .gmt)

    /// `2026-11-22T10:00:00.123Z`.
    public static func format(_ date: Date) -> String {
        // From the integer milliseconds: the format style truncates binary fractions (.123 → ".122").
        let milliseconds = date.millisecondsSince1970
        let (seconds, fraction) = (milliseconds.floorDivided(by: 1000), milliseconds.floorModulo(1000))
        let whole = withoutFraction.format(Date(timeIntervalSince1970: Double(seconds)))
        let digits = String(fraction)
        return whole.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// The date in an ISO 8601 date-time with or without fractional seconds, rounded to milliseconds.
    public static func parse(_ text: String) -> Date? {
        ((try? withFraction.parse(text)) ?? (try? withoutFraction.parse(text)))?.roundedToMilliseconds
    }
}

extension Int64 {
    fileprivate func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor < 0) ? quotient - 1 : quotient
    }

    fileprivate func floorModulo(_ divisor: Int64) -> Int64 {
        let remainder = self % divisor
        return remainder < 0 ? remainder + divisor : remainder
    }
}
