import Foundation

/// Deterministic message ids: the same inputs always give the same id, so a handler that runs again after a
/// crash issues messages with the ids it issued the first time, and consumers de-duplicate them.
public enum MessageID {
    /// A 128-bit id (32 hex digits) derived from the parts, e.g. instance id, triggering message id, index.
    public static func derived(from parts: String...) -> String {
        derived(fromParts: parts)
    }

    /// A 128-bit id derived from the parts.
    public static func derived(fromParts parts: [String]) -> String {
        let (first, second) = hashes(of: parts)
        return hex(first, digits: 16) + hex(second, digits: 16)
    }

    /// A 128-bit id (32 hex digits) derived from the parts that sorts by `time`: its first 48 bits are `time`
    /// in whole milliseconds since 1970 (as in a UUIDv7), the other 80 the parts' hash. Deterministic as long as
    /// `time` is: the time of the message that caused this one, not a clock reading.
    ///
    /// A store keeps the ids of the messages it handled in a b-tree (its inbox). Random ids land on a page at
    /// random, a page written for each new id once the tree outgrows what a transaction's messages share; ids
    /// derived from the recent times of messages in flight land together on the tree's last pages.
    public static func derived(at time: Date, from parts: String...) -> String {
        derived(at: time, fromParts: parts)
    }

    /// A 128-bit id derived from the parts that sorts by `time`.
    public static func derived(at time: Date, fromParts parts: [String]) -> String {
        // Clamped as a Double: a timestamp from outside may be anything.
        let milliseconds = (time.timeIntervalSince1970 * 1000).rounded()
        let prefix = milliseconds >= 0 ? UInt64(min(milliseconds, Double(1 << 48 - 1))) : 0
        let (first, second) = hashes(of: parts)
        return hex(prefix, digits: 12) + hex(first, digits: 16) + hex(second >> 48, digits: 4)
    }

    /// Two independent 64-bit FNV-1a hashes of the length-prefixed parts (so ("ab","c") != ("a","bc")), each
    /// finished with an avalanche.
    private static func hashes(of parts: [String]) -> (UInt64, UInt64) {
        var first: UInt64 = 0xcbf2_9ce4_8422_2325
        var second: UInt64 = 0x6c62_272e_07bb_0142
        func mix(_ byte: UInt8) {
            first = (first ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            second = (second ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 &+ 0x9e37_79b9
        }
        for part in parts {
            for byte in String(part.utf8.count).utf8 { mix(byte) }
            mix(0x1f)
            for byte in part.utf8 { mix(byte) }
        }
        return (avalanche(first), avalanche(second))
    }

    /// MurmurHash3's 64-bit finalizer: every input bit flips about half the output bits (FNV alone barely
    /// mixes the last bytes, so ids differing only in their index would look alike).
    private static func avalanche(_ value: UInt64) -> UInt64 {
        var mixed = value
        mixed ^= mixed >> 33
        mixed &*= 0xff51_afd7_ed55_8ccd
        mixed ^= mixed >> 33
        mixed &*= 0xc4ce_b9fe_1a85_ec53
        mixed ^= mixed >> 33
        return mixed
    }

    private static func hex(_ value: UInt64, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: digits - text.count) + text
    }
}
