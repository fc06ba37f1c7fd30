//! The embedded store: all counters in this process, for a single limiter (the default,
//! no Redis needed) and for tests. Same semantics as the Redis scripts, step by step.
//!
//! State is sharded by network behind short `std` mutexes that are never held across
//! an await. Memory is bounded: every piece of state carries the time it expires,
//! expired state is swept, and past `max_entries` the coldest unbanned state goes first.

mod clock;
mod state;

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;

pub use clock::Clock;
use state::NetState;

use super::{
    ConnectOp, ConnectOutcome, HeartbeatOp, HeartbeatOutcome, LeaseId, PerLevel, RecipientOp,
    RecipientOutcome, Refusal, SEP, Store, StoreError, registry_ttl_ms,
};
use crate::source::{Level, Source};

const SHARDS: usize = 64;

/// Bounds of the in-memory store.
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Addresses and networks tracked at most, all shards together.
    pub max_entries: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_entries: 1_000_000,
        }
    }
}

#[derive(Default)]
struct Shard {
    nets: HashMap<IpNet, NetState>,
    /// Networks plus addresses held.
    entries: usize,
    evicted: u64,
}

#[derive(Default)]
struct NodeState {
    epoch: Option<String>,
    /// Networks the node took leases in, with when it last did.
    nets: HashMap<IpNet, u64>,
}

/// The in-memory store.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    nodes: Mutex<HashMap<String, NodeState>>,
    clock: Clock,
    shard_cap: usize,
}

impl MemoryStore {
    pub fn new(config: MemoryConfig) -> MemoryStore {
        MemoryStore::with_clock(config, Clock::system())
    }

    pub fn with_clock(config: MemoryConfig, clock: Clock) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            nodes: Mutex::default(),
            clock,
            shard_cap: (config.max_entries / SHARDS).max(16),
        }
    }

    fn shard(&self, net: &IpNet) -> std::sync::MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        net.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update of plain counters;
        // the data is still usable, and refusing all decisions would be worse.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Addresses and networks held now (for tests and metrics).
    pub fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries)
            .sum()
    }

    /// State dropped to stay within `max_entries`.
    pub fn evicted(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).evicted)
            .sum()
    }

    /// Drops expired state everywhere; runs periodically (see `sweeper`).
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            sweep_shard(&mut s, now);
        }
        let ttl_cut = now.saturating_sub(registry_ttl_ms(0));
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes.values_mut() {
            n.nets.retain(|_, t| *t > ttl_cut);
        }
    }

    /// Sweeps expired state every `every` until the store is dropped.
    pub fn sweeper(self: &std::sync::Arc<Self>, every: std::time::Duration) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(s) => s.sweep(),
                    None => return,
                }
            }
        });
    }

    fn register(&self, node: &str, net: IpNet, now: u64) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        match nodes.get_mut(node) {
            Some(n) => {
                n.nets.insert(net, now);
            }
            None => {
                let mut n = NodeState::default();
                n.nets.insert(net, now);
                nodes.insert(node.to_string(), n);
            }
        }
    }
}

fn sweep_shard(s: &mut Shard, now: u64) {
    let mut dropped = 0;
    s.nets.retain(|_, n| {
        let before = 1 + n.addrs.len();
        n.addrs.retain(|_, a| a.expires > now);
        let keep = n.expires(now);
        dropped += if keep {
            before - 1 - n.addrs.len()
        } else {
            before
        };
        keep
    });
    s.entries -= dropped;
}

/// Makes room for `need` more entries: expired state first, then the coldest
/// unbanned networks (an eighth of the shard at a time, so the cost is amortised).
fn make_room(s: &mut Shard, cap: usize, need: usize, now: u64) {
    if s.entries + need <= cap {
        return;
    }
    sweep_shard(s, now);
    if s.entries + need <= cap {
        return;
    }
    let mut order: Vec<(bool, u64, IpNet)> = s
        .nets
        .iter()
        .map(|(k, n)| (n.banned(now), n.touched, *k))
        .collect();
    order.sort_unstable();
    let target = cap.saturating_sub(need).saturating_sub(cap / 8);
    for (_, _, k) in order {
        if s.entries <= target {
            break;
        }
        if let Some(n) = s.nets.remove(&k) {
            s.entries -= 1 + n.addrs.len();
            s.evicted += 1;
        }
    }
}

impl Store for MemoryStore {
    async fn connect(&self, op: &ConnectOp<'_>) -> Result<ConnectOutcome, StoreError> {
        let now = self.clock.now_ms();
        let src = op.source;
        let member = op.lease.member(&src.ip_text);
        let (outcome, admitted) = {
            let mut shard = self.shard(&src.net);
            let (outcome, admit) = match shard.nets.get_mut(&src.net) {
                None => (
                    ConnectOutcome {
                        refusal: None,
                        retry: false,
                    },
                    true,
                ),
                Some(net) => {
                    net.touched = now;
                    if net.level.has_live_lease(&member, now) {
                        return Ok(ConnectOutcome {
                            refusal: None,
                            retry: true,
                        });
                    }
                    let refusal = connect_refusal(net, op, now);
                    (
                        ConnectOutcome {
                            refusal,
                            retry: false,
                        },
                        refusal.is_none() || op.shadow,
                    )
                }
            };
            if admit {
                let cap = self.shard_cap;
                let shard = &mut *shard;
                let need = usize::from(!shard.nets.contains_key(&src.net))
                    + usize::from(
                        shard
                            .nets
                            .get(&src.net)
                            .is_none_or(|n| !n.addrs.contains_key(&src.ip)),
                    );
                make_room(shard, cap, need, now);
                shard.entries += need;
                let net = shard.nets.entry(src.net).or_default();
                net.touched = now;
                let addr = net.addrs.entry(src.ip).or_default();
                let m: std::sync::Arc<str> = member.into();
                addr.admit(&m, now, op.rate.address, op.window_ms, op.lease_ttl_ms);
                net.level
                    .admit(&m, now, op.rate.network, op.window_ms, op.lease_ttl_ms);
            }
            (outcome, admit)
        };
        if admitted {
            self.register(op.lease.node, src.net, now);
        }
        Ok(outcome)
    }

    async fn recipient(&self, op: &RecipientOp<'_>) -> Result<RecipientOutcome, StoreError> {
        let now = self.clock.now_ms();
        let src = op.source;
        let mut shard = self.shard(&src.net);
        let existing = shard.nets.get(&src.net).and_then(|n| {
            n.addrs
                .get(&src.ip)
                .and_then(|a| a.ban(now, Level::Address))
                .or_else(|| n.level.ban(now, Level::Network))
        });
        if let Some(ban) = existing {
            return Ok(RecipientOutcome {
                ban: Some(ban),
                bad: PerLevel::default(),
            });
        }
        if !op.rejected {
            let bad = shard
                .nets
                .get(&src.net)
                .map_or(PerLevel::default(), |n| PerLevel {
                    address: n
                        .addrs
                        .get(&src.ip)
                        .map_or(0, |a| a.peek_bad(now, op.window_ms)),
                    network: n.level.peek_bad(now, op.window_ms),
                });
            return Ok(RecipientOutcome { ban: None, bad });
        }
        let cap = self.shard_cap;
        let shard = &mut *shard;
        let need = usize::from(!shard.nets.contains_key(&src.net))
            + usize::from(
                shard
                    .nets
                    .get(&src.net)
                    .is_none_or(|n| !n.addrs.contains_key(&src.ip)),
            );
        make_room(shard, cap, need, now);
        shard.entries += need;
        let net = shard.nets.entry(src.net).or_default();
        net.touched = now;
        let addr = net.addrs.entry(src.ip).or_default();
        let bad = PerLevel {
            address: addr.count_bad(&op.event, now, op.window_ms, op.cap(Level::Address)),
            network: net
                .level
                .count_bad(&op.event, now, op.window_ms, op.cap(Level::Network)),
        };
        let ban = if op.block_after.address > 0 && bad.address > op.block_after.address {
            Some(addr.impose_ban(now, &op.ban, Level::Address))
        } else if op.block_after.network > 0 && bad.network > op.block_after.network {
            Some(net.level.impose_ban(now, &op.ban, Level::Network))
        } else {
            None
        };
        Ok(RecipientOutcome { ban, bad })
    }

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let member = lease.member(&source.ip_text);
        let mut shard = self.shard(&source.net);
        if let Some(net) = shard.nets.get_mut(&source.net) {
            net.level.leases.remove(member.as_str());
            if let Some(a) = net.addrs.get_mut(&source.ip) {
                a.leases.remove(member.as_str());
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, op: &HeartbeatOp<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut out = HeartbeatOutcome::default();
        // Which networks to visit, decided under the node lock, visited after it.
        let visit: Vec<(IpNet, Vec<&str>)> = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let node = nodes.entry(op.node.to_string()).or_default();
            let changed = node.epoch.as_deref() != Some(op.epoch);
            out.epoch_changed = changed && node.epoch.is_some();
            node.epoch = Some(op.epoch.to_string());
            let cut = now.saturating_sub(registry_ttl_ms(op.lease_ttl_ms));
            node.nets.retain(|_, t| *t > cut);
            let mut visit: HashMap<IpNet, Vec<&str>> = HashMap::new();
            for ns in &op.by_net {
                node.nets.insert(ns.source.net, now);
                visit
                    .entry(ns.source.net)
                    .or_default()
                    .extend(ns.sessions.iter().copied());
            }
            if changed || !op.bare.is_empty() {
                for net in node.nets.keys() {
                    visit
                        .entry(*net)
                        .or_default()
                        .extend(op.bare.iter().copied());
                }
            }
            visit.into_iter().collect()
        };
        for (net, sessions) in visit {
            let mut shard = self.shard(&net);
            if let Some(state) = shard.nets.get_mut(&net) {
                let (renewed, freed) =
                    state.sweep_node(op.node, op.epoch, &sessions, now, op.lease_ttl_ms);
                out.renewed += renewed;
                out.freed += freed;
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The first limit that refuses, in the order the Redis script checks them.
fn connect_refusal(net: &mut NetState, op: &ConnectOp<'_>, now: u64) -> Option<Refusal> {
    let ip: IpAddr = op.source.ip;
    let mut addr = net.addrs.get_mut(&ip);
    if let Some(b) = addr.as_ref().and_then(|a| a.ban(now, Level::Address)) {
        return Some(Refusal::Banned {
            level: Level::Address,
            remaining_ms: b.remaining_ms,
        });
    }
    if let Some(b) = net.level.ban(now, Level::Network) {
        return Some(Refusal::Banned {
            level: Level::Network,
            remaining_ms: b.remaining_ms,
        });
    }
    if op.rate.address > 0 {
        let c = addr.as_mut().map_or(0, |a| a.rate_count(now, op.window_ms));
        if c >= op.rate.address {
            return Some(Refusal::Rate {
                level: Level::Address,
                count: c,
            });
        }
    }
    if op.rate.network > 0 {
        let c = net.level.rate_count(now, op.window_ms);
        if c >= op.rate.network {
            return Some(Refusal::Rate {
                level: Level::Network,
                count: c,
            });
        }
    }
    if op.conn.address > 0 {
        let c = addr.as_mut().map_or(0, |a| a.live_leases(now));
        if c >= op.conn.address {
            return Some(Refusal::Conn {
                level: Level::Address,
                count: c,
            });
        }
    }
    if op.conn.network > 0 {
        let c = net.level.live_leases(now);
        if c >= op.conn.network {
            return Some(Refusal::Conn {
                level: Level::Network,
                count: c,
            });
        }
    }
    None
}

/// Splits a lease member into node, epoch, session, address.
pub(crate) fn split_member(m: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = m.split(SEP);
    Some((it.next()?, it.next()?, it.next()?, it.next()?))
}

#[cfg(test)]
mod tests;
