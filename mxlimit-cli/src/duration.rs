//! Remaining times as a table shows them: `1d2h`, `15m`, `350ms`. Durations the
//! operator types are parsed by `mxlimit_proto::duration`, as the servers parse theirs.

/// `1d2h`, `15m`, `42s`, `350ms`.
pub fn show(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    // The largest unit, and the next one when it is not zero: enough to read a TTL.
    let mut out = String::new();
    let mut shown = 0;
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
            shown += 1;
        } else if shown > 0 {
            break;
        }
        if shown == 2 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_two_largest_units() {
        assert_eq!(show(90_061_000), "1d1h");
        assert_eq!(show(86_460_000), "1d");
        assert_eq!(show(5_400_000), "1h30m");
        assert_eq!(show(42_000), "42s");
        assert_eq!(show(350), "350ms");
    }
}
