//! `mxlimit import-log --seed`: the unknown recipients read from old logs, per address
//! and minute, into the limiter's top lists (`Admin.SeedTopSources`), each at its
//! time, so that `mxlimit top` and `export` see the attack from before mxlimit ran.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use mxlimit_maillog::{Event, Kind, Stamp};
use mxlimit_proto::v1::{SeedEntry, SeedTopSourcesRequest};

use crate::client::{Admin, explain_status};
use crate::clock;
use crate::import::Range;

/// Entries per request: the limiter's most (`MAX_SEED_ENTRIES`).
const PER_REQUEST: usize = 1000;
const MINUTE_MS: i64 = 60_000;

/// A local hour: year, month, day, hour.
type Hour = (i64, u8, u8, u32);

/// Unknown recipients per (address, minute since the epoch).
pub struct Minutes {
    counts: HashMap<(i64, IpAddr), u64>,
    /// Events whose time could not be read.
    untimed: u64,
    range: Range,
    now_ms: i64,
    /// The Unix time of the last local hour read: mktime once per hour of log.
    hour: Option<(Hour, Option<i64>)>,
}

impl Minutes {
    pub fn new(range: Range) -> Minutes {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Minutes {
            counts: HashMap::new(),
            untimed: 0,
            range,
            now_ms,
            hour: None,
        }
    }

    pub fn add(&mut self, e: &Event) {
        if e.kind != Kind::UnknownRecipient {
            return;
        }
        let year = mxlimit_maillog::stamp(&e.time).and_then(|s| self.range.year_for(&s));
        let hour = &mut self.hour;
        let local = |y: i64, s: &Stamp| {
            let key = (y, s.month, s.day, s.secs / 3600);
            let start = match hour {
                Some((k, t)) if *k == key => *t,
                _ => {
                    let whole = Stamp {
                        secs: s.secs / 3600 * 3600,
                        ..*s
                    };
                    let t = clock::local_ms(y, &whole);
                    *hour = Some((key, t));
                    t
                }
            };
            start.map(|t| t + i64::from(s.secs % 3600) * 1000)
        };
        match clock::unix_ms(&e.time, year, self.now_ms, local) {
            Some(t) if t >= 0 => *self.counts.entry((t / MINUTE_MS, e.ip)).or_default() += 1,
            _ => self.untimed += 1,
        }
    }
}

/// What the limiter made of a seed, over all its requests.
#[derive(Debug, Default)]
pub struct Totals {
    pub counted: u64,
    pub seen: u64,
    pub out_of_range: u64,
    pub exempt: u64,
    pub untimed: u64,
}

/// Sends the counts, a thousand (address, minute) pairs per request.
pub async fn send(admin: &mut Admin, minutes: Minutes) -> Result<Totals> {
    let mut entries: Vec<((i64, IpAddr), u64)> = minutes.counts.into_iter().collect();
    entries.sort_unstable();
    let mut t = Totals {
        untimed: minutes.untimed,
        ..Default::default()
    };
    let requests = entries.len().div_ceil(PER_REQUEST);
    for (i, chunk) in entries.chunks(PER_REQUEST).enumerate() {
        let req = SeedTopSourcesRequest {
            entries: chunk
                .iter()
                .map(|((minute, ip), n)| SeedEntry {
                    client_ip: ip.to_string(),
                    at_unix_ms: (*minute * MINUTE_MS) as u64,
                    bad_recipients: *n,
                })
                .collect(),
        };
        let r = admin
            .seed_top_sources(req)
            .await
            .map_err(explain_status)
            .with_context(|| {
                format!(
                    "seeding stopped after {i} of {requests} requests; the same command again adds only what is missing"
                )
            })?
            .into_inner();
        t.counted += r.counted;
        t.seen += r.seen;
        t.out_of_range += r.out_of_range;
        t.exempt += r.exempt;
    }
    Ok(t)
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the limiter's top lists: {} unknown recipients added, {} seeded before, {} older than the lists keep (7 days) or ahead of the limiter's clock, {} from exempt sources",
            self.counted, self.seen, self.out_of_range, self.exempt
        )?;
        if self.untimed > 0 {
            write!(f, "; {} without a time that could be read", self.untimed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_read_once_give_the_times_mktime_gives() {
        let mut m = Minutes::new(Range::default());
        let event = |time: &str| Event {
            kind: Kind::UnknownRecipient,
            ip: "192.0.2.1".parse().unwrap(),
            recipient: None,
            time: time.into(),
            id: String::new(),
        };
        for t in [
            "2026-06-03 10:00:01",
            "2026-06-03 10:59:59",
            "2026-06-03 11:00:00",
        ] {
            m.add(&event(t));
        }
        let s = |t: &str| mxlimit_maillog::stamp(t).unwrap();
        let mut got: Vec<i64> = m.counts.keys().map(|(minute, _)| *minute).collect();
        got.sort();
        let want: Vec<i64> = [
            "2026-06-03 10:00:01",
            "2026-06-03 10:59:59",
            "2026-06-03 11:00:00",
        ]
        .iter()
        .map(|t| clock::local_ms(2026, &s(t)).unwrap() / MINUTE_MS)
        .collect();
        assert_eq!(got, want);
        assert_eq!(want[2] - want[0], 60);
    }
}
