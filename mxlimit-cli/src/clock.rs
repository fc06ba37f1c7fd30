//! Log time stamps as Unix times, for `import-log --seed`: loggers write the local
//! time without a zone (syslog, Exim, Postfix's `maillog_file`), or RFC 3339 with one
//! (rsyslog's high-precision format, the journal), and syslog leaves out the year.

use mxlimit_maillog::Stamp;

const DAY_MS: i64 = 86_400_000;

/// Days from 1970-01-01 to a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil year of a Unix time, in UTC.
fn year_of(unix_ms: i64) -> i64 {
    let z = unix_ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// Unix ms of a wall-clock time read in UTC.
pub fn utc_ms(y: i64, s: &Stamp) -> i64 {
    (days_from_civil(y, s.month, s.day) * 86_400 + i64::from(s.secs)) * 1000
}

/// Unix ms of a wall-clock time read in the local zone (`TZ`, else /etc/localtime),
/// daylight saving time as it was then.
pub fn local_ms(y: i64, s: &Stamp) -> Option<i64> {
    // SAFETY: `tm` is plain data, zeroed then filled; mktime reads and normalises it.
    // The CLI runs one thread, so nothing changes TZ under mktime.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = i32::try_from(y - 1900).ok()?;
        tm.tm_mon = i32::from(s.month) - 1;
        tm.tm_mday = i32::from(s.day);
        tm.tm_hour = (s.secs / 3600) as i32;
        tm.tm_min = (s.secs / 60 % 60) as i32;
        tm.tm_sec = (s.secs % 60) as i32;
        // Whether DST was in force then: mktime's to find out.
        tm.tm_isdst = -1;
        let t = libc::mktime(&mut tm);
        // time_t is narrower than i64 on some targets.
        #[allow(clippy::useless_conversion)]
        (t != -1).then(|| i64::from(t) * 1000)
    }
}

/// The zone an RFC 3339 stamp names, in seconds east of UTC: `…Z`, `…+01:00`,
/// `…-0500`. None for stamps without one.
pub fn offset_secs(time: &str) -> Option<i64> {
    let b = time.as_bytes();
    if b.len() < 20 || b[10] != b'T' {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let rest = time.get(i..)?;
    if rest.starts_with(['Z', 'z']) {
        return Some(0);
    }
    let sign = match rest.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = rest[1..]
        .chars()
        .take(5)
        .filter(|c| *c != ':')
        .take(4)
        .collect();
    if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    (h < 24 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// The Unix time (ms) of a log's time stamp. A stamp without a year is put in `year`
/// when given, else in the latest year that puts it no more than a day after `now_ms`
/// (logs are of the past; a day spares clocks and zones that disagree). `local`
/// reads a wall-clock time without a zone ([`local_ms`] in the CLI).
pub fn unix_ms(
    time: &str,
    year: Option<u16>,
    now_ms: i64,
    mut local: impl FnMut(i64, &Stamp) -> Option<i64>,
) -> Option<i64> {
    let stamp = mxlimit_maillog::stamp(time)?;
    let mut read = |y: i64| match offset_secs(time) {
        Some(off) => Some(utc_ms(y, &stamp) - off * 1000),
        None => local(y, &stamp),
    };
    if let Some(y) = stamp.year.or(year) {
        return read(i64::from(y));
    }
    let this = year_of(now_ms);
    (this - 1..=this + 1)
        .rev()
        .filter_map(read)
        .find(|t| *t <= now_ms + DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i64, s: &Stamp) -> Option<i64> {
        Some(utc_ms(y, s))
    }

    const DEC_3_2026_NOON: i64 = 1_796_299_200_000;

    #[test]
    fn civil_dates_round_trip_through_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            days_from_civil(2026, 12, 3) * DAY_MS + DAY_MS / 2,
            DEC_3_2026_NOON
        );
        for y in [1970, 1999, 2000, 2024, 2026, 2100] {
            assert_eq!(year_of(days_from_civil(y, 1, 1) * DAY_MS), y);
            assert_eq!(year_of(days_from_civil(y, 12, 31) * DAY_MS + DAY_MS - 1), y);
        }
    }

    #[test]
    fn zones_written_in_the_stamp_are_honoured() {
        let at = |t: &str| unix_ms(t, None, DEC_3_2026_NOON, |_, _| None);
        assert_eq!(at("2026-12-03T12:00:00Z"), Some(DEC_3_2026_NOON));
        assert_eq!(
            at("2026-12-03T13:00:00.123456+01:00"),
            Some(DEC_3_2026_NOON)
        );
        assert_eq!(at("2026-12-03T07:00:00-0500"), Some(DEC_3_2026_NOON));
        // Without a zone, the local reading is asked for (and here refuses).
        assert_eq!(at("2026-12-03 12:00:00"), None);
        for bad in ["2026-12-03T12:00:00+1", "2026-12-03T12:00:00+25:00", "nope"] {
            assert_eq!(offset_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_missing_year_is_the_latest_not_ahead() {
        let at = |t: &str, now: i64| unix_ms(t, None, now, utc);
        assert_eq!(
            at("Dec  3 12:00:00", DEC_3_2026_NOON),
            Some(DEC_3_2026_NOON)
        );
        // A day ahead is still this year; more is last year's.
        let dec4 = at("Dec  4 11:00:00", DEC_3_2026_NOON).unwrap();
        assert_eq!(dec4, DEC_3_2026_NOON + 23 * 3_600_000);
        let dec5 = at("Dec  5 12:00:00", DEC_3_2026_NOON).unwrap();
        assert_eq!(year_of(dec5), 2025);
        // Just after New Year, December is last year's.
        let jan1 = utc_ms(2027, &mxlimit_maillog::stamp("Jan  1 00:10:00").unwrap());
        assert_eq!(year_of(at("Dec 31 23:50:00", jan1).unwrap()), 2026);
        // A year given (--since's) wins.
        let t = unix_ms("Dec  3 12:00:00", Some(2024), DEC_3_2026_NOON, utc).unwrap();
        assert_eq!(year_of(t), 2024);
    }
}
