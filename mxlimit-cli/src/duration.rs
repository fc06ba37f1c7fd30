//! Durations as operators write them: `90s`, `15m`, `24h`, `7d`, `1h30m`.

use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(format!("{t:?}: unknown unit {c:?} (use s, m, h, d, w)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{t:?}: a number must come before {c:?}"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{t:?} is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "{t:?}: give a unit (for example {digits}s or {digits}m)"
        ));
    }
    Ok(Duration::from_millis(total))
}

/// `1d2h`, `15m`, `42s`, `350ms`.
pub fn show(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
        if out.len() >= 4 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows_durations() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert!(parse("10").unwrap_err().contains("give a unit"));
        assert!(parse("5y").unwrap_err().contains("unknown unit"));
        assert!(parse("").is_err());
        assert_eq!(show(90_061_000), "1d1h");
        assert_eq!(show(42_000), "42s");
        assert_eq!(show(350), "350ms");
    }
}
