//! `mxlimit import-log`: the daily list of abusers from old mail logs, as operators
//! used to build it by hand from maillog (sm_dict): per network or address, the
//! unknown recipients, early talking, protocol errors and AUTH failures, worst first.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::IpNet;
use mxlimit_maillog::{Event, Kind, Reader, Stamp, Stats};
use serde_json::json;

use crate::cli::By;
use crate::table;

/// How sources aggregate, which events count, and how many are listed.
pub struct Options {
    pub by: By,
    pub limit: usize,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub range: Range,
}

/// `--since` and `--until`: events at or after the one, before the other.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    since: Option<u64>,
    until: Option<u64>,
    /// `--since` (or `--until`): stamps without a year (traditional syslog) are put
    /// in the year that brings them closest to it, so that `Dec 31` and `Jan  1`
    /// around a New Year fall on either side of it.
    reference: Option<Stamp>,
}

impl Range {
    pub fn new(since: Option<Stamp>, until: Option<Stamp>) -> Range {
        Range {
            since: since.map(|s| s.key(0)),
            until: until.map(|s| s.key(0)),
            reference: since.or(until),
        }
    }

    /// The year a stamp without one is put in: the one that brings it nearest the
    /// range's bound. None without a range.
    pub fn year_for(&self, stamp: &Stamp) -> Option<u16> {
        let reference = self.reference?;
        let ry = reference.year.unwrap_or(0);
        let day =
            |y: u16, s: &Stamp| i64::from(y) * 372 + i64::from(s.month) * 31 + i64::from(s.day);
        let at = day(ry, &reference);
        Some(
            [ry.saturating_sub(1), ry, ry.saturating_add(1)]
                .into_iter()
                .min_by_key(|y| (day(*y, stamp) - at).abs())
                .unwrap_or(ry),
        )
    }

    /// Whether an event logged at `time` counts. Without a range, all do; with one, a
    /// time that cannot be read does not.
    fn holds(&self, time: &str) -> bool {
        if self.reference.is_none() {
            return true;
        }
        let Some(stamp) = mxlimit_maillog::stamp(time) else {
            return false;
        };
        let t = stamp.key(self.year_for(&stamp).unwrap_or(0));
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> Option<Stamp> {
        mxlimit_maillog::stamp(t)
    }

    #[test]
    fn yearless_stamps_fall_in_the_year_nearest_the_range() {
        // Around New Year, with one bound alone.
        let r = Range::new(None, at("2026-01-02 00:00:00"));
        assert!(r.holds("Dec 31 23:00:00"));
        assert!(r.holds("Jan  1 10:00:00"));
        assert!(!r.holds("Jan  2 00:00:00"));
        let r = Range::new(at("2025-12-31 00:00:00"), None);
        assert!(r.holds("Jan  1 00:00:01"));
        assert!(!r.holds("Dec 30 23:59:59"));
        // Years written are taken as written.
        assert!(!r.holds("2025-01-01 00:00:01"));
        assert!(Range::default().holds("not a time"));
        assert!(!r.holds("not a time"));
    }
}

/// What one source did in the logs read.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub counts: [u64; Kind::ALL.len()],
    pub first: String,
    pub last: String,
}

impl Tally {
    fn add(&mut self, e: &Event) {
        self.counts[kind_index(e.kind)] += 1;
        if self.first.is_empty() {
            self.first = e.time.clone();
        }
        self.last = e.time.clone();
    }

    pub fn count(&self, k: Kind) -> u64 {
        self.counts[kind_index(k)]
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// Reads `files` (`-`: standard input) and counts their events by source; each event
/// of the range is also shown to `seen`.
pub fn read(
    files: &[PathBuf],
    o: &Options,
    mut seen: impl FnMut(&Event),
) -> Result<(Vec<(String, Tally)>, Stats)> {
    let mut reader = Reader::new();
    let mut by_source: HashMap<String, Tally> = HashMap::new();
    let mut events = Vec::new();
    // Every file is opened first: a typo in the last name must not cost the reading
    // of all the others.
    let inputs = files
        .iter()
        .map(|p| open(p).map(|r| (p, r)))
        .collect::<Result<Vec<_>>>()?;
    let mut buf = Vec::new();
    for (path, input) in inputs {
        let mut lines = BufReader::with_capacity(1 << 16, input);
        loop {
            buf.clear();
            let n = mxlimit_maillog::bounded::read_line(&mut lines, &mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            // Logs are bytes: a Latin-1 recipient must not end the import.
            let text = String::from_utf8_lossy(&buf);
            reader.line(&text, &mut events);
            for e in events.drain(..) {
                if o.range.holds(&e.time) {
                    seen(&e);
                    by_source.entry(source(e.ip, o)).or_default().add(&e);
                }
            }
        }
    }
    let mut rows: Vec<(String, Tally)> = by_source.into_iter().collect();
    rows.sort_by(|(a, x), (b, y)| {
        (y.count(Kind::UnknownRecipient), y.total(), a).cmp(&(
            x.count(Kind::UnknownRecipient),
            x.total(),
            b,
        ))
    });
    rows.truncate(o.limit);
    Ok((rows, reader.stats()))
}

/// `path`, or standard input for `-`; a compressed log is refused with what to do.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        anyhow::bail!(
            "{} is gzip-compressed: give it decompressed, e.g. `zcat {} | mxlimit import-log -`",
            path.display(),
            path.display()
        );
    }
    Ok(Box::new(std::io::Cursor::new(magic[..n].to_vec()).chain(f)))
}

/// The source an event counts for: its address, or its network.
fn source(ip: IpAddr, o: &Options) -> String {
    match o.by {
        By::Addr => ip.to_string(),
        By::Net => {
            let len = match ip {
                IpAddr::V4(_) => o.ipv4_prefix,
                IpAddr::V6(_) => o.ipv6_prefix,
            };
            IpNet::new(ip, len)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| ip.to_string())
        }
    }
}

/// `mxlimit import-log`, and with `--seed` the limiter's top lists seeded through
/// `admin`.
pub async fn run(
    files: &[PathBuf],
    o: &Options,
    json_out: bool,
    seeder: Option<crate::seed::Seeder>,
) -> Result<()> {
    let mut minutes = seeder.is_some().then(|| crate::seed::Minutes::new(o.range));
    let (rows, stats) = read(files, o, |e| {
        if let Some(m) = &mut minutes {
            m.add(e);
        }
    })?;
    // On stderr, so that --json stays one document for scripts.
    eprintln!(
        "mxlimit: {} lines read, {} of use, {} of no interest{}",
        stats.lines,
        stats.matched,
        stats.skipped,
        if stats.dropped > 0 {
            format!(
                ", {} sendmail recipients without a client address (their session never ended in the log)",
                stats.dropped
            )
        } else {
            String::new()
        }
    );
    if json_out {
        let list: Vec<_> = rows
            .iter()
            .map(|(s, t)| {
                let mut v = json!({"source": s, "first": t.first, "last": t.last});
                for k in Kind::ALL {
                    v[k.as_str()] = json!(t.count(k));
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print_table(&rows);
    }
    if let (Some(seeder), Some(minutes)) = (seeder, minutes) {
        let totals = seeder.send(minutes).await?;
        eprintln!("mxlimit: {totals}");
    }
    Ok(())
}

fn print_table(rows: &[(String, Tally)]) {
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, (s, t))| {
            let mut r = vec![(i + 1).to_string(), s.clone()];
            r.extend(Kind::ALL.iter().map(|k| t.count(*k).to_string()));
            r.extend([t.first.clone(), t.last.clone()]);
            r
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "#",
                "SOURCE",
                "BAD RCPTS",
                "PREGREET",
                "PROTOCOL",
                "AUTH",
                "FIRST",
                "LAST"
            ],
            &body
        )
    );
}
