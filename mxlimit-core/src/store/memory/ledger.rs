//! The operator's ledger in memory: the Redis ledger's buckets, blocks and indexes,
//! in one map each behind one mutex (operators' calls and one flush per second).

use std::collections::HashMap;

use ipnet::IpNet;

use super::{MemoryStore, lock};
use crate::source::{Level, Source};
use crate::store::ledger::{
    AdminBlock, AutoBan, Batch, HOUR_BUCKETS_KEEP_MS, HOUR_MS, Inspection, Ledger,
    MINUTE_BUCKETS_KEEP_MS, MINUTE_MS, Merge, Metric, Seed, SeedOutcome, Standing, TopQuery,
    TopRow, seed_buckets, seeded_until,
};
use crate::store::{PerLevel, SEP, StoreError};

/// (metric and level code, bucket width, bucket number)
type BucketId = (&'static str, u64, u64);

#[derive(Default)]
pub(super) struct LedgerState {
    buckets: HashMap<BucketId, HashMap<String, u64>>,
    blocks: HashMap<IpNet, (u64, String)>,
    bans: HashMap<(Level, String), u64>,
    /// node -> (leases, when)
    leases: HashMap<String, (u64, u64)>,
    /// (address, minute) seeded -> (count, until when it is remembered).
    seeded: HashMap<(String, u64), (u64, u64)>,
    unblocks: u64,
}

fn keep_ms(width: u64) -> u64 {
    if width == HOUR_MS {
        HOUR_BUCKETS_KEEP_MS
    } else {
        MINUTE_BUCKETS_KEEP_MS
    }
}

/// Keeps the `keep` largest entries, as the Redis script does.
fn trim(bucket: &mut HashMap<String, u64>, keep: usize) {
    if bucket.len() <= keep {
        return;
    }
    let mut counts: Vec<u64> = bucket.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let floor = counts[keep - 1];
    // Entries above the floor all stay; of those at the floor, only as many as fit.
    let mut room = keep - counts.iter().take_while(|c| **c > floor).count();
    bucket.retain(|_, c| {
        if *c > floor {
            true
        } else if *c == floor && room > 0 {
            room -= 1;
            true
        } else {
            false
        }
    });
}

impl Ledger for MemoryStore {
    async fn record(&self, batch: &Batch, keep: u32) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut l = lock(&self.ledger);
        l.buckets
            .retain(|(_, width, n), _| (n + 1) * width + keep_ms(*width) > now);
        for (metric, level, source, count) in &batch.counts {
            for width in [MINUTE_MS, HOUR_MS] {
                let b = l
                    .buckets
                    .entry((metric.code(*level), width, now / width))
                    .or_default();
                match b.get_mut(source.as_str()) {
                    Some(c) => *c += count,
                    None => {
                        b.insert(source.clone(), *count);
                    }
                }
            }
        }
        let keep = keep.max(1) as usize;
        for b in l.buckets.values_mut() {
            trim(b, keep);
        }
        for (level, source, ms) in &batch.bans {
            let until = now + ms;
            let e = l.bans.entry((*level, source.clone())).or_default();
            *e = (*e).max(until);
        }
        l.bans.retain(|_, until| *until > now);
        for (node, n) in &batch.leases {
            l.leases.insert(node.clone(), (*n, now));
        }
        Ok(())
    }

    async fn seed(&self, seed: &Seed, keep: u32) -> Result<SeedOutcome, StoreError> {
        let now = self.clock.now_ms();
        // This store's clock counts from its start; seeded times are Unix times.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let on_clock = |at: u64| {
            if at >= wall {
                now.saturating_add(at - wall)
            } else {
                now.saturating_sub(wall - at)
            }
        };
        let mut l = lock(&self.ledger);
        l.seeded.retain(|_, (_, until)| *until > now);
        let mut out = SeedOutcome::default();
        let mut touched = std::collections::HashSet::new();
        for e in &seed.entries {
            let buckets: Vec<_> = seed_buckets(on_clock(e.at_ms), now).collect();
            if !buckets.iter().any(|b| b.0 == HOUR_MS) {
                out.out_of_range += e.count;
                continue;
            }
            let minute = e.at_ms / MINUTE_MS;
            let until = on_clock(seeded_until(e.at_ms));
            let seen = l
                .seeded
                .entry((format!("{}{SEP}{}", e.address, seed.origin), minute))
                .or_insert((0, until));
            let before = seen.0;
            seen.0 = before.max(e.count);
            let add = e.count.saturating_sub(before);
            out.seen += e.count - add;
            out.counted += add;
            for (level, source) in [(Level::Address, &e.address), (Level::Network, &e.network)] {
                for &(width, n, _) in &buckets {
                    let id = (seed.metric.code(level), width, n);
                    *l.buckets
                        .entry(id)
                        .or_default()
                        .entry(source.clone())
                        .or_default() += add;
                    touched.insert(id);
                }
            }
        }
        let keep = keep.max(1) as usize;
        for id in touched {
            if let Some(b) = l.buckets.get_mut(&id) {
                trim(b, keep);
            }
        }
        Ok(out)
    }

    async fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        let now = self.clock.now_ms();
        let width = q.buckets.width_ms;
        let l = lock(&self.ledger);
        let mut merged = Merge::default();
        for metric in [Metric::BadRecipients, Metric::RefusedConnections] {
            for n in q.buckets.range(now) {
                let Some(b) = l.buckets.get(&(metric.code(q.level), width, n)) else {
                    continue;
                };
                // The bucket's largest entries, as the Redis store reads them.
                let mut entries: Vec<(&String, &u64)> = b.iter().collect();
                entries.sort_unstable_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                for (source, count) in entries.into_iter().take(q.per_bucket as usize) {
                    merged.add(metric, source, *count);
                }
            }
        }
        drop(l);
        Ok(merged.top(q.rank, q.limit as usize))
    }

    async fn inspect(
        &self,
        source: &Source,
        rate_window_ms: u64,
        bad_window_ms: u64,
        shadow: bool,
    ) -> Result<Inspection, StoreError> {
        let now = self.clock.now_ms();
        let shard = self.shard(&source.net);
        let Some(net) = shard.nets.get(&source.net) else {
            return Ok(Inspection::default());
        };
        let addr = net.addrs.get(&source.ip);
        let ban = |p: &super::state::Penalty, level| {
            p.ban(now, level).map(|b| (b.remaining_ms, b.offence))
        };
        Ok(Inspection {
            connections: PerLevel {
                address: addr.map_or(0, |a| a.peek_rate(now, rate_window_ms)),
                network: net.level.peek_rate(now, rate_window_ms),
            },
            sessions: PerLevel {
                address: net.leases.live(now, Some(&source.ip)),
                network: net.leases.live(now, None),
            },
            bad_recipients: PerLevel {
                address: addr.map_or(0, |a| a.penalty(shadow).peek_bad(now, bad_window_ms)),
                network: net.level.penalty(shadow).peek_bad(now, bad_window_ms),
            },
            ban: PerLevel {
                address: addr.and_then(|a| ban(a.penalty(shadow), Level::Address)),
                network: ban(net.level.penalty(shadow), Level::Network),
            },
        })
    }

    async fn put_block(&self, target: IpNet, ttl_ms: u64, reason: &str) -> Result<(), StoreError> {
        let until = self.clock.now_ms() + ttl_ms;
        lock(&self.ledger)
            .blocks
            .insert(target, (until, reason.to_string()));
        Ok(())
    }

    async fn remove_block(&self, target: IpNet) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut l = lock(&self.ledger);
        l.unblocks += 1;
        Ok(l.blocks
            .remove(&target)
            .is_some_and(|(until, _)| until > now))
    }

    async fn clear_ban(
        &self,
        source: &Source,
        level: Level,
        shadow: bool,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let had = {
            let mut shard = self.shard(&source.net);
            match shard.nets.get_mut(&source.net) {
                None => false,
                Some(net) => match level {
                    Level::Network => net.level.penalty_mut(shadow).lift(now),
                    Level::Address => net
                        .addrs
                        .get_mut(&source.ip)
                        .is_some_and(|a| a.penalty_mut(shadow).lift(now)),
                },
            }
        };
        let mut l = lock(&self.ledger);
        l.bans.remove(&(level, source.at(level)));
        // Counted again once the ban is gone (see the Redis ledger's `clear_ban`).
        l.unblocks += 1;
        Ok(had)
    }

    async fn standing(&self, node_ttl_ms: u64, list_bans: u32) -> Result<Standing, StoreError> {
        let now = self.clock.now_ms();
        let mut l = lock(&self.ledger);
        l.blocks.retain(|_, (until, _)| *until > now);
        l.bans.retain(|_, until| *until > now);
        let cut = now.saturating_sub(node_ttl_ms.max(MINUTE_MS));
        l.leases.retain(|_, (_, at)| *at > cut);
        Ok(Standing {
            blocks: l
                .blocks
                .iter()
                .map(|(target, (until, reason))| AdminBlock {
                    target: *target,
                    reason: reason.clone(),
                    expires_in_ms: until - now,
                })
                .collect(),
            ban_count: l.bans.len() as u64,
            bans: longest_bans(&l.bans, list_bans as usize, now),
            leases_live: l.leases.values().map(|(n, _)| n).sum(),
            unblocks: l.unblocks,
        })
    }
}

/// The `n` bans with the most time left, as the Redis index's reverse range gives them.
fn longest_bans(bans: &HashMap<(Level, String), u64>, n: usize, now: u64) -> Vec<AutoBan> {
    let mut all: Vec<_> = bans.iter().collect();
    let n = n.min(all.len());
    if n == 0 {
        return Vec::new();
    }
    // Partial selection: an attack's many bans are not sorted to list a thousand.
    all.select_nth_unstable_by_key(n - 1, |(_, until)| std::cmp::Reverse(**until));
    all.truncate(n);
    all.into_iter()
        .map(|((level, source), until)| AutoBan {
            level: *level,
            source: source.clone(),
            expires_in_ms: until - now,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_the_largest_entries() {
        let mut b: HashMap<String, u64> = [("a", 5), ("b", 1), ("c", 3), ("d", 3), ("e", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        trim(&mut b, 3);
        assert_eq!(b.len(), 3);
        assert_eq!(b["a"], 5);
        assert_eq!(b["c"] + b["d"], 6);
    }
}
