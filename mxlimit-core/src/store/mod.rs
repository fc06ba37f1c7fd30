//! The counters behind every decision, cluster-wide, behind one trait.
//!
//! Each decision is ONE atomic store operation that sees both levels of a source
//! (address and network) together: a Lua script on Redis (keys hash-tagged by network,
//! time from Redis `TIME`), a short critical section in memory. The engine decides
//! *which* limits apply; the store applies them atomically and says what it found.

pub mod connect_order;
pub mod instrumented;
pub mod ledger;
pub mod memory;

use std::future::Future;

use thiserror::Error;

use crate::offence::OffenceKind;
use crate::source::{Level, Source};

pub use connect_order::{ConnectCounts, ConnectLimits};

pub use memory::MemoryStore;

/// A store that cannot answer now; the caller fails open or closed as configured.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend failed to answer (down, timed out, refused the command).
    #[error("{backend}: {source}")]
    Backend {
        /// `redis`, or another backend's name.
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store reply not understood: {0}")]
    Reply(String),
    #[error("{0}")]
    Config(String),
}

/// One session's lease: unique per node and session, tagged with the node's epoch.
#[derive(Debug, Clone, Copy)]
pub struct LeaseId<'a> {
    pub node: &'a str,
    pub epoch: &'a str,
    pub session: &'a str,
}

/// Separates the parts of store members; validated input never contains it.
pub const SEP: char = '\x1f';

impl LeaseId<'_> {
    /// The member that stands for this lease in the store: `ip␟node␟epoch␟session`.
    /// The address comes first so that one address's leases are one lexical range.
    pub fn member(&self, ip: &str) -> String {
        let mut m = String::with_capacity(
            self.node.len() + self.epoch.len() + self.session.len() + ip.len() + 3,
        );
        for (i, part) in [ip, self.node, self.epoch, self.session].iter().enumerate() {
            if i > 0 {
                m.push(SEP);
            }
            m.push_str(part);
        }
        m
    }
}

/// The id of one RCPT, so that a retried call counts once: `node␟session␟index␟recipient`.
pub fn rcpt_event(node: &str, session: &str, index: u32, recipient: &str) -> String {
    format!("{node}{SEP}{session}{SEP}{index}{SEP}{recipient}")
}

/// A value at both levels of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerLevel<T> {
    pub address: T,
    pub network: T,
}

impl<T: Copy> PerLevel<T> {
    pub fn at(&self, level: Level) -> T {
        match level {
            Level::Address => self.address,
            Level::Network => self.network,
        }
    }
}

/// A `Connect`: admit the session unless banned, over ClientRate or over ClientConn.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOp<'a> {
    pub source: &'a Source,
    pub lease: LeaseId<'a>,
    /// Connections admitted per window; 0 = unlimited.
    pub rate: PerLevel<u32>,
    pub window_ms: u64,
    /// Concurrent sessions; 0 = unlimited.
    pub conn: PerLevel<u32>,
    pub lease_ttl_ms: u64,
    /// Admit even when a limit says no (the refusal is still reported), and look at
    /// shadow mode's bans.
    pub shadow: bool,
    /// The bad-recipient window, to read (not count) the source's bad recipients:
    /// a tarpitted source's session is tarpitted from its first RCPT.
    pub bad_window_ms: u64,
}

impl ConnectOp<'_> {
    pub fn limits(&self) -> ConnectLimits {
        ConnectLimits {
            rate: self.rate,
            conn: self.conn,
        }
    }
}

/// Why a connection is (or, in shadow mode, would be) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Banned { level: Level, remaining_ms: u64 },
    Rate { level: Level, count: u32 },
    Conn { level: Level, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOutcome {
    pub refusal: Option<Refusal>,
    /// A retry of a session already admitted: counted once, admitted again.
    pub retry: bool,
    /// Bad recipients in the window at both levels, as read before this connection.
    pub bad: PerLevel<u32>,
    /// For a refusal by a ban or by ClientRate: how long, from when the store decided,
    /// it holds whatever else comes (the ban's time left; the time until the oldest
    /// entry of the refusing rate log leaves the window, as refused connections are
    /// not logged). 0: not known to hold.
    pub hold_ms: u64,
}

/// Ban lengths and their escalation for repeat offenders.
#[derive(Debug, Clone, Copy)]
pub struct BanPolicy {
    pub block_for_ms: u64,
    pub escalation: f64,
    pub max_block_ms: u64,
    pub remember_ms: u64,
}

impl BanPolicy {
    /// The length of the ban for the `offence`-th offence (1 = first).
    pub fn length_ms(&self, offence: u32) -> u64 {
        let factor = self
            .escalation
            .powi(offence.saturating_sub(1).min(64) as i32);
        let ms = (self.block_for_ms as f64 * factor).min(self.max_block_ms as f64);
        ms.max(1.0) as u64
    }
}

/// A `Recipient`: check bans; count a rejected recipient at both levels, banning a
/// source that goes past its `block_after`.
#[derive(Debug, Clone)]
pub struct RecipientOp<'a> {
    pub source: &'a Source,
    /// Identifies this RCPT so that a retried call counts once.
    pub event: String,
    pub rejected: bool,
    pub window_ms: u64,
    /// 0 = off.
    pub tarpit_after: PerLevel<u32>,
    pub block_after: PerLevel<u32>,
    pub ban: BanPolicy,
    /// Count and ban in shadow mode's own keys: would-be bans never bite.
    pub shadow: bool,
}

impl RecipientOp<'_> {
    /// Counts past this are not needed to decide, so logs keep no more.
    pub fn cap(&self, level: Level) -> u32 {
        self.tarpit_after.at(level).max(self.block_after.at(level)) + 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub level: Level,
    pub remaining_ms: u64,
    /// Set by this very call.
    pub new: bool,
    /// 1 for a first offence, 2 for a repeat ...
    pub offence: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecipientOutcome {
    pub ban: Option<Ban>,
    /// Bad recipients in the window, this one included (capped at `cap`).
    pub bad: PerLevel<u32>,
}

/// An `Offence`: check bans; count one offence of a kind at both levels, banning a
/// level that reaches its `ban_at`. The address counts offences; the network counts
/// the distinct addresses that offended (several addresses of one network ban it).
#[derive(Debug, Clone)]
pub struct OffenceOp<'a> {
    pub source: &'a Source,
    pub kind: OffenceKind,
    /// Identifies this offence cluster-wide, so that a retried call counts once.
    pub event: String,
    pub window_ms: u64,
    /// Offences (address) and offending addresses (network) that ban; 0 = off.
    pub ban_at: PerLevel<u32>,
    pub ban: BanPolicy,
    /// Count and ban in shadow mode's own keys.
    pub shadow: bool,
}

impl OffenceOp<'_> {
    /// Counts past this are not needed to decide, so logs keep no more.
    pub fn cap(&self, level: Level) -> u32 {
        self.ban_at.at(level).max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffenceOutcome {
    /// The ban in force before this call (nothing was counted), or the one it set.
    pub ban: Option<Ban>,
    /// Offences of the address and offending addresses of the network in the window,
    /// this one included (capped at `cap`).
    pub count: PerLevel<u32>,
}

/// The id of one offence, cluster-wide: `node␟kind␟event`.
pub fn offence_event(node: &str, kind: OffenceKind, event: &str) -> String {
    format!("{node}{SEP}{kind}{SEP}{event}")
}

/// A batch of ended sessions of one node, grouped by network: each lease freed as by
/// `disconnect`.
#[derive(Debug, Clone)]
pub struct ReleaseOp<'a> {
    pub node: &'a str,
    pub epoch: &'a str,
    pub by_net: Vec<NetLeases<'a>>,
}

/// Sessions of one network with their addresses: ended ones for a release, live ones
/// for a heartbeat.
#[derive(Debug, Clone)]
pub struct NetLeases<'a> {
    /// A source of the network (its keys).
    pub source: Source,
    /// Each session with its client address's canonical text (as in the lease member).
    pub leases: Vec<(&'a str, String)>,
}

/// A `Heartbeat`: renew the node's live leases; a new epoch frees the old ones.
///
/// The work it causes is bounded by what it names, not by what the node holds: each
/// lease is renewed by its exact member (under this epoch, or none), and a session sent
/// without its address is looked up in the node's session index, which holds only
/// sessions admitted without an epoch (the design contract's callers; callers that
/// send an epoch send `leases`). Only an epoch change visits every network the node
/// took leases in.
#[derive(Debug, Clone)]
pub struct HeartbeatOp<'a> {
    pub node: &'a str,
    pub epoch: &'a str,
    /// Sessions whose client address is known, grouped by network.
    pub by_net: Vec<NetLeases<'a>>,
    /// Sessions sent without an address.
    pub bare: Vec<&'a str>,
    pub lease_ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatOutcome {
    pub renewed: u64,
    /// Leases of an older epoch, freed.
    pub freed: u64,
    pub epoch_changed: bool,
    /// Bare session ids not in the node's session index (ended, expired, or admitted
    /// with an epoch): nothing was renewed for them.
    pub unknown: u64,
}

/// Most entries one store script of a heartbeat takes (session lookups or renewals), so
/// that no single script runs long however big the heartbeat.
pub const HEARTBEAT_CHUNK: usize = 250;

/// The store behind the decisions. Every method is one atomic operation (one round
/// trip on Redis) except `heartbeat`, which renews leases network by network.
pub trait Store: Send + Sync + 'static {
    fn connect(
        &self,
        op: &ConnectOp<'_>,
    ) -> impl Future<Output = Result<ConnectOutcome, StoreError>> + Send;

    fn recipient(
        &self,
        op: &RecipientOp<'_>,
    ) -> impl Future<Output = Result<RecipientOutcome, StoreError>> + Send;

    fn offence(
        &self,
        op: &OffenceOp<'_>,
    ) -> impl Future<Output = Result<OffenceOutcome, StoreError>> + Send;

    /// Frees a lease; freeing an unknown lease is not an error.
    fn disconnect(
        &self,
        source: &Source,
        lease: LeaseId<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn heartbeat(
        &self,
        op: &HeartbeatOp<'_>,
    ) -> impl Future<Output = Result<HeartbeatOutcome, StoreError>> + Send;

    /// Frees many leases (one round trip on a single Redis; one per network, all at
    /// once, on a cluster); returns how many were held. Unknown ones are no error.
    fn release(&self, op: &ReleaseOp<'_>) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The ban in force on a source (address first, then network), counting nothing.
    fn ban(
        &self,
        source: &Source,
        shadow: bool,
    ) -> impl Future<Output = Result<Option<Ban>, StoreError>> + Send;

    /// Whether the store answers (for health checks).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `memory`, `redis` or `redis-cluster`.
    fn kind(&self) -> &'static str;

    /// What the store holds against the bound its operator set, when it can tell.
    fn usage(&self) -> impl Future<Output = Result<Option<StoreUsage>, StoreError>> + Send {
        async { Ok(None) }
    }
}

/// How full a store is: bytes on Redis (`used_memory` against `maxmemory`, summed over
/// a cluster's nodes), entries (addresses and networks) in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// `bytes` or `entries`.
    pub unit: &'static str,
    pub held: u64,
    /// 0: no bound set.
    pub limit: u64,
    /// Dropped to stay within the bound since the store started (Redis's
    /// `evicted_keys`; networks in memory).
    pub evicted: u64,
}

/// A shared store: several engines (limiter instances in one process, as in tests,
/// or an embedding) over the same counters.
impl<T: Store> Store for std::sync::Arc<T> {
    fn connect(
        &self,
        op: &ConnectOp<'_>,
    ) -> impl Future<Output = Result<ConnectOutcome, StoreError>> + Send {
        (**self).connect(op)
    }
    fn recipient(
        &self,
        op: &RecipientOp<'_>,
    ) -> impl Future<Output = Result<RecipientOutcome, StoreError>> + Send {
        (**self).recipient(op)
    }
    fn offence(
        &self,
        op: &OffenceOp<'_>,
    ) -> impl Future<Output = Result<OffenceOutcome, StoreError>> + Send {
        (**self).offence(op)
    }
    fn disconnect(
        &self,
        source: &Source,
        lease: LeaseId<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).disconnect(source, lease)
    }
    fn heartbeat(
        &self,
        op: &HeartbeatOp<'_>,
    ) -> impl Future<Output = Result<HeartbeatOutcome, StoreError>> + Send {
        (**self).heartbeat(op)
    }
    fn release(&self, op: &ReleaseOp<'_>) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).release(op)
    }
    fn ban(
        &self,
        source: &Source,
        shadow: bool,
    ) -> impl Future<Output = Result<Option<Ban>, StoreError>> + Send {
        (**self).ban(source, shadow)
    }
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).ping()
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn usage(&self) -> impl Future<Output = Result<Option<StoreUsage>, StoreError>> + Send {
        (**self).usage()
    }
}

/// How long a node's list of networks and its epoch are remembered: well past the
/// last lease it could hold. Heartbeats (every third of the lease TTL) refresh it.
pub fn registry_ttl_ms(lease_ttl_ms: u64) -> u64 {
    lease_ttl_ms.saturating_mul(4)
}

/// How long a session index entry lives without a heartbeat naming its session: two
/// lease TTLs (heartbeats come every third of one), so ended sessions' entries go soon.
pub fn index_ttl_ms(lease_ttl_ms: u64) -> u64 {
    lease_ttl_ms.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_lengths_escalate_up_to_the_maximum() {
        let p = BanPolicy {
            block_for_ms: 1000,
            escalation: 2.0,
            max_block_ms: 5000,
            remember_ms: 0,
        };
        assert_eq!(
            [1, 2, 3, 4, 40].map(|o| p.length_ms(o)),
            [1000, 2000, 4000, 5000, 5000]
        );
    }

    #[test]
    fn lease_members_join_their_parts() {
        let l = LeaseId {
            node: "mx1",
            epoch: "e1",
            session: "s1",
        };
        assert_eq!(l.member("1.2.3.4"), "1.2.3.4\x1fmx1\x1fe1\x1fs1");
    }
}
