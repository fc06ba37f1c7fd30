//! The part of a log line before the MTA's message: time, host, program, pid.
//!
//! - syslog (rsyslog's traditional format, `journalctl -o short`):
//!   `Jun  3 10:00:01 mx sm-mta[4242]: message`
//! - Postfix's own `maillog_file` (`msg_logger.c:200`: `"%b %d %H:%M:%S "`, the day
//!   zero-padded): `Jun 03 10:00:01 mx postfix/smtpd[1234]: message`
//! - syslog with RFC 3339 time stamps (rsyslog's high-precision format):
//!   `2026-12-03T10:00:01.123456+00:00 mx postfix/smtpd[1234]: message`
//! - Exim's own log files (`log.c:984`: `YYYY-MM-DD HH:MM:SS`, then `[pid] ` with
//!   `log_selector = +pid`, an offset with `+tz`):
//!   `2024-06-03 10:00:01 [4242] H=[192.0.2.7] ...`

/// A log line, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub time: &'a str,
    /// `sm-mta`, `postfix/smtpd`, `exim4`; `exim` for Exim's own files.
    pub program: &'a str,
    /// The process: one sendmail process serves one SMTP session.
    pub pid: Option<u32>,
    pub message: &'a str,
}

/// `None` for a line in none of the formats above.
pub fn split(text: &str) -> Option<Line<'_>> {
    let text = text.trim_end_matches(['\r', '\n']);
    if let Some(l) = exim_native(text) {
        return Some(l);
    }
    let (time, rest) = if is_bsd_time(text) {
        (&text[..15], text.get(16..)?)
    } else {
        let (first, rest) = text.split_once(' ')?;
        if !(first.len() >= 19 && first.as_bytes()[4] == b'-' && first.contains('T')) {
            return None;
        }
        (first, rest)
    };
    // The host, then `program[pid]: message`.
    let (_host, rest) = rest.trim_start().split_once(' ')?;
    let (tag, message) = rest.split_once(": ")?;
    let (program, pid) = match tag.split_once('[') {
        Some((p, pid)) => (p, pid.strip_suffix(']').and_then(|n| n.parse().ok())),
        None => (tag, None),
    };
    if program.is_empty() || program.contains(' ') {
        return None;
    }
    Some(Line {
        time,
        program,
        pid,
        message,
    })
}

/// A line's time stamp, read: the wall-clock time as the logger wrote it, in its own
/// zone (an offset, when there is one, is not applied). Traditional syslog stamps have
/// no year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub year: Option<u16>,
    pub month: u8,
    pub day: u8,
    /// Seconds since midnight.
    pub secs: u32,
}

impl Stamp {
    /// The stamp as one sortable number, a missing year taken as `year`.
    pub fn key(&self, year: u16) -> u64 {
        let y = u64::from(self.year.unwrap_or(year));
        ((y * 100 + u64::from(self.month)) * 100 + u64::from(self.day)) * 100_000
            + u64::from(self.secs)
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The time of a [`Line`]: `Jun  3 10:00:01`, `Jun 03 10:00:01`,
/// `2026-12-03T10:00:01.123456+00:00`, `2024-06-03 10:00:01`.
pub fn stamp(time: &str) -> Option<Stamp> {
    let digits = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let clock = |s: &str| -> Option<u32> {
        let mut it = s.splitn(3, ':');
        let (h, m, sec) = (it.next()?, it.next()?, it.next()?);
        let sec = sec.get(..2)?;
        let (h, m, sec) = (digits(h)?, digits(m)?, digits(sec)?);
        (h < 24 && m < 60 && sec < 61).then_some(h * 3600 + m * 60 + sec)
    };
    let b = time.as_bytes();
    if b.len() >= 15 && b[3] == b' ' {
        let name = time.get(..3)?;
        let month = MONTHS.iter().position(|m| *m == name)? as u8 + 1;
        let day = digits(time.get(4..6)?.trim_start())?;
        let secs = clock(time.get(7..15)?)?;
        return (1..=31).contains(&day).then_some(Stamp {
            year: None,
            month,
            day: day as u8,
            secs,
        });
    }
    if b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && (b[10] == b' ' || b[10] == b'T') {
        let year = digits(time.get(..4)?)?;
        let month = digits(time.get(5..7)?)?;
        let day = digits(time.get(8..10)?)?;
        let secs = clock(time.get(11..19)?)?;
        return ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(Stamp {
            year: Some(year as u16),
            month: month as u8,
            day: day as u8,
            secs,
        });
    }
    None
}

/// `Mmm dd hh:mm:ss ` (the day space- or zero-padded).
fn is_bsd_time(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() > 16
        && b[..3].iter().all(u8::is_ascii_alphabetic)
        && b[3] == b' '
        && (b[4] == b' ' || b[4].is_ascii_digit())
        && b[5].is_ascii_digit()
        && b[6] == b' '
        && b[9] == b':'
        && b[12] == b':'
        && b[15] == b' '
}

fn exim_native(t: &str) -> Option<Line<'_>> {
    let b = t.as_bytes();
    let dated = b.len() > 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b' '
        && b[..4].iter().all(u8::is_ascii_digit);
    if !dated {
        return None;
    }
    let time = &t[..19];
    let mut rest = &t[20..];
    // An offset (log_timezone), then the pid (log_selector +pid), each optional.
    if let Some((tz, r)) = rest.split_once(' ')
        && (tz.starts_with('+') || tz.starts_with('-'))
        && tz.len() == 5
        && tz[1..].bytes().all(|c| c.is_ascii_digit())
    {
        rest = r;
    }
    let mut pid = None;
    if let Some(r) = rest.strip_prefix('[')
        && let Some((n, r)) = r.split_once("] ")
        && let Ok(n) = n.parse()
    {
        pid = Some(n);
        rest = r;
    }
    Some(Line {
        time,
        program: "exim",
        pid,
        message: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_logger_s_format_splits() {
        let l = split("Jun  3 10:00:01 mx sm-mta[4242]: 553A0x1F004242: hello").unwrap();
        assert_eq!(
            (l.time, l.program, l.pid, l.message),
            (
                "Jun  3 10:00:01",
                "sm-mta",
                Some(4242),
                "553A0x1F004242: hello"
            )
        );
        let l = split("Jun 03 10:00:01 mx postfix/smtpd[1234]: connect from x[1.2.3.4]\n").unwrap();
        assert_eq!(
            (l.program, l.pid, l.message),
            ("postfix/smtpd", Some(1234), "connect from x[1.2.3.4]")
        );
        let l =
            split("2026-12-03T10:00:01.123456+00:00 mx postfix/postscreen[9]: PREGREET").unwrap();
        assert_eq!(
            (l.time, l.program),
            ("2026-12-03T10:00:01.123456+00:00", "postfix/postscreen")
        );
        let l = split("2024-06-03 10:00:01 +0100 [4242] H=[192.0.2.7] x").unwrap();
        assert_eq!(
            (l.time, l.program, l.pid, l.message),
            ("2024-06-03 10:00:01", "exim", Some(4242), "H=[192.0.2.7] x")
        );
        let l = split("2024-06-03 10:00:01 H=[192.0.2.7] x").unwrap();
        assert_eq!((l.pid, l.message), (None, "H=[192.0.2.7] x"));
    }

    #[test]
    fn every_format_s_time_stamp_reads_and_sorts() {
        let s = |t| stamp(t).unwrap();
        assert_eq!(
            s("Jun  3 10:00:01"),
            Stamp {
                year: None,
                month: 6,
                day: 3,
                secs: 36001
            }
        );
        assert_eq!(s("Jun 03 10:00:01"), s("Jun  3 10:00:01"));
        assert_eq!(
            s("2026-12-03T10:00:01.123456+00:00"),
            Stamp {
                year: Some(2026),
                month: 12,
                day: 3,
                secs: 36001
            }
        );
        assert_eq!(
            s("2024-06-03 10:00:01").key(0),
            s("Jun  3 10:00:01").key(2024)
        );
        assert!(s("Dec 31 23:59:59").key(2025) < s("2026-01-01 00:00:00").key(0));
        for bad in [
            "",
            "Foo  3 10:00:01",
            "Jun 33 10:00:01",
            "2024-13-01 10:00:00",
            "Jun  3 25:00:01",
            "2024-06-03 1x:00:00",
        ] {
            assert_eq!(stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn anything_else_is_none() {
        for t in [
            "",
            "hello",
            "Jun  3 10:00:01",
            "Jun  3 10:00:01 mx",
            "Jun  3 10:00:01 mx no colon here",
            "2026-12-03 x",
            "\u{0}\u{1}\u{2}",
            "Jun  3 10:00:01 mx : empty program",
        ] {
            assert_eq!(split(t), None, "{t:?}");
        }
    }
}
