//! `mxlimit import-log --seed`: the unknown recipients read from old logs, per address
//! and minute, into the limiter's top lists (`Admin.SeedTopSources`), each at its
//! time, so that `mxlimit top` and `export` see the attack from before mxlimit ran.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use mxlimit_maillog::{Event, Kind, Stamp};
use mxlimit_proto::v1::{SeedEntry, SeedTopSourcesRequest};

use crate::cli::Cli;
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
    /// The Unix times of local hours read: mktime once per hour of log (a yearless
    /// stamp is read in two or three years, hence a map and not the last one).
    hours: HashMap<Hour, Option<i64>>,
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
            hours: HashMap::new(),
        }
    }

    pub fn add(&mut self, e: &Event) {
        if e.kind != Kind::UnknownRecipient {
            return;
        }
        let year = mxlimit_maillog::stamp(&e.time).and_then(|s| self.range.year_for(&s));
        let hours = &mut self.hours;
        let local = |y: i64, s: &Stamp| {
            if hours.len() > 100_000 {
                hours.clear();
            }
            let start = *hours
                .entry((y, s.month, s.day, s.secs / 3600))
                .or_insert_with(|| {
                    let whole = Stamp {
                        secs: s.secs / 3600 * 3600,
                        ..*s
                    };
                    clock::local_ms(y, &whole)
                });
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

/// The limiter's Admin API, known to take seeds from us.
pub struct Seeder {
    admin: Admin,
    origin: String,
}

impl Seeder {
    /// Connects, and sends an empty seed: a limiter out of reach, credentials it
    /// refuses or a limiter too old for seeds are said before any log is read.
    pub async fn ready(cli: &Cli, origin: Option<String>) -> Result<Seeder> {
        let mut admin = crate::client::connect(cli).await?;
        let origin = origin.unwrap_or_else(host_name);
        admin
            .seed_top_sources(SeedTopSourcesRequest {
                entries: Vec::new(),
                origin: origin.clone(),
            })
            .await
            .map_err(explain_status)?;
        Ok(Seeder { admin, origin })
    }

    /// Sends the counts, a thousand (address, minute) pairs per request.
    pub async fn send(mut self, minutes: Minutes) -> Result<Totals> {
        send(&mut self.admin, &self.origin, minutes).await
    }
}

/// This host's name, as far as the limiter takes origins (host-name characters).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
    let name = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-:".contains(*c))
        .take(64)
        .collect()
}

async fn send(admin: &mut Admin, origin: &str, minutes: Minutes) -> Result<Totals> {
    let mut entries: Vec<((i64, IpAddr), u64)> = minutes.counts.into_iter().collect();
    entries.sort_unstable();
    let mut t = Totals {
        untimed: minutes.untimed,
        ..Default::default()
    };
    let requests = entries.len().div_ceil(PER_REQUEST);
    for (i, chunk) in entries.chunks(PER_REQUEST).enumerate() {
        let req = SeedTopSourcesRequest {
            origin: origin.to_string(),
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
