//! The counters of one address or one network, and the operations the Redis scripts
//! perform on the matching keys.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::split_member;
use crate::source::Level;
use crate::store::{Ban, BanPolicy};

/// A lease renewed until the given time, or freed (`None`).
type LeaseChange = (Arc<str>, Option<u64>);

/// One level (an address, or a whole network).
#[derive(Debug, Default)]
pub struct LevelState {
    /// Admitted connections: (time, lease member), oldest first, at most the limit.
    rate: VecDeque<(u64, Arc<str>)>,
    /// Live leases: member -> expiry.
    pub leases: HashMap<Arc<str>, u64>,
    /// Bad recipients: (time, event), oldest first, at most the cap.
    bad: VecDeque<(u64, Box<str>)>,
    ban_until: u64,
    ban_offence: u32,
    offences: u32,
    offences_until: u64,
    /// When all of the above is gone (the longest of the Redis key TTLs).
    pub expires: u64,
}

impl LevelState {
    fn extend(&mut self, until: u64) {
        self.expires = self.expires.max(until);
    }

    pub fn ban(&self, now: u64, level: Level) -> Option<Ban> {
        (self.ban_until > now).then(|| Ban {
            level,
            remaining_ms: self.ban_until - now,
            new: false,
            offence: self.ban_offence,
        })
    }

    pub fn has_live_lease(&self, member: &str, now: u64) -> bool {
        self.leases.get(member).is_some_and(|e| *e > now)
    }

    /// Connections admitted in the window that ends now.
    pub fn rate_count(&mut self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        while self.rate.front().is_some_and(|(t, _)| *t <= cut) {
            self.rate.pop_front();
        }
        self.rate.len() as u32
    }

    pub fn live_leases(&mut self, now: u64) -> u32 {
        self.leases.retain(|_, e| *e > now);
        self.leases.len() as u32
    }

    /// Records an admitted connection: its place in the rate log (kept only while a
    /// limit applies, and never more entries than the limit) and its lease.
    pub fn admit(&mut self, member: &Arc<str>, now: u64, rate_limit: u32, window: u64, ttl: u64) {
        if rate_limit > 0 {
            self.rate_count(now, window);
            self.rate.push_back((now, member.clone()));
            while self.rate.len() > rate_limit as usize {
                self.rate.pop_front();
            }
            self.extend(now + window);
        }
        self.leases.insert(member.clone(), now + ttl);
        self.extend(now + ttl);
    }

    /// Bad recipients in the window, without counting one.
    pub fn peek_bad(&self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        self.bad.iter().filter(|(t, _)| *t > cut).count() as u32
    }

    /// Counts a bad recipient once per event; returns the count in the window.
    pub fn count_bad(&mut self, event: &str, now: u64, window: u64, cap: u32) -> u32 {
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
        self.extend(now + window);
        self.bad.len() as u32
    }

    /// Bans this level; repeat offences within `remember` get longer bans.
    pub fn impose_ban(&mut self, now: u64, p: &BanPolicy, level: Level) -> Ban {
        if self.offences_until <= now {
            self.offences = 0;
        }
        self.offences += 1;
        self.offences_until = now + p.remember_ms;
        let len = p.length_ms(self.offences);
        self.ban_until = now + len;
        self.ban_offence = self.offences;
        // A fresh start once the ban is over.
        self.bad.clear();
        self.extend(self.offences_until.max(self.ban_until));
        Ban {
            level,
            remaining_ms: len,
            new: true,
            offence: self.offences,
        }
    }

    /// Renews or frees one node's leases (see the Redis `sweep` script).
    fn sweep_node(
        &mut self,
        node: &str,
        epoch: &str,
        sessions: &[&str],
        now: u64,
        ttl: u64,
    ) -> (u64, u64, Vec<LeaseChange>) {
        let (mut renewed, mut freed) = (0, 0);
        let mut changes = Vec::new();
        for (m, exp) in self.leases.iter_mut() {
            let Some((n, e, s, _)) = split_member(m) else {
                continue;
            };
            if n != node {
                continue;
            }
            if e != epoch {
                freed += 1;
                changes.push((m.clone(), None));
            } else if *exp > now && sessions.contains(&s) {
                *exp = now + ttl;
                renewed += 1;
                changes.push((m.clone(), Some(now + ttl)));
            }
        }
        for (m, exp) in &changes {
            if exp.is_none() {
                self.leases.remove(m);
            }
        }
        if renewed > 0 {
            self.extend(now + ttl);
        }
        (renewed, freed, changes)
    }
}

/// A network and the addresses in it.
#[derive(Debug, Default)]
pub struct NetState {
    pub level: LevelState,
    pub addrs: HashMap<IpAddr, LevelState>,
    /// Last use, for eviction under memory pressure.
    pub touched: u64,
}

impl NetState {
    pub fn banned(&self, now: u64) -> bool {
        self.level.ban_until > now || self.addrs.values().any(|a| a.ban_until > now)
    }

    /// Whether anything of the network outlives `now`.
    pub fn expires(&self, now: u64) -> bool {
        self.level.expires > now || !self.addrs.is_empty()
    }

    /// Renews the listed sessions of `node` and frees its leases of other epochs, at
    /// both levels. Returns (renewed, freed).
    pub fn sweep_node(
        &mut self,
        node: &str,
        epoch: &str,
        sessions: &[&str],
        now: u64,
        ttl: u64,
    ) -> (u64, u64) {
        let (renewed, freed, changes) = self.level.sweep_node(node, epoch, sessions, now, ttl);
        for (m, exp) in changes {
            let Some(ip) = split_member(&m).and_then(|(.., ip)| ip.parse::<IpAddr>().ok()) else {
                continue;
            };
            if let Some(a) = self.addrs.get_mut(&ip) {
                match exp {
                    None => {
                        a.leases.remove(&m);
                    }
                    Some(e) => {
                        if let Some(x) = a.leases.get_mut(&m) {
                            *x = e;
                        }
                        a.extend(e);
                    }
                }
            }
        }
        (renewed, freed)
    }
}
