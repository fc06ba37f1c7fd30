//! Operators' blocks as each limiter holds them: a table refreshed from the ledger
//! every second (and at once by a `Block` or `Unblock` on this instance), looked up by
//! every decision without a store round trip.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::store::ledger::AdminBlock;

#[derive(Debug, Clone)]
pub struct Block {
    pub target: IpNet,
    pub reason: String,
    pub until: Instant,
}

/// The blocks by network, and the prefix lengths present per family: a lookup costs
/// one hash probe per length in use.
#[derive(Default)]
struct Table {
    by_net: HashMap<IpNet, Block>,
    v4_lens: BTreeSet<u8>,
    v6_lens: BTreeSet<u8>,
}

impl Table {
    fn new(blocks: impl IntoIterator<Item = Block>) -> Table {
        let mut t = Table::default();
        for b in blocks {
            match b.target {
                IpNet::V4(n) => t.v4_lens.insert(n.prefix_len()),
                IpNet::V6(n) => t.v6_lens.insert(n.prefix_len()),
            };
            t.by_net.insert(b.target, b);
        }
        t
    }
}

/// `ms` from `now`, or as far as the clock goes (a garbage expiry from the store must
/// not panic the keeper).
fn later(now: Instant, ms: u64) -> Instant {
    let year = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(Duration::from_millis(ms).min(year * 10))
        .or_else(|| now.checked_add(year))
        .unwrap_or(now)
}

/// The table, and whether it holds anything: with no block in force (the usual case)
/// a decision pays one atomic load, not an `ArcSwap` guard.
#[derive(Default)]
pub struct BlockTable {
    table: ArcSwap<Table>,
    any: AtomicBool,
}

impl BlockTable {
    /// Whether any block is held (in force or just expired).
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The most specific block in force on `ip`.
    pub fn check(&self, ip: IpAddr) -> Option<Block> {
        if !self.any() {
            return None;
        }
        let t = self.table.load();
        let now = Instant::now();
        let lens = match ip {
            IpAddr::V4(_) => &t.v4_lens,
            IpAddr::V6(_) => &t.v6_lens,
        };
        lens.iter().rev().find_map(|len| {
            let net = IpNet::new(ip, *len).ok()?.trunc();
            t.by_net.get(&net).filter(|b| b.until > now).cloned()
        })
    }

    /// All blocks in force that cover `ip`, most specific first.
    pub fn covering(&self, ip: IpAddr) -> Vec<Block> {
        let now = Instant::now();
        let mut v: Vec<Block> = self
            .table
            .load()
            .by_net
            .values()
            .filter(|b| b.until > now && b.target.contains(&ip))
            .cloned()
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.target.prefix_len()));
        v
    }

    /// Replaces the table with the ledger's.
    pub fn replace(&self, blocks: &[AdminBlock]) {
        let now = Instant::now();
        self.set(Table::new(blocks.iter().map(|b| Block {
            target: b.target,
            reason: b.reason.clone(),
            until: later(now, b.expires_in_ms),
        })));
    }

    fn set(&self, t: Table) {
        let any = !t.by_net.is_empty();
        self.table.store(Arc::new(t));
        self.any.store(any, Ordering::Relaxed);
    }

    /// Adds or removes one block at once (the ledger already has the change).
    pub fn update(&self, target: IpNet, block: Option<(Duration, &str)>) {
        let now = Instant::now();
        let old = self.table.load();
        let mut blocks: Vec<Block> = old
            .by_net
            .values()
            .filter(|b| b.target != target)
            .cloned()
            .collect();
        if let Some((ttl, reason)) = block {
            blocks.push(Block {
                target,
                reason: reason.to_string(),
                until: now.checked_add(ttl).unwrap_or_else(|| later(now, u64::MAX)),
            });
        }
        self.set(Table::new(blocks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_block_in_force_matches() {
        let t = BlockTable::default();
        let b = |net: &str, ms: u64| AdminBlock {
            target: net.parse().unwrap(),
            reason: net.to_string(),
            expires_in_ms: ms,
        };
        t.replace(&[
            b("198.51.0.0/16", 60_000),
            b("198.51.100.0/24", 60_000),
            b("198.51.100.7/32", 0),
            b("2001:db8::/32", 60_000),
        ]);
        let hit = |ip: &str| t.check(ip.parse().unwrap()).map(|b| b.reason);
        assert_eq!(hit("198.51.100.7").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hit("198.51.7.1").as_deref(), Some("198.51.0.0/16"));
        assert_eq!(hit("2001:db8:1::1").as_deref(), Some("2001:db8::/32"));
        assert_eq!(hit("192.0.2.1"), None);
        t.update("198.51.100.0/24".parse().unwrap(), None);
        assert_eq!(hit("198.51.100.7").as_deref(), Some("198.51.0.0/16"));
        assert_eq!(t.covering("198.51.100.7".parse().unwrap()).len(), 1);
    }
}
