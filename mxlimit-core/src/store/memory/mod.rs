//! The embedded store: all counters in this process, for a single limiter (the default,
//! no Redis needed) and for tests. Same semantics as the Redis scripts, step by step.
//!
//! State is sharded by network behind short `std` mutexes that are never held across
//! an await. Memory is bounded: every piece of state carries the time it expires,
//! expired state is swept, and past `max_entries` the coldest unbanned state goes first.

mod clock;
mod ledger;
mod state;

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

pub use clock::Clock;
use state::{LevelState, Member, NetState};

use super::connect_order::{self, ConnectCounts};
use super::{
    ConnectOp, ConnectOutcome, HeartbeatOp, HeartbeatOutcome, LeaseId, OffenceOp, OffenceOutcome,
    PerLevel, RecipientOp, RecipientOutcome, Refusal, ReleaseOp, SEP, Store, StoreError,
    index_ttl_ms, registry_ttl_ms,
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
    /// Networks plus addresses held, kept equal to the maps' sizes.
    entries: usize,
    evicted: u64,
}

struct NodeState {
    epoch: Option<String>,
    /// Networks the node took leases in, with when it last did.
    nets: HashMap<IpNet, u64>,
    /// Sessions admitted without an epoch, so that a heartbeat naming them without
    /// their address finds their lease: session id -> (address text, network, until).
    sessions: HashMap<Box<str>, Indexed>,
    /// When the full index was last cut to its live entries.
    index_pruned: u64,
    /// The start of the current sweep window and the epoch sweeps in it.
    sweeps: (u64, u32),
    registry_ttl: u64,
    seen: u64,
}

/// A lease a heartbeat renews: address, session id, and whether it may be under the
/// heartbeat's epoch (else only under none).
type ToRenew<'a> = (Arc<str>, &'a str, bool);

/// At most this many epoch sweeps per node in a minute, as on Redis.
const MAX_SWEEPS: u32 = 3;
const SWEEP_WINDOW_MS: u64 = 60_000;

/// Sessions admitted without an epoch that one node's index keeps at most.
const MAX_INDEXED_SESSIONS: usize = 100_000;

struct Indexed {
    ip_text: Arc<str>,
    net: IpNet,
    until: u64,
}

/// The in-memory store.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    nodes: Mutex<HashMap<String, NodeState>>,
    clock: Clock,
    shard_cap: usize,
    ledger: Mutex<ledger::LedgerState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-update of plain counters; the
    // data is still usable, and refusing all decisions would be worse.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            ledger: Mutex::default(),
        }
    }

    fn shard(&self, net: &IpNet) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        net.hash(&mut h);
        lock(&self.shards[(h.finish() as usize) % SHARDS])
    }

    /// Addresses and networks held now, as counted (for tests and metrics).
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries).sum()
    }

    /// Addresses and networks held now, counted in the maps themselves.
    pub fn entries_held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .nets
                    .values()
                    .map(|n| 1 + n.addrs.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Networks dropped to stay within `max_entries`.
    pub fn evicted(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).evicted).sum()
    }

    /// Nodes remembered.
    pub fn nodes(&self) -> usize {
        lock(&self.nodes).len()
    }

    /// Drops expired state everywhere; runs periodically (see `sweeper`).
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for s in self.shards.iter() {
            sweep_shard(&mut lock(s), now);
        }
        lock(&self.nodes).retain(|_, n| {
            let cut = now.saturating_sub(n.registry_ttl);
            n.nets.retain(|_, t| *t > cut);
            n.sessions.retain(|_, i| i.until > now);
            !n.nets.is_empty() || !n.sessions.is_empty() || n.seen > cut
        });
    }

    /// Sweeps expired state every `every` until the store is dropped.
    pub fn sweeper(self: &Arc<Self>, every: std::time::Duration) {
        let weak = Arc::downgrade(self);
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

    fn node<'a>(
        nodes: &'a mut HashMap<String, NodeState>,
        node: &str,
        now: u64,
        lease_ttl: u64,
    ) -> &'a mut NodeState {
        if !nodes.contains_key(node) {
            nodes.insert(
                node.to_string(),
                NodeState {
                    epoch: None,
                    nets: HashMap::new(),
                    sessions: HashMap::new(),
                    index_pruned: 0,
                    sweeps: (0, 0),
                    registry_ttl: 0,
                    seen: now,
                },
            );
        }
        let n = nodes.get_mut(node).expect("inserted above");
        n.registry_ttl = registry_ttl_ms(lease_ttl);
        n.seen = now;
        n
    }
}

fn sweep_shard(s: &mut Shard, now: u64) {
    let mut held = 0;
    s.nets.retain(|_, n| {
        n.leases.prune(now);
        n.recent.prune(now);
        n.addrs.retain(|_, a| a.expires > now);
        let keep = n.alive(now);
        if keep {
            held += 1 + n.addrs.len();
        }
        keep
    });
    s.entries = held;
}

/// Makes room for up to two more entries (a network and an address). Expired state
/// goes first, then the coldest unbanned networks other than `keep` (an eighth of the
/// shard at a time, so the cost is amortised), then cold addresses of `keep` itself
/// (a flood inside one network).
fn make_room(s: &mut Shard, cap: usize, keep: &IpNet, now: u64) {
    if s.entries + 2 <= cap {
        return;
    }
    sweep_shard(s, now);
    if s.entries + 2 <= cap {
        return;
    }
    let target = cap.saturating_sub(2 + cap / 8);
    let mut order: Vec<(bool, u64, IpNet)> = s
        .nets
        .iter()
        .filter(|(k, _)| *k != keep)
        .map(|(k, n)| (n.banned(now), n.touched, *k))
        .collect();
    order.sort_unstable();
    for (_, _, k) in order {
        if s.entries <= target {
            break;
        }
        if let Some(n) = s.nets.remove(&k) {
            s.entries -= 1 + n.addrs.len();
            s.evicted += 1;
        }
    }
    if s.entries + 2 > cap
        && let Some(n) = s.nets.get_mut(keep)
    {
        let mut addrs: Vec<(bool, u64, IpAddr)> = n
            .addrs
            .iter()
            .filter(|(ip, _)| n.leases.count_addr(ip) == 0)
            .map(|(ip, a)| (a.banned(now), a.expires, *ip))
            .collect();
        addrs.sort_unstable();
        for (_, _, ip) in addrs {
            if s.entries <= target {
                break;
            }
            n.addrs.remove(&ip);
            s.entries -= 1;
        }
    }
}

/// The network and address state for a write, created (and counted) as needed.
fn entry<'a>(s: &'a mut Shard, cap: usize, src: &Source, now: u64) -> (&'a mut NetState, bool) {
    make_room(s, cap, &src.net, now);
    let entries = &mut s.entries;
    let net = s.nets.entry(src.net).or_insert_with(|| {
        *entries += 1;
        NetState::default()
    });
    net.touched = now;
    let fresh_addr = !net.addrs.contains_key(&src.ip);
    if fresh_addr {
        net.addrs.insert(src.ip, LevelState::default());
        *entries += 1;
    }
    (net, fresh_addr)
}

impl Store for MemoryStore {
    async fn connect(&self, op: &ConnectOp<'_>) -> Result<ConnectOutcome, StoreError> {
        let now = self.clock.now_ms();
        let src = op.source;
        let member = op.lease.member(&src.ip_text);
        let outcome = {
            let mut shard = self.shard(&src.net);
            // Read only for a session that goes on: a refusal needs no tarpit.
            let bad = |net: &NetState| PerLevel {
                address: net
                    .addrs
                    .get(&src.ip)
                    .map_or(0, |a| a.penalty(op.shadow).peek_bad(now, op.bad_window_ms)),
                network: net.level.penalty(op.shadow).peek_bad(now, op.bad_window_ms),
            };
            let (refusal, bad) = match shard.nets.get_mut(&src.net) {
                None => (None, PerLevel::default()),
                Some(net) => {
                    net.touched = now;
                    if net.leases.is_live(&member, now) {
                        return Ok(ConnectOutcome {
                            refusal: None,
                            retry: true,
                            bad: bad(net),
                            hold_ms: 0,
                        });
                    }
                    net.leases.prune(now);
                    let refusal = connect_refusal(net, op, now);
                    if refusal.is_some() && !op.shadow {
                        return Ok(ConnectOutcome {
                            refusal,
                            retry: false,
                            bad: PerLevel::default(),
                            hold_ms: hold_ms(net, &src.ip, refusal, now, op.window_ms),
                        });
                    }
                    (refusal, bad(net))
                }
            };
            let (net, _) = entry(&mut shard, self.shard_cap, src, now);
            let m: Arc<str> = member.into();
            let again = (op.rate.address > 0 || op.rate.network > 0)
                && net.recent.note(&m, now, op.window_ms);
            let addr = net.addrs.get_mut(&src.ip).expect("entry() made it");
            addr.log_admission(&m, now, op.rate.address, op.window_ms, again);
            net.level
                .log_admission(&m, now, op.rate.network, op.window_ms, again);
            net.leases.insert(m, now + op.lease_ttl_ms, src.ip);
            ConnectOutcome {
                refusal,
                retry: false,
                bad,
                hold_ms: 0,
            }
        };
        // Admitted (a refusal returned above, unless shadow mode admits past it): the
        // node's registry, and its session index for a caller without epochs.
        let mut nodes = lock(&self.nodes);
        let node = MemoryStore::node(&mut nodes, op.lease.node, now, op.lease_ttl_ms);
        node.nets.insert(src.net, now);
        if op.lease.epoch.is_empty() {
            let until = now + index_ttl_ms(op.lease_ttl_ms);
            // Full: expired entries go, at most once a second (a search of the whole
            // index per Connect would cost more than the Connect).
            if node.sessions.len() >= MAX_INDEXED_SESSIONS && now >= node.index_pruned + 1000 {
                node.sessions.retain(|_, i| i.until > now);
                node.index_pruned = now;
            }
            // Past the bound (one heartbeat's worth of sessions), a session is not
            // indexed: a heartbeat naming it alone does not find it, and its lease
            // lives its TTL.
            if node.sessions.len() < MAX_INDEXED_SESSIONS {
                node.sessions.insert(
                    op.lease.session.into(),
                    Indexed {
                        ip_text: src.ip_text.as_str().into(),
                        net: src.net,
                        until,
                    },
                );
            }
        }
        Ok(outcome)
    }

    async fn recipient(&self, op: &RecipientOp<'_>) -> Result<RecipientOutcome, StoreError> {
        let now = self.clock.now_ms();
        let src = op.source;
        let mut shard = self.shard(&src.net);
        if let Some(ban) = current_ban(&shard, src, op.shadow, now) {
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
                        .map_or(0, |a| a.penalty(op.shadow).peek_bad(now, op.window_ms)),
                    network: n.level.penalty(op.shadow).peek_bad(now, op.window_ms),
                });
            return Ok(RecipientOutcome { ban: None, bad });
        }
        let (net, _) = entry(&mut shard, self.shard_cap, src, now);
        let addr = net.addrs.get_mut(&src.ip).expect("entry() made it");
        let (bad_a, live_a) = addr.penalty_mut(op.shadow).count_bad(
            &op.event,
            now,
            op.window_ms,
            op.cap(Level::Address),
        );
        addr.extend(live_a);
        let (bad_n, live_n) = net.level.penalty_mut(op.shadow).count_bad(
            &op.event,
            now,
            op.window_ms,
            op.cap(Level::Network),
        );
        net.level.extend(live_n);
        let bad = PerLevel {
            address: bad_a,
            network: bad_n,
        };
        let ban = if op.block_after.address > 0 && bad.address > op.block_after.address {
            let p = addr.penalty_mut(op.shadow);
            let (ban, live) = p.impose_ban(now, &op.ban, Level::Address);
            p.clear_bad();
            addr.extend(live);
            Some(ban)
        } else if op.block_after.network > 0 && bad.network > op.block_after.network {
            let p = net.level.penalty_mut(op.shadow);
            let (ban, live) = p.impose_ban(now, &op.ban, Level::Network);
            p.clear_bad();
            net.level.extend(live);
            Some(ban)
        } else {
            None
        };
        Ok(RecipientOutcome { ban, bad })
    }

    // As offence.lua, step by step.
    async fn offence(&self, op: &OffenceOp<'_>) -> Result<OffenceOutcome, StoreError> {
        let now = self.clock.now_ms();
        let src = op.source;
        let mut shard = self.shard(&src.net);
        if let Some(ban) = current_ban(&shard, src, op.shadow, now) {
            return Ok(OffenceOutcome {
                ban: Some(ban),
                count: PerLevel::default(),
            });
        }
        let (net, _) = entry(&mut shard, self.shard_cap, src, now);
        let addr = net.addrs.get_mut(&src.ip).expect("entry() made it");
        let mut count = PerLevel::default();
        if op.ban_at.address > 0 {
            let (n, live) = addr.penalty_mut(op.shadow).count_offence(
                op.kind,
                &op.event,
                Member::Event,
                now,
                op.window_ms,
                op.cap(Level::Address),
            );
            addr.extend(live);
            count.address = n;
        }
        if op.ban_at.network > 0 {
            let (n, live) = net.level.penalty_mut(op.shadow).count_offence(
                op.kind,
                &src.ip_text,
                Member::Latest,
                now,
                op.window_ms,
                op.cap(Level::Network),
            );
            net.level.extend(live);
            count.network = n;
        }
        // The network first: its ban covers the address, and an address banned on its
        // own would otherwise keep the network from ever reaching its threshold.
        let reached = |at: u32, n: u32| at > 0 && n >= at;
        let ban = if reached(op.ban_at.network, count.network) {
            let p = net.level.penalty_mut(op.shadow);
            let (ban, live) = p.impose_ban(now, &op.ban, Level::Network);
            p.clear_offences(op.kind);
            net.level.extend(live);
            Some(ban)
        } else if reached(op.ban_at.address, count.address) {
            let p = addr.penalty_mut(op.shadow);
            let (ban, live) = p.impose_ban(now, &op.ban, Level::Address);
            p.clear_offences(op.kind);
            addr.extend(live);
            Some(ban)
        } else {
            None
        };
        Ok(OffenceOutcome { ban, count })
    }

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let member = lease.member(&source.ip_text);
        if let Some(net) = self.shard(&source.net).nets.get_mut(&source.net) {
            net.leases.remove(&member);
        }
        Ok(())
    }

    async fn release(&self, op: &ReleaseOp<'_>) -> Result<u64, StoreError> {
        let mut released = 0;
        for ns in &op.by_net {
            let src = &ns.source;
            let mut shard = self.shard(&src.net);
            let Some(net) = shard.nets.get_mut(&src.net) else {
                continue;
            };
            for (session, ip_text) in &ns.leases {
                let lease = LeaseId {
                    node: op.node,
                    epoch: op.epoch,
                    session,
                };
                released += u64::from(net.leases.remove(&lease.member(ip_text)));
            }
        }
        Ok(released)
    }

    async fn heartbeat(&self, op: &HeartbeatOp<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut out = HeartbeatOutcome::default();
        // What to renew, network by network (each lease by its address), and which
        // networks to free older epochs in: decided under the node lock, done after it.
        // Each lease with its address and whether it may be under this epoch (sent with
        // its address) or only under none (found in the index: a Connect without epoch).
        let mut renew: HashMap<IpNet, Vec<ToRenew>> = HashMap::new();
        for ns in &op.by_net {
            let v = renew.entry(ns.source.net).or_default();
            v.extend(
                ns.leases
                    .iter()
                    .map(|(s, ip)| (Arc::from(ip.as_str()), *s, true)),
            );
        }
        let free: Vec<IpNet> = {
            let mut nodes = lock(&self.nodes);
            let node = MemoryStore::node(&mut nodes, op.node, now, op.lease_ttl_ms);
            let changed = node.epoch.as_deref() != Some(op.epoch);
            // As on Redis: at most MAX_SWEEPS per node in a window; a change past them
            // waits (and is not recorded) until a heartbeat in the next window.
            let mut sweep_now = false;
            if changed {
                if node.sweeps.1 == 0 || now >= node.sweeps.0.saturating_add(SWEEP_WINDOW_MS) {
                    node.sweeps = (now, 0);
                }
                node.sweeps.1 += 1;
                sweep_now = node.sweeps.1 <= MAX_SWEEPS;
            }
            out.epoch_changed = sweep_now && node.epoch.is_some();
            if sweep_now {
                node.epoch = Some(op.epoch.to_string());
            }
            let cut = now.saturating_sub(node.registry_ttl);
            node.nets.retain(|_, t| *t > cut);
            for session in &op.bare {
                match node.sessions.get_mut(*session) {
                    Some(i) if i.until > now => {
                        i.until = now + index_ttl_ms(op.lease_ttl_ms);
                        renew
                            .entry(i.net)
                            .or_default()
                            .push((i.ip_text.clone(), *session, false));
                    }
                    _ => out.unknown += 1,
                }
            }
            if sweep_now {
                node.nets.keys().copied().collect()
            } else {
                Vec::new()
            }
        };
        for net in free {
            if let Some(state) = self.shard(&net).nets.get_mut(&net) {
                out.freed += state.leases.free_other_epochs(op.node, op.epoch);
            }
        }
        let mut refresh = Vec::new();
        for (net, leases) in renew {
            let mut shard = self.shard(&net);
            let Some(state) = shard.nets.get_mut(&net) else {
                continue;
            };
            let mut renewed = 0;
            for (ip, session, this_epoch) in leases {
                let epochs: &[&str] = if this_epoch && !op.epoch.is_empty() {
                    &[op.epoch, ""]
                } else {
                    &[""]
                };
                for epoch in epochs {
                    let member = LeaseId {
                        node: op.node,
                        epoch,
                        session,
                    }
                    .member(&ip);
                    if state.leases.renew(&member, now, op.lease_ttl_ms) {
                        renewed += 1;
                        break;
                    }
                }
            }
            out.renewed += renewed;
            if renewed > 0 {
                refresh.push(net);
            }
        }
        // Networks with live sessions stay in the registry however long they last.
        if !refresh.is_empty() {
            let mut nodes = lock(&self.nodes);
            let node = MemoryStore::node(&mut nodes, op.node, now, op.lease_ttl_ms);
            for net in refresh {
                node.nets.insert(net, now);
            }
        }
        Ok(out)
    }

    async fn ban(&self, source: &Source, shadow: bool) -> Result<Option<super::Ban>, StoreError> {
        let now = self.clock.now_ms();
        Ok(current_ban(&self.shard(&source.net), source, shadow, now))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn usage(&self) -> Result<Option<super::StoreUsage>, StoreError> {
        Ok(Some(super::StoreUsage {
            unit: "entries",
            held: self.entries() as u64,
            limit: (self.shard_cap * SHARDS) as u64,
            evicted: self.evicted(),
        }))
    }
}

/// What this network's state counts for `op`'s source, then the first limit that
/// refuses it ([`connect_order`]). Counts no limit applies to are not computed.
fn connect_refusal(net: &mut NetState, op: &ConnectOp<'_>, now: u64) -> Option<Refusal> {
    let ip = op.source.ip;
    let mut addr = net.addrs.get_mut(&ip);
    let ban_ms = |b: Option<super::Ban>| b.map(|b| b.remaining_ms);
    let counts = ConnectCounts {
        ban_ms: PerLevel {
            address: ban_ms(
                addr.as_ref()
                    .and_then(|a| a.penalty(op.shadow).ban(now, Level::Address)),
            ),
            network: ban_ms(net.level.penalty(op.shadow).ban(now, Level::Network)),
        },
        admitted: PerLevel {
            address: if op.rate.address > 0 {
                addr.as_mut().map_or(0, |a| a.rate_count(now, op.window_ms))
            } else {
                0
            },
            network: if op.rate.network > 0 {
                net.level.rate_count(now, op.window_ms)
            } else {
                0
            },
        },
        sessions: PerLevel {
            address: if op.conn.address > 0 {
                net.leases.count_addr(&ip)
            } else {
                0
            },
            network: if op.conn.network > 0 {
                net.leases.count()
            } else {
                0
            },
        },
    };
    connect_order::refusal(&counts, &op.limits())
}

/// How long `refusal` holds (see [`ConnectOutcome::hold_ms`]).
fn hold_ms(net: &NetState, ip: &IpAddr, refusal: Option<Refusal>, now: u64, window: u64) -> u64 {
    match refusal {
        Some(Refusal::Banned { remaining_ms, .. }) => remaining_ms,
        Some(Refusal::Rate { level, .. }) => {
            let log = match level {
                Level::Address => net.addrs.get(ip),
                Level::Network => Some(&net.level),
            };
            log.and_then(LevelState::oldest_admission)
                .map_or(0, |t| (t + window).saturating_sub(now))
        }
        _ => 0,
    }
}

/// The ban in force on a source: the address's, else the network's.
fn current_ban(shard: &Shard, src: &Source, shadow: bool, now: u64) -> Option<super::Ban> {
    let n = shard.nets.get(&src.net)?;
    n.addrs
        .get(&src.ip)
        .and_then(|a| a.penalty(shadow).ban(now, Level::Address))
        .or_else(|| n.level.penalty(shadow).ban(now, Level::Network))
}

/// Splits a lease member into address, node, epoch, session.
pub(crate) fn split_member(m: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = m.splitn(4, SEP);
    Some((it.next()?, it.next()?, it.next()?, it.next()?))
}

#[cfg(test)]
mod tests;
