//! The operator's ledger on Redis. Its keys share the hash tag `{adm}` (one shard of
//! a cluster); they are written by one flush per limiter per second, never by a
//! decision.

use ipnet::IpNet;
use redis::Script;

use super::keys::{INDEX, LEASES, NetKeys, RATE, penalties};
use super::{Conn, RedisStore};
use mxlimit_core::source::{Level, Source};
use mxlimit_core::store::ledger::{
    AdminBlock, AutoBan, Batch, HOUR_BUCKETS_KEEP_MS, HOUR_MS, Inspection, Ledger,
    MINUTE_BUCKETS_KEEP_MS, MINUTE_MS, Merge, Metric, NODE_KEEP_MS, Seed, SeedOutcome, Standing,
    TopQuery, TopRow, seed_buckets, seeded_until,
};
use mxlimit_core::store::{PerLevel, SEP, StoreError};

pub(super) struct Scripts {
    record: Script,
    seed: Script,
    inspect: Script,
    block: Script,
    unban: Script,
    standing: Script,
}

impl Scripts {
    pub(super) fn all(&self) -> [&Script; 6] {
        [
            &self.record,
            &self.seed,
            &self.inspect,
            &self.block,
            &self.unban,
            &self.standing,
        ]
    }

    pub(super) fn new() -> Scripts {
        Scripts {
            record: Script::new(include_str!("scripts/record.lua")),
            seed: Script::new(include_str!("scripts/seed.lua")),
            inspect: Script::new(include_str!("scripts/inspect.lua")),
            block: Script::new(include_str!("scripts/block.lua")),
            unban: Script::new(include_str!("scripts/unban.lua")),
            standing: Script::new(include_str!("scripts/standing.lua")),
        }
    }
}

/// Entries of one `record` call at most: a flush of a large attack is cut into calls
/// that each hold Redis for a short time only.
const CHUNK: usize = 1000;

/// Entries of one `seed` script at most: ~1 ms of Redis each (measured in
/// docs/BENCHMARKS.md), so that decisions beside a seeding wait little.
const SEED_CHUNK: usize = 250;

/// Keys of one script call, numbered from 1 as in KEYS, each with its expiry.
#[derive(Default)]
struct Keys {
    keys: Vec<(String, u64)>,
    index: std::collections::HashMap<String, usize>,
}

impl Keys {
    fn add(&mut self, key: &str, expires: u64) -> usize {
        if let Some(k) = self.index.get(key) {
            return *k;
        }
        self.keys.push((key.to_string(), expires));
        self.index.insert(key.to_string(), self.keys.len());
        self.keys.len()
    }
}

/// A member of the ban index: `a␟1.2.3.4` or `n␟206.81.85.0/24`.
pub(crate) fn ban_member(level: Level, source: &str) -> String {
    let l = match level {
        Level::Address => 'a',
        Level::Network => 'n',
    };
    format!("{l}{SEP}{source}")
}

fn parse_ban_member(m: &str) -> Option<(Level, &str)> {
    let (l, s) = m.split_once(SEP)?;
    Some((
        match l {
            "a" => Level::Address,
            "n" => Level::Network,
            _ => return None,
        },
        s,
    ))
}

impl RedisStore {
    fn ledger_key(&self, name: &str) -> String {
        format!("{}:{{adm}}:{name}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        match self.conn.clone() {
            Conn::Single(mut c) => self.bounded(pipe.query_async(&mut c)).await,
            Conn::Cluster(mut c) => self.bounded(pipe.query_async(&mut c)).await,
        }
    }

    async fn store_time_ms(&self) -> Result<u64, StoreError> {
        let mut pipe = redis::pipe();
        // TIME on the ledger's own shard, so that bucket numbers agree with `record`.
        pipe.cmd("TIME").cmd("EXISTS").arg(self.ledger_key("bans"));
        let ((secs, micros), _): ((u64, u64), i64) = self.query(&pipe).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}

impl Ledger for RedisStore {
    async fn record(&self, batch: &Batch, keep: u32) -> Result<(), StoreError> {
        // Bucket numbers from the ledger shard's clock, named in KEYS as Redis Cluster
        // wants (a flush that crosses a minute lands in the one before: harmless).
        let now = self.store_time_ms().await?;
        let (minute, hour) = (now / MINUTE_MS, now / HOUR_MS);
        let mut keys = vec![self.ledger_key("bans"), self.ledger_key("leases")];
        for (metric, level) in Metric::LISTS {
            let code = metric.code(level);
            keys.push(self.ledger_key(&format!("t:{code}:m:{minute}")));
            keys.push(self.ledger_key(&format!("t:{code}:h:{hour}")));
        }
        let counts = batch.counts.chunks(CHUNK);
        let n_chunks = counts.len().max(1);
        let mut counts = counts;
        for i in 0..n_chunks {
            let mut inv = self.ledger_scripts.record.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(keep)
                .arg(MINUTE_BUCKETS_KEEP_MS)
                .arg(HOUR_BUCKETS_KEEP_MS)
                .arg(NODE_KEEP_MS);
            let chunk = counts.next().unwrap_or(&[]);
            inv.arg(chunk.len());
            for (metric, lvl, source, count) in chunk {
                inv.arg(metric.list(*lvl)).arg(source).arg(*count);
            }
            // Bans and leases go with the first call.
            let (bans, leases) = if i == 0 {
                (&batch.bans[..], &batch.leases[..])
            } else {
                (&[][..], &[][..])
            };
            inv.arg(bans.len());
            for (lvl, source, ms) in bans {
                inv.arg(ban_member(*lvl, source)).arg(*ms);
            }
            inv.arg(leases.len());
            for (node, n) in leases {
                inv.arg(node).arg(*n);
            }
            let _: i64 = self.invoke(&inv).await?;
        }
        Ok(())
    }

    async fn seed(&self, seed: &Seed, keep: u32) -> Result<SeedOutcome, StoreError> {
        // Which buckets still keep a time is the ledger shard's clock's call, as in
        // `record`. Each entry is compared with what was seeded before on its own, so
        // the entries can go in several short scripts, each holding Redis briefly.
        let now = self.store_time_ms().await?;
        let mut out = SeedOutcome::default();
        let mut planned = Vec::with_capacity(seed.entries.len());
        for e in &seed.entries {
            // [address minute, address hour, network minute, network hour]
            let mut buckets: [Option<(String, u64)>; 4] = Default::default();
            let mut kept = false;
            for (width, n, expires) in seed_buckets(e.at_ms, now) {
                let (g, slot) = if width == HOUR_MS { ("h", 1) } else { ("m", 0) };
                for (j, level) in [Level::Address, Level::Network].into_iter().enumerate() {
                    let code = seed.metric.code(level);
                    let key = self.ledger_key(&format!("t:{code}:{g}:{n}"));
                    buckets[2 * j + slot] = Some((key, expires));
                }
                kept |= width == HOUR_MS;
            }
            if !kept {
                out.out_of_range += e.count;
                continue;
            }
            // What was seeded is kept per hour of the entry's own time, not the bucket's
            // (an entry ahead of the clock goes in the current bucket).
            let code = seed.metric.code(Level::Address);
            let hour = e.at_ms / HOUR_MS;
            let hash = (
                self.ledger_key(&format!("s:{code}:{hour}")),
                seeded_until(e.at_ms),
            );
            planned.push((e, hash, buckets));
        }
        for chunk in planned.chunks(SEED_CHUNK) {
            let (mut hashes, mut zsets) = (Keys::default(), Keys::default());
            let numbered: Vec<_> = chunk
                .iter()
                .map(|(e, (hash, expires), buckets)| {
                    let h = hashes.add(hash, *expires);
                    let b = buckets
                        .each_ref()
                        .map(|b| b.as_ref().map_or(0, |(k, x)| zsets.add(k, *x)));
                    (e, h, b)
                })
                .collect();
            let h = hashes.keys.len();
            let mut inv = self.ledger_scripts.seed.prepare_invoke();
            for (k, _) in hashes.keys.iter().chain(&zsets.keys) {
                inv.key(k);
            }
            inv.arg(keep.max(1)).arg(h);
            for (_, expires) in hashes.keys.iter().chain(&zsets.keys) {
                inv.arg(*expires);
            }
            inv.arg(numbered.len());
            for (e, hash, b) in &numbered {
                inv.arg(*hash)
                    .arg(format!(
                        "{}{SEP}{}{SEP}{}",
                        e.address,
                        seed.origin,
                        e.at_ms / MINUTE_MS
                    ))
                    .arg(e.count)
                    .arg(&e.address)
                    .arg(&e.network);
                for k in b {
                    inv.arg(if *k == 0 { 0 } else { k + h });
                }
            }
            let (added, seen): (u64, u64) = self.invoke(&inv).await?;
            out.counted += added;
            out.seen += seen;
        }
        Ok(out)
    }

    async fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        let now = self.store_time_ms().await?;
        let g = if q.buckets.width_ms == HOUR_MS {
            "h"
        } else {
            "m"
        };
        let range = q.buckets.range(now);
        let metrics = [Metric::BadRecipients, Metric::RefusedConnections];
        // The largest entries of each bucket, merged here: many short reads keep Redis
        // free for decisions, where one big ZUNION would hold it.
        let mut pipe = redis::pipe();
        for m in metrics {
            for b in range.clone() {
                pipe.cmd("ZRANGE")
                    .arg(self.ledger_key(&format!("t:{}:{g}:{b}", m.code(q.level))))
                    .arg(0)
                    .arg(q.per_bucket.max(1) - 1)
                    .arg("REV")
                    .arg("WITHSCORES");
            }
        }
        let buckets: Vec<Vec<(String, f64)>> = self.query(&pipe).await?;
        let per_metric = range.count();
        let mut merged = Merge::default();
        for (i, bucket) in buckets.into_iter().enumerate() {
            let metric = metrics[usize::from(i >= per_metric)];
            for (source, score) in bucket {
                merged.add(metric, &source, score.max(0.0) as u64);
            }
        }
        Ok(merged.top(q.rank, q.limit as usize))
    }

    async fn inspect(
        &self,
        source: &Source,
        rate_window_ms: u64,
        bad_window_ms: u64,
        shadow: bool,
    ) -> Result<Inspection, StoreError> {
        let k = NetKeys::new(&self.prefix, source);
        let p = penalties(shadow);
        let mut inv = self.ledger_scripts.inspect.key(k.addr(p.ban));
        inv.key(k.net(p.ban))
            .key(k.addr(RATE))
            .key(k.net(RATE))
            .key(k.net(LEASES))
            .key(k.net(INDEX))
            .key(k.addr(p.bad))
            .key(k.net(p.bad))
            .arg(rate_window_ms)
            .arg(bad_window_ms)
            .arg(&source.ip_text);
        let r: Vec<i64> = self.invoke(&inv).await?;
        let [ra, rn, sa, sn, ba, bn, ma, oa, mn, on] = r[..] else {
            return Err(StoreError::Reply(format!("inspect returned {r:?}")));
        };
        let n = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let ban = |ms: i64, off: i64| (ms > 0).then_some((ms as u64, n(off).max(1)));
        Ok(Inspection {
            connections: PerLevel {
                address: n(ra),
                network: n(rn),
            },
            sessions: PerLevel {
                address: n(sa),
                network: n(sn),
            },
            bad_recipients: PerLevel {
                address: n(ba),
                network: n(bn),
            },
            ban: PerLevel {
                address: ban(ma, oa),
                network: ban(mn, on),
            },
        })
    }

    async fn put_block(&self, target: IpNet, ttl_ms: u64, reason: &str) -> Result<(), StoreError> {
        let mut inv = self.ledger_scripts.block.key(self.ledger_key("blocks"));
        inv.arg(target.to_string()).arg(ttl_ms).arg(reason);
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    async fn remove_block(&self, target: IpNet) -> Result<bool, StoreError> {
        // Counted, so that every limiter drops the refusals it holds (a ban may go too).
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(self.ledger_key("blocks"))
            .arg(target.to_string());
        pipe.cmd("INCR").arg(self.ledger_key("unblocks"));
        let (n, _): (i64, i64) = self.query(&pipe).await?;
        Ok(n > 0)
    }

    async fn clear_ban(
        &self,
        source: &Source,
        lvl: Level,
        shadow: bool,
    ) -> Result<bool, StoreError> {
        let k = NetKeys::new(&self.prefix, source);
        let p = penalties(shadow);
        let key = |kind: &str| match lvl {
            Level::Address => k.addr(kind),
            Level::Network => k.net(kind),
        };
        let mut inv = self.ledger_scripts.unban.key(key(p.ban));
        for log in p.logs() {
            inv.key(key(log));
        }
        let had: i64 = self.invoke(&inv).await?;
        // The ban's entry in the index lives on the ledger's shard: a second call. The
        // unblock is counted again now that the ban is gone: a limiter that dropped its
        // holds on the first count (in `remove_block`) may have held the ban again since.
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.ledger_key("bans"))
            .arg(ban_member(lvl, &source.at(lvl)));
        pipe.cmd("INCR").arg(self.ledger_key("unblocks"));
        let _: (i64, i64) = self.query(&pipe).await?;
        Ok(had == 1)
    }

    async fn standing(&self, node_ttl_ms: u64, list_bans: u32) -> Result<Standing, StoreError> {
        let mut inv = self.ledger_scripts.standing.key(self.ledger_key("blocks"));
        inv.key(self.ledger_key("bans"))
            .key(self.ledger_key("leases"))
            .key(self.ledger_key("unblocks"))
            .arg(node_ttl_ms.max(MINUTE_MS))
            .arg(list_bans);
        type Reply = (Vec<redis::Value>, Vec<redis::Value>, i64, i64, i64);
        let (blocks, bans, live, ban_count, unblocks): Reply = self.invoke(&inv).await?;
        let text = |v: &redis::Value| {
            <String as redis::FromRedisValue>::from_redis_value_ref(v).unwrap_or_default()
        };
        let int = |v: &redis::Value| {
            <i64 as redis::FromRedisValue>::from_redis_value_ref(v)
                .unwrap_or(0)
                .max(0) as u64
        };
        let mut out = Standing {
            leases_live: live.max(0) as u64,
            ban_count: ban_count.max(0) as u64,
            unblocks: unblocks.max(0) as u64,
            ..Default::default()
        };
        for b in blocks.chunks_exact(3) {
            // A field that is not a network was not written by mxlimit: skipped.
            if let Ok(target) = text(&b[0]).parse::<IpNet>() {
                out.blocks.push(AdminBlock {
                    target,
                    expires_in_ms: int(&b[1]),
                    reason: text(&b[2]),
                });
            }
        }
        for b in bans.chunks_exact(2) {
            let member = text(&b[0]);
            if let Some((lvl, source)) = parse_ban_member(&member) {
                out.bans.push(AutoBan {
                    level: lvl,
                    source: source.to_string(),
                    expires_in_ms: int(&b[1]),
                });
            }
        }
        Ok(out)
    }
}
