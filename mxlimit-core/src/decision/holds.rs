//! Refusals that hold: a source the store refused for a ban or for ClientRate stays
//! refused for a time the store told (the ban's time left; until the oldest admission
//! in the refusing log leaves the window). Until then a `Connect` of that source is
//! answered here, without a store round trip: under a flood, every reconnect of an
//! attacker would otherwise cost one.
//!
//! Exact, never early and never late by more than the store's own answer: a hold
//! starts from when the store call was *sent* (the store decided later, so the hold
//! ends no later than the refusal does). Nothing else can lift such a refusal sooner
//! but an operator's unblock or a rules reload, and both clear every hold: a reload
//! here through the policy generation, an unblock on this limiter at once and on the
//! others at their next ledger refresh (the store counts unblocks). A rate hold
//! applies only while the source's limit at that level is at most the count that was
//! refused and the window is the same, so per-address rules and reloads stay exact.
//! A refusal the store gave to a call sent before a clear is not remembered after it
//! (each call carries the [`Ticket`] it was sent with). Shadow mode holds nothing.
//!
//! Bounded: at most [`MAX_HOLDS`] sources, expired ones dropped first.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ipnet::IpNet;

use crate::source::{Level, Source};
use crate::store::{ConnectLimits, Refusal};

/// Sources held at most, all shards together.
pub const MAX_HOLDS: usize = 100_000;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    Network(IpNet),
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Local monotonic ms, see [`Holds::now_ms`].
    until: u64,
    what: Held,
    /// The level promised to callers (`Verdict.hold_source`), decided once when the
    /// hold is made: the hold's own, or the address where rules tell a network's
    /// addresses apart.
    promise: Level,
}

#[derive(Debug, Clone, Copy)]
enum Held {
    Banned,
    /// Refused with this many admissions in the window: holds for a limit up to it,
    /// in a window of the same length.
    Rate {
        count: u32,
        window_ms: u64,
    },
}

/// A refusal answered from a hold, and how much longer it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub refusal: Refusal,
    /// The level promised to callers.
    pub promise: Level,
    pub ms_left: u64,
}

/// When a store call was sent, and under which clear and policy: see [`Holds::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    sent_ms: u64,
    cleared: u64,
    generation: u64,
}

/// The holds of one limiter.
pub struct Holds {
    shards: Box<[Mutex<HashMap<Key, Hold>>]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
    /// What the holds were made under: the policy's generation and the store's count
    /// of unblocks. A change clears them.
    policy_generation: AtomicU64,
    unblocks: AtomicU64,
    /// Clears so far.
    cleared: AtomicU64,
    /// Whether any hold exists: the check costs one atomic load when none does.
    any: AtomicU64,
    shard_cap: usize,
    /// When a full shard was last searched for expired holds: a full table is searched
    /// at most once a second, not on every new hold.
    searched_full: AtomicU64,
}

impl Default for Holds {
    fn default() -> Self {
        Holds::with_capacity(MAX_HOLDS)
    }
}

impl Holds {
    pub fn with_capacity(max: usize) -> Holds {
        Holds {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            start: Instant::now(),
            policy_generation: AtomicU64::new(0),
            unblocks: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            any: AtomicU64::new(0),
            shard_cap: (max / SHARDS).max(1),
            searched_full: AtomicU64::new(0),
        }
    }

    /// This limiter's monotonic clock, in ms.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Hold>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every hold.
    pub fn clear(&self) {
        self.cleared.fetch_add(1, Ordering::SeqCst);
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.any.store(0, Ordering::Relaxed);
    }

    /// Taken before a decision reads the policy (of `generation`) and calls the store;
    /// given to [`Holds::remember`] with the store's answer.
    pub fn ticket(&self, generation: u64) -> Ticket {
        Ticket {
            cleared: self.cleared.load(Ordering::SeqCst),
            sent_ms: self.now_ms(),
            generation,
        }
    }

    /// Clears the holds when a newer policy generation is seen (an older one, from a
    /// decision that started before a reload, changes nothing).
    pub fn policy_generation(&self, generation: u64) {
        if self.policy_generation.load(Ordering::SeqCst) < generation
            && self
                .policy_generation
                .fetch_max(generation, Ordering::SeqCst)
                < generation
        {
            self.clear();
        }
    }

    /// Clears the holds if the store's count of unblocks changed.
    pub fn unblocks(&self, count: u64) {
        if self.unblocks.swap(count, Ordering::Relaxed) != count {
            self.clear();
        }
    }

    /// A hold that refuses a `Connect` of `source` under `limits` now, in the order
    /// the store checks (bans, then rate; the address before its network).
    pub fn check(
        &self,
        source: &Source,
        limits: &ConnectLimits,
        window_ms: u64,
    ) -> Option<Holding> {
        if self.any.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.now_ms();
        let addr = self.get(Key::Address(source.ip), now);
        let net = self.get(Key::Network(source.net), now);
        let at = |level: Level| match level {
            Level::Address => addr,
            Level::Network => net,
        };
        let levels = [Level::Address, Level::Network];
        let found = levels
            .iter()
            .find_map(|&l| match at(l) {
                Some(
                    h @ Hold {
                        what: Held::Banned, ..
                    },
                ) => Some((l, h, None)),
                _ => None,
            })
            .or_else(|| {
                levels.iter().find_map(|&l| match at(l) {
                    Some(
                        h @ Hold {
                            what:
                                Held::Rate {
                                    count,
                                    window_ms: w,
                                },
                            ..
                        },
                    ) if w == window_ms && limits.rate.at(l) > 0 && limits.rate.at(l) <= count => {
                        Some((l, h, Some(count)))
                    }
                    _ => None,
                })
            })?;
        let (level, hold, count) = found;
        let ms_left = hold.until - now;
        let refusal = match count {
            None => Refusal::Banned {
                level,
                remaining_ms: ms_left,
            },
            Some(count) => Refusal::Rate { level, count },
        };
        Some(Holding {
            refusal,
            promise: hold.promise,
            ms_left,
        })
    }

    fn get(&self, key: Key, now: u64) -> Option<Hold> {
        let mut s = self.shard(&key);
        match s.get(&key) {
            Some(h) if h.until > now => Some(*h),
            Some(_) => {
                s.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a refusal the store gave to a call sent with `ticket`, if it holds
    /// (`hold_ms` from the store; `window_ms` the ClientRate window it counted in;
    /// `promise` gives the level promised to callers for the hold's level). Returns
    /// the promised level and ms left from now.
    pub fn remember(
        &self,
        source: &Source,
        refusal: Refusal,
        hold_ms: u64,
        window_ms: u64,
        ticket: Ticket,
        promise: impl FnOnce(Level) -> Level,
    ) -> Option<(Level, u64)> {
        let (level, what) = match refusal {
            Refusal::Banned { level, .. } => (level, Held::Banned),
            Refusal::Rate { level, count } => (level, Held::Rate { count, window_ms }),
            Refusal::Conn { .. } => return None,
        };
        // Less a millisecond: both clocks are cut to whole milliseconds.
        let until = ticket.sent_ms.saturating_add(hold_ms.saturating_sub(1));
        let now = self.now_ms();
        if hold_ms <= 1 || until <= now || !self.current(ticket) {
            return None;
        }
        let key = match level {
            Level::Address => Key::Address(source.ip),
            Level::Network => Key::Network(source.net),
        };
        let promise = promise(level);
        let mut s = self.shard(&key);
        if s.len() >= self.shard_cap && !s.contains_key(&key) {
            let last = self.searched_full.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .searched_full
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                s.retain(|_, h| h.until > now);
            }
            if s.len() >= self.shard_cap {
                // Full of live holds: this one is not kept (the store still answers).
                return Some((promise, until - now));
            }
        }
        // Checked again under the shard lock: a clear takes every shard's lock.
        if !self.current(ticket) {
            return None;
        }
        s.insert(
            key,
            Hold {
                until,
                what,
                promise,
            },
        );
        self.any.store(1, Ordering::Relaxed);
        Some((promise, until - now))
    }

    /// Whether nothing was cleared and no newer policy came since `ticket`: the store
    /// may have lifted a refusal made before either.
    fn current(&self, ticket: Ticket) -> bool {
        self.cleared.load(Ordering::SeqCst) == ticket.cleared
            && self.policy_generation.load(Ordering::SeqCst) <= ticket.generation
    }

    /// Holds kept now, expired ones included until they are looked at.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Aggregation;
    use crate::store::PerLevel;

    const W: u64 = 60_000;

    fn src(ip: &str) -> Source {
        Source::new(ip.parse().unwrap(), Aggregation::default())
    }

    fn limits(rate_a: u32, rate_n: u32) -> ConnectLimits {
        ConnectLimits {
            rate: PerLevel {
                address: rate_a,
                network: rate_n,
            },
            conn: PerLevel::default(),
        }
    }

    #[test]
    fn a_rate_hold_covers_limits_up_to_the_count_refused() {
        let h = Holds::default();
        let s = src("192.0.2.1");
        let t = h.ticket(0);
        let r = Refusal::Rate {
            level: Level::Address,
            count: 5,
        };
        assert!(h.remember(&s, r, 60_000, W, t, |l| l).is_some());
        assert_eq!(h.check(&s, &limits(5, 0), W).map(|x| x.refusal), Some(r));
        assert_eq!(h.check(&s, &limits(3, 0), W).map(|x| x.refusal), Some(r));
        assert_eq!(
            h.check(&s, &limits(6, 0), W),
            None,
            "a higher limit may admit"
        );
        assert_eq!(h.check(&s, &limits(0, 0), W), None, "unlimited admits");
        // Another address of the network is not held by an address's refusal.
        assert_eq!(h.check(&src("192.0.2.2"), &limits(5, 0), W), None);
    }

    #[test]
    fn bans_come_before_rate_and_a_network_hold_covers_its_addresses() {
        let h = Holds::default();
        let t = h.ticket(0);
        let a = src("192.0.2.1");
        let rate = Refusal::Rate {
            level: Level::Address,
            count: 2,
        };
        h.remember(&a, rate, 60_000, W, t, |l| l);
        let ban = Refusal::Banned {
            level: Level::Network,
            remaining_ms: 60_000,
        };
        h.remember(&a, ban, 60_000, W, t, |l| l);
        let got = h.check(&src("192.0.2.77"), &limits(2, 0), W).unwrap();
        assert!(matches!(
            got.refusal,
            Refusal::Banned {
                level: Level::Network,
                ..
            }
        ));
        assert!(got.ms_left <= 60_000 && got.ms_left > 50_000);
        assert!(matches!(
            h.check(&a, &limits(2, 0), W).unwrap().refusal,
            Refusal::Banned { .. }
        ));
    }

    #[test]
    fn conn_refusals_and_spent_holds_are_not_kept() {
        let h = Holds::default();
        let s = src("192.0.2.1");
        let t = h.ticket(0);
        let conn = Refusal::Conn {
            level: Level::Address,
            count: 1,
        };
        assert_eq!(h.remember(&s, conn, 60_000, W, t, |l| l), None);
        let rate = Refusal::Rate {
            level: Level::Address,
            count: 1,
        };
        assert_eq!(h.remember(&s, rate, 0, W, t, |l| l), None);
        assert!(h.is_empty());
    }

    #[test]
    fn a_new_policy_generation_or_unblock_count_clears_every_hold() {
        let h = Holds::default();
        let s = src("2001:db8::1");
        let ban = Refusal::Banned {
            level: Level::Address,
            remaining_ms: 60_000,
        };
        h.remember(&s, ban, 60_000, W, h.ticket(0), |l| l);
        h.policy_generation(0);
        assert!(h.check(&s, &limits(0, 0), W).is_some(), "same generation");
        h.policy_generation(1);
        assert!(h.check(&s, &limits(0, 0), W).is_none());
        h.remember(&s, ban, 60_000, W, h.ticket(0), |l| l);
        h.unblocks(7);
        assert!(h.check(&s, &limits(0, 0), W).is_none());
    }

    #[test]
    fn another_window_or_a_clear_after_the_call_was_sent_holds_nothing() {
        let h = Holds::default();
        let s = src("192.0.2.1");
        let rate = Refusal::Rate {
            level: Level::Address,
            count: 2,
        };
        h.remember(&s, rate, 60_000, W, h.ticket(0), |l| l);
        assert!(
            h.check(&s, &limits(2, 0), W / 2).is_none(),
            "a shorter window"
        );
        // Sent, then an unblock cleared everything, then the store's answer came.
        let sent = h.ticket(0);
        h.unblocks(1);
        assert_eq!(h.remember(&s, rate, 60_000, W, sent, |l| l), None);
        assert!(h.check(&s, &limits(2, 0), W).is_none());
    }

    #[test]
    fn the_promised_level_is_decided_once_and_kept_with_the_hold() {
        let h = Holds::default();
        let a = src("192.0.2.1");
        let ban = Refusal::Banned {
            level: Level::Network,
            remaining_ms: 60_000,
        };
        let mut asked = 0;
        let made = h.remember(&a, ban, 60_000, W, h.ticket(0), |_| {
            asked += 1;
            Level::Address
        });
        assert_eq!(made.map(|m| m.0), Some(Level::Address));
        for _ in 0..3 {
            let got = h.check(&src("192.0.2.9"), &limits(0, 0), W).unwrap();
            assert_eq!(got.promise, Level::Address);
        }
        assert_eq!(asked, 1);
    }

    #[test]
    fn memory_stays_bounded() {
        let h = Holds::with_capacity(SHARDS * 4);
        let t = h.ticket(0);
        let ban = Refusal::Banned {
            level: Level::Address,
            remaining_ms: 60_000,
        };
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            h.remember(
                &Source::new(ip.into(), Aggregation::default()),
                ban,
                60_000,
                W,
                t,
                |l| l,
            );
        }
        assert!(h.len() <= SHARDS * 4);
    }
}
