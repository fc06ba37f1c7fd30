//! What operators ask of the store, off the decision path: top lists, operator blocks,
//! the automatic bans in force and the live leases, and a look at one source's
//! counters. Decisions never wait on these: their counts reach the ledger in batches.

use std::future::Future;

use ipnet::IpNet;

use super::{PerLevel, StoreError};
use crate::source::{Level, Source};

/// What a top list counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Rejected recipients.
    BadRecipients,
    /// Refused `Connect` calls.
    RefusedConnections,
}

impl Metric {
    /// The four top lists, in the order stores number them.
    pub const LISTS: [(Metric, Level); 4] = [
        (Metric::BadRecipients, Level::Address),
        (Metric::BadRecipients, Level::Network),
        (Metric::RefusedConnections, Level::Address),
        (Metric::RefusedConnections, Level::Network),
    ];

    /// The number of a top list in `LISTS`.
    pub fn list(self, level: Level) -> usize {
        Metric::LISTS
            .iter()
            .position(|l| *l == (self, level))
            .unwrap_or(0)
    }

    /// One letter per metric and level, in store key names.
    pub fn code(self, level: Level) -> &'static str {
        match (self, level) {
            (Metric::BadRecipients, Level::Address) => "ba",
            (Metric::BadRecipients, Level::Network) => "bn",
            (Metric::RefusedConnections, Level::Address) => "fa",
            (Metric::RefusedConnections, Level::Network) => "fn",
        }
    }
}

/// Counts of one flush interval, and what happened in it that the ledger must know.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// (metric, level, source text, count)
    pub counts: Vec<(Metric, Level, String, u64)>,
    /// Automatic bans imposed: (level, source text, length ms).
    pub bans: Vec<(Level, String, u64)>,
    /// Leases each node renewed on its last heartbeat.
    pub leases: Vec<(String, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.bans.is_empty() && self.leases.is_empty()
    }
}

/// Counts of past events for the top lists (`mxlimit import-log --seed`), each put in
/// the buckets of the minute it happened.
#[derive(Debug, Clone)]
pub struct Seed {
    pub metric: Metric,
    /// Where the log was written (a host name, or empty): what is remembered is per
    /// origin, so that the logs of two MX hosts add up.
    pub origin: String,
    pub entries: Vec<SeedEntry>,
}

/// What one address did in one minute: counted at the address and at its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedEntry {
    pub address: String,
    pub network: String,
    /// Unix ms; the minute counts.
    pub at_ms: u64,
    pub count: u64,
}

/// What a seed added. The ledger remembers how many it was given for each origin,
/// address and minute (as long as the hour's bucket lives) and adds only what goes
/// beyond: the same log seeded twice, or two logs of one host that overlap, count each
/// minute once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedOutcome {
    /// Added to the top lists.
    pub counted: u64,
    /// Seeded before: not added again.
    pub seen: u64,
    /// Of times no bucket keeps any more, or too far ahead: not added.
    pub out_of_range: u64,
}

/// How far ahead of the store's clock a seeded time may be (the log host's clock
/// running ahead): it counts now. Beyond, it is out of range.
pub const SEED_AHEAD_MS: u64 = HOUR_MS;

/// The buckets that keep an event of `at_ms` at store time `now_ms`, as (width,
/// number, ms since the epoch when the bucket expires): those `record` would still
/// have, so that a seeded bucket lives exactly as long as a recorded one.
pub fn seed_buckets(at_ms: u64, now_ms: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let ahead = at_ms > now_ms.saturating_add(SEED_AHEAD_MS);
    let at = at_ms.min(now_ms);
    [
        (MINUTE_MS, MINUTE_BUCKETS_KEEP_MS),
        (HOUR_MS, HOUR_BUCKETS_KEEP_MS),
    ]
    .into_iter()
    .filter_map(move |(width, keep)| {
        let n = at / width;
        let expires = (n + 1) * width + keep;
        // Only buckets a top list still reads: a count no query shows is not added.
        let read = Buckets::for_window(if width == HOUR_MS {
            MAX_WINDOW_MS
        } else {
            HOUR_MS
        });
        let readable = n + read.count >= now_ms / width;
        (!ahead && readable && expires > now_ms).then_some((width, n, expires))
    })
}

/// The expiry of what is remembered of one address and minute seeded at `at_ms`: as
/// long as the latest bucket it can have been put in (an entry ahead of the clock
/// goes in the current one), so that seeding it again later finds it.
pub fn seeded_until(at_ms: u64) -> u64 {
    (at_ms / HOUR_MS + 1).saturating_mul(HOUR_MS) + HOUR_BUCKETS_KEEP_MS
}

/// Time buckets of the top lists: minutes for windows up to an hour, hours beyond.
/// A window of `count` buckets reads `count` whole buckets and the current one, so
/// that it covers at least the time asked for (and less than one bucket more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub width_ms: u64,
    /// Whole buckets counted, besides the current one.
    pub count: u64,
}

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;
/// The longest window a top list covers; hour buckets are kept a little longer.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * HOUR_MS;
/// How long buckets are kept.
pub const MINUTE_BUCKETS_KEEP_MS: u64 = 2 * HOUR_MS;
pub const HOUR_BUCKETS_KEEP_MS: u64 = MAX_WINDOW_MS + 2 * HOUR_MS;
/// Node entries of the live-lease count are kept this long after their heartbeat.
pub const NODE_KEEP_MS: u64 = HOUR_MS;

impl Buckets {
    /// The buckets that cover `window_ms` (1 ms to `MAX_WINDOW_MS`).
    pub fn for_window(window_ms: u64) -> Buckets {
        let window_ms = window_ms.clamp(1, MAX_WINDOW_MS);
        let width_ms = if window_ms <= HOUR_MS {
            MINUTE_MS
        } else {
            HOUR_MS
        };
        Buckets {
            width_ms,
            count: window_ms.div_ceil(width_ms),
        }
    }

    /// The window counted at least (the current bucket's time so far comes on top).
    pub fn window_ms(&self) -> u64 {
        self.width_ms * self.count
    }

    /// The bucket numbers to read at store time `now_ms`, the current one included.
    pub fn range(&self, now_ms: u64) -> std::ops::RangeInclusive<u64> {
        let last = now_ms / self.width_ms;
        last.saturating_sub(self.count)..=last
    }

    /// Entries read from each bucket at most, for a list of `limit`: far more than
    /// the list, so that a source just below the top of every bucket still sums up
    /// right, yet bounded whatever the window and `--top-keep`.
    pub fn per_bucket(limit: u32, keep: u32) -> u32 {
        limit.saturating_mul(4).max(2000).min(keep.max(1))
    }
}

/// A top-list query.
#[derive(Debug, Clone, Copy)]
pub struct TopQuery {
    pub rank: Metric,
    pub level: Level,
    pub buckets: Buckets,
    pub limit: u32,
    /// Entries read from each bucket at most (see `Buckets::per_bucket`).
    pub per_bucket: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopRow {
    pub source: String,
    pub bad_recipients: u64,
    pub refused_connections: u64,
}

/// A source's counters, read without counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspection {
    /// Connections admitted within the ClientRate window (only logged where a limit
    /// applies).
    pub connections: PerLevel<u32>,
    pub sessions: PerLevel<u32>,
    pub bad_recipients: PerLevel<u32>,
    /// (ms left, offence) of the ban in force.
    pub ban: PerLevel<Option<(u64, u32)>>,
}

impl Inspection {
    /// What a `Connect` would be checked on ([`super::connect_order`]).
    pub fn connect_counts(&self) -> super::ConnectCounts {
        let ms = |b: Option<(u64, u32)>| b.map(|(ms, _)| ms);
        super::ConnectCounts {
            ban_ms: super::PerLevel {
                address: ms(self.ban.address),
                network: ms(self.ban.network),
            },
            admitted: self.connections,
            sessions: self.sessions,
        }
    }
}

/// An operator's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminBlock {
    pub target: IpNet,
    pub reason: String,
    pub expires_in_ms: u64,
}

/// An automatic ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoBan {
    pub level: Level,
    pub source: String,
    pub expires_in_ms: u64,
}

/// Everything in force now, cluster-wide.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    pub blocks: Vec<AdminBlock>,
    /// Listed only when asked for.
    pub bans: Vec<AutoBan>,
    pub ban_count: u64,
    /// Leases the nodes renewed on their last heartbeats.
    pub leases_live: u64,
    /// Operators' unblocks so far, on any limiter: a change means a ban may have been
    /// lifted, so refusals held in memory are dropped ([`crate::decision::holds`]).
    pub unblocks: u64,
}

/// The operator's view of the store. Each method is one store round trip (two for
/// `clear_ban` on a cluster: the ban and the index live on different shards).
pub trait Ledger: Send + Sync + 'static {
    /// Adds a batch: top-list counts (each bucket kept to its `keep` largest
    /// entries), bans to index, nodes' live leases.
    fn record(
        &self,
        batch: &Batch,
        keep: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds a seed's counts beyond those seeded before to the buckets of their times
    /// (each bucket then kept to its `keep` largest entries). Entries name distinct
    /// (address, minute) pairs.
    fn seed(
        &self,
        seed: &Seed,
        keep: u32,
    ) -> impl Future<Output = Result<SeedOutcome, StoreError>> + Send;

    fn top(&self, q: &TopQuery) -> impl Future<Output = Result<Vec<TopRow>, StoreError>> + Send;

    fn inspect(
        &self,
        source: &Source,
        rate_window_ms: u64,
        bad_window_ms: u64,
        shadow: bool,
    ) -> impl Future<Output = Result<Inspection, StoreError>> + Send;

    fn put_block(
        &self,
        target: IpNet,
        ttl_ms: u64,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether there was a block on exactly `target`.
    fn remove_block(&self, target: IpNet) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Lifts the automatic ban of one level of a source (and forgets its bad
    /// recipients, so it is not banned again at the next one). Whether there was one.
    fn clear_ban(
        &self,
        source: &Source,
        level: Level,
        shadow: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Blocks, bans and live leases in force; nodes silent for `node_ttl_ms` count no
    /// more. At most `list_bans` bans are listed, those with the most time left; all are counted.
    fn standing(
        &self,
        node_ttl_ms: u64,
        list_bans: u32,
    ) -> impl Future<Output = Result<Standing, StoreError>> + Send;
}

impl<T: Ledger> Ledger for std::sync::Arc<T> {
    fn record(
        &self,
        batch: &Batch,
        keep: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record(batch, keep)
    }
    fn seed(
        &self,
        seed: &Seed,
        keep: u32,
    ) -> impl Future<Output = Result<SeedOutcome, StoreError>> + Send {
        (**self).seed(seed, keep)
    }
    fn top(&self, q: &TopQuery) -> impl Future<Output = Result<Vec<TopRow>, StoreError>> + Send {
        (**self).top(q)
    }
    fn inspect(
        &self,
        source: &Source,
        rate_window_ms: u64,
        bad_window_ms: u64,
        shadow: bool,
    ) -> impl Future<Output = Result<Inspection, StoreError>> + Send {
        (**self).inspect(source, rate_window_ms, bad_window_ms, shadow)
    }
    fn put_block(
        &self,
        target: IpNet,
        ttl_ms: u64,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_block(target, ttl_ms, reason)
    }
    fn remove_block(&self, target: IpNet) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).remove_block(target)
    }
    fn clear_ban(
        &self,
        source: &Source,
        level: Level,
        shadow: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).clear_ban(source, level, shadow)
    }
    fn standing(
        &self,
        node_ttl_ms: u64,
        list_bans: u32,
    ) -> impl Future<Output = Result<Standing, StoreError>> + Send {
        (**self).standing(node_ttl_ms, list_bans)
    }
}

/// Bucket entries summed per source, both metrics side by side.
#[derive(Default)]
pub struct Merge(std::collections::HashMap<String, TopRow>);

impl Merge {
    pub fn add(&mut self, metric: Metric, source: &str, n: u64) {
        let row = match self.0.get_mut(source) {
            Some(r) => r,
            None => self.0.entry(source.to_string()).or_insert_with(|| TopRow {
                source: source.to_string(),
                bad_recipients: 0,
                refused_connections: 0,
            }),
        };
        match metric {
            Metric::BadRecipients => row.bad_recipients += n,
            Metric::RefusedConnections => row.refused_connections += n,
        }
    }

    /// The best `limit` by `by`.
    pub fn top(self, by: Metric, limit: usize) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = self.0.into_values().collect();
        rank(&mut rows, by, limit);
        rows
    }
}

/// Sorts a merged list best first (ties by source, so that answers are stable) and
/// keeps `limit`.
pub fn rank(rows: &mut Vec<TopRow>, by: Metric, limit: usize) {
    let key = |r: &TopRow| match by {
        Metric::BadRecipients => r.bad_recipients,
        Metric::RefusedConnections => r.refused_connections,
    };
    rows.retain(|r| key(r) > 0);
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.source.cmp(&b.source)));
    rows.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_round_up_to_whole_buckets() {
        assert_eq!(
            Buckets::for_window(5 * MINUTE_MS),
            Buckets {
                width_ms: MINUTE_MS,
                count: 5
            }
        );
        assert_eq!(Buckets::for_window(HOUR_MS).count, 60);
        // 5 whole minutes and the current one.
        assert_eq!(
            Buckets::for_window(5 * MINUTE_MS).range(10 * MINUTE_MS + 7),
            5..=10
        );
        assert_eq!(Buckets::per_bucket(500, 10_000), 2000);
        assert_eq!(Buckets::per_bucket(5000, 10_000), 10_000);
        let day = Buckets::for_window(24 * HOUR_MS + 1);
        assert_eq!((day.width_ms, day.count), (HOUR_MS, 25));
        assert_eq!(Buckets::for_window(u64::MAX).window_ms(), MAX_WINDOW_MS);
    }
}
