//! The counters of one address or one network, and the operations the Redis scripts
//! perform on the matching keys.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::split_member;
use crate::offence::OffenceKind;
use crate::source::Level;
use crate::store::{Ban, BanPolicy};

/// Bad recipients, bans and offences of one level. Shadow mode keeps its own.
#[derive(Debug, Default)]
pub struct Penalty {
    /// Bad recipients: (time, event), oldest first, at most the cap.
    bad: VecDeque<(u64, Box<str>)>,
    /// Offence logs, one per kind, made on the first offence: most sources never have one.
    misconduct: Option<Box<[Log; OffenceKind::ALL.len()]>>,
    ban_until: u64,
    ban_offence: u32,
    offences: u32,
    offences_until: u64,
}

/// (time, member), oldest first.
type Log = VecDeque<(u64, Box<str>)>;

/// Which member an offence log keeps, as ZADD does on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Each event once, at the time it first came (`ZADD NX`): an address's offences.
    Event,
    /// Each member once, at the time it last came (`ZADD`): a network's offending
    /// addresses.
    Latest,
}

impl Penalty {
    pub fn ban(&self, now: u64, level: Level) -> Option<Ban> {
        (self.ban_until > now).then(|| Ban {
            level,
            remaining_ms: self.ban_until - now,
            new: false,
            offence: self.ban_offence,
        })
    }

    pub fn banned(&self, now: u64) -> bool {
        self.ban_until > now
    }

    /// Lifts the ban and forgets the bad recipients (an operator's unblock); whether
    /// a ban was in force.
    pub fn lift(&mut self, now: u64) -> bool {
        let had = self.banned(now);
        self.ban_until = 0;
        self.bad.clear();
        self.misconduct = None;
        had
    }

    /// Bad recipients in the window, without counting one.
    pub fn peek_bad(&self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        self.bad.iter().filter(|(t, _)| *t > cut).count() as u32
    }

    /// Counts a bad recipient once per event; returns the count in the window, and
    /// how long the state must live.
    pub fn count_bad(&mut self, event: &str, now: u64, window: u64, cap: u32) -> (u32, u64) {
        let cut = now.saturating_sub(window);
        while self.bad.front().is_some_and(|(t, _)| *t <= cut) {
            self.bad.pop_front();
        }
        if !self.bad.iter().any(|(_, e)| &**e == event) {
            self.bad.push_back((now, event.into()));
        }
        while self.bad.len() > cap as usize {
            self.bad.pop_front();
        }
        (self.bad.len() as u32, now + window)
    }

    /// Counts an offence of `kind` (`member` is its event, or the offending address);
    /// returns the count in the window, and how long the state must live.
    pub fn count_offence(
        &mut self,
        kind: OffenceKind,
        member: &str,
        how: Member,
        now: u64,
        window: u64,
        cap: u32,
    ) -> (u32, u64) {
        let logs = self.misconduct.get_or_insert_with(Default::default);
        let log = &mut logs[kind as usize];
        let cut = now.saturating_sub(window);
        while log.front().is_some_and(|(t, _)| *t <= cut) {
            log.pop_front();
        }
        let seen = log.iter().position(|(_, m)| &**m == member);
        match (seen, how) {
            (Some(_), Member::Event) => {}
            (Some(i), Member::Latest) => {
                let (_, m) = log.remove(i).expect("found above");
                log.push_back((now, m));
            }
            (None, _) => log.push_back((now, member.into())),
        }
        while log.len() > cap as usize {
            log.pop_front();
        }
        (log.len() as u32, now + window)
    }

    /// A fresh start once a ban for bad recipients is over.
    pub fn clear_bad(&mut self) {
        self.bad.clear();
    }

    /// A fresh start once a ban for offences of `kind` is over.
    pub fn clear_offences(&mut self, kind: OffenceKind) {
        if let Some(l) = &mut self.misconduct {
            l[kind as usize].clear();
        }
    }

    /// Bans this level; repeat offences within `remember` get longer bans. Returns the
    /// ban and how long the state must live. What led to it is the caller's to clear.
    pub fn impose_ban(&mut self, now: u64, p: &BanPolicy, level: Level) -> (Ban, u64) {
        if self.offences_until <= now {
            self.offences = 0;
        }
        self.offences += 1;
        self.offences_until = now + p.remember_ms;
        let len = p.length_ms(self.offences);
        self.ban_until = now + len;
        self.ban_offence = self.offences;
        let ban = Ban {
            level,
            remaining_ms: len,
            new: true,
            offence: self.offences,
        };
        (ban, self.offences_until.max(self.ban_until))
    }
}

/// One level (an address, or a whole network): admitted connections and penalties.
#[derive(Debug, Default)]
pub struct LevelState {
    /// Admitted connections: (time, lease member), oldest first, at most the limit.
    rate: VecDeque<(u64, Arc<str>)>,
    pub penalty: Penalty,
    pub shadow: Penalty,
    /// When all of the above is gone (the longest of the Redis key TTLs).
    pub expires: u64,
}

impl LevelState {
    pub fn extend(&mut self, until: u64) {
        self.expires = self.expires.max(until);
    }

    pub fn penalty(&self, shadow: bool) -> &Penalty {
        if shadow { &self.shadow } else { &self.penalty }
    }

    pub fn penalty_mut(&mut self, shadow: bool) -> &mut Penalty {
        if shadow {
            &mut self.shadow
        } else {
            &mut self.penalty
        }
    }

    pub fn banned(&self, now: u64) -> bool {
        self.penalty.banned(now) || self.shadow.banned(now)
    }

    /// Connections in the log within the window that ends now, counting nothing.
    pub fn peek_rate(&self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        self.rate.iter().filter(|(t, _)| *t > cut).count() as u32
    }

    /// When the oldest connection in the rate log was admitted.
    pub fn oldest_admission(&self) -> Option<u64> {
        self.rate.front().map(|(t, _)| *t)
    }

    /// Connections admitted in the window that ends now.
    pub fn rate_count(&mut self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        while self.rate.front().is_some_and(|(t, _)| *t <= cut) {
            self.rate.pop_front();
        }
        self.rate.len() as u32
    }

    /// Records an admitted connection in the rate log (kept only while a limit applies,
    /// never more entries than the limit; a member logged again moves to now, as a
    /// sorted-set ZADD does). `again`: the member may be in the log already (see
    /// [`Recent`]); only then is the log searched, so an admission costs O(1) amortised.
    pub fn log_admission(
        &mut self,
        member: &Arc<str>,
        now: u64,
        limit: u32,
        window: u64,
        again: bool,
    ) {
        if limit == 0 {
            return;
        }
        self.rate_count(now, window);
        if again {
            self.rate.retain(|(_, m)| m != member);
        }
        self.rate.push_back((now, member.clone()));
        while self.rate.len() > limit as usize {
            self.rate.pop_front();
        }
        self.extend(now + window);
    }
}

/// The lease members admitted within the ClientRate window, with when they leave it:
/// whether a member being admitted may be in a rate log already (a session id that
/// comes again after its lease ended). Without it every admission would search the
/// logs for its member, and a log holds up to the limit's number of entries.
/// Bounded: past [`Recent::MAX`] members (a flood in shadow mode, or a network
/// without a network limit) a member is not noted and is searched for instead, which
/// is always right, only slower.
#[derive(Debug, Default)]
pub struct Recent {
    until: HashMap<Arc<str>, u64>,
    /// When expired members were last dropped because the map was full.
    pruned: u64,
}

impl Recent {
    pub const MAX: usize = 65_536;

    /// Notes `member` as admitted now; whether it may have been admitted within the
    /// window before (true when the map is full and it cannot tell).
    pub fn note(&mut self, member: &Arc<str>, now: u64, window: u64) -> bool {
        if self.until.len() >= Self::MAX && !self.until.contains_key(member) {
            // Full: drop what expired, at most once a second.
            if now.saturating_sub(self.pruned) >= 1000 {
                self.pruned = now;
                self.prune(now);
            }
            if self.until.len() >= Self::MAX {
                return true;
            }
        }
        match self.until.insert(member.clone(), now + window) {
            Some(until) => until > now,
            None => false,
        }
    }

    pub fn prune(&mut self, now: u64) {
        self.until.retain(|_, until| *until > now);
    }
}

/// The live sessions of a network: member -> (expiry, address), with per-address counts.
#[derive(Debug, Default)]
pub struct Leases {
    map: HashMap<Arc<str>, (u64, IpAddr)>,
    per_addr: HashMap<IpAddr, u32>,
    /// The earliest expiry, so that pruning costs nothing until something expires.
    next_expiry: u64,
}

impl Leases {
    pub fn is_live(&self, member: &str, now: u64) -> bool {
        self.map.get(member).is_some_and(|(e, _)| *e > now)
    }

    pub fn prune(&mut self, now: u64) {
        if self.map.is_empty() || self.next_expiry > now {
            return;
        }
        let per_addr = &mut self.per_addr;
        let mut next = u64::MAX;
        self.map.retain(|_, (e, ip)| {
            if *e > now {
                next = next.min(*e);
                return true;
            }
            if let Some(c) = per_addr.get_mut(ip) {
                *c -= 1;
                if *c == 0 {
                    per_addr.remove(ip);
                }
            }
            false
        });
        self.next_expiry = next;
    }

    pub fn count(&self) -> u32 {
        self.map.len() as u32
    }

    /// Live leases, counting nothing.
    pub fn live(&self, now: u64, ip: Option<&IpAddr>) -> u32 {
        self.map
            .values()
            .filter(|(e, a)| *e > now && ip.is_none_or(|ip| ip == a))
            .count() as u32
    }

    pub fn count_addr(&self, ip: &IpAddr) -> u32 {
        self.per_addr.get(ip).copied().unwrap_or(0)
    }

    pub fn insert(&mut self, member: Arc<str>, expiry: u64, ip: IpAddr) {
        if self.map.insert(member, (expiry, ip)).is_none() {
            *self.per_addr.entry(ip).or_default() += 1;
        }
        self.next_expiry = if self.map.len() == 1 {
            expiry
        } else {
            self.next_expiry.min(expiry)
        };
    }

    /// Frees a lease; whether it was held.
    pub fn remove(&mut self, member: &str) -> bool {
        let Some((_, ip)) = self.map.remove(member) else {
            return false;
        };
        if let Some(c) = self.per_addr.get_mut(&ip) {
            *c -= 1;
            if *c == 0 {
                self.per_addr.remove(&ip);
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Renews one live lease; whether it was there.
    pub fn renew(&mut self, member: &str, now: u64, ttl: u64) -> bool {
        match self.map.get_mut(member) {
            Some((exp, _)) if *exp > now => {
                *exp = now + ttl;
                true
            }
            _ => false,
        }
    }

    /// Frees `node`'s leases of other epochs (not those taken without an epoch), as
    /// the Redis `sweep` script does; how many.
    pub fn free_other_epochs(&mut self, node: &str, epoch: &str) -> u64 {
        let gone: Vec<Arc<str>> = self
            .map
            .keys()
            .filter(|m| {
                split_member(m).is_some_and(|(_, n, e, _)| n == node && e != epoch && !e.is_empty())
            })
            .cloned()
            .collect();
        for m in &gone {
            self.remove(m);
        }
        gone.len() as u64
    }
}

/// A network and the addresses in it.
#[derive(Debug, Default)]
pub struct NetState {
    pub level: LevelState,
    pub addrs: HashMap<IpAddr, LevelState>,
    pub leases: Leases,
    /// Members admitted within the window, for the rate logs.
    pub recent: Recent,
    /// Last use, for eviction under memory pressure.
    pub touched: u64,
}

impl NetState {
    pub fn banned(&self, now: u64) -> bool {
        self.level.banned(now) || self.addrs.values().any(|a| a.banned(now))
    }

    /// Whether anything of the network outlives `now`.
    pub fn alive(&self, now: u64) -> bool {
        self.level.expires > now || !self.addrs.is_empty() || !self.leases.is_empty()
    }
}
