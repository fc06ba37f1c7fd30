//! The decision path, top to bottom: for each RPC, what the policy says about the
//! source, one store operation, and the verdict.

pub mod blocks;
pub mod holds;
pub mod refusal_log;
pub mod tally;
pub mod verdict;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use metrics::counter;
use mxlimit_proto::v1::{
    ConnectReply, HeartbeatReply, LookupReply, OffenceReply, RecipientReply, SessionPolicy, Verdict,
};

use crate::decision::blocks::BlockTable;
use crate::decision::holds::Holds;
use crate::decision::tally::Tally;
use crate::metrics::{HEARTBEAT_UNKNOWN_SESSIONS, HELD_REFUSALS, OFFENCES};
use crate::names::NameResolver;
use crate::offence::OffenceKind;
use crate::policy::access::{ConnectAction, Tag, Value};
use crate::policy::reload::PolicyHandle;
use crate::policy::{ClientRules, Policy};
use crate::source::{Level, Source};
use crate::store::connect_order;
use crate::store::ledger::Metric;
use crate::store::{
    BanPolicy, ConnectCounts, ConnectLimits, ConnectOp, HeartbeatOp, LeaseId, NetLeases, OffenceOp,
    PerLevel, RecipientOp, Refusal, ReleaseOp, Store, StoreError,
};
use verdict::reason;

/// A validated `Connect`.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub lease: LeaseId<'a>,
    pub ip: IpAddr,
    pub client_name: Option<&'a str>,
}

/// A validated `Recipient`.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub node: &'a str,
    pub session: &'a str,
    pub ip: IpAddr,
    pub client_name: Option<&'a str>,
    pub recipient: &'a str,
    pub rejected: bool,
    pub envelope_rcpts: u32,
    pub envelope_bad_rcpts: u32,
}

/// A validated `Offence`.
#[derive(Debug, Clone, Copy)]
pub struct Offence<'a> {
    pub node: &'a str,
    pub ip: IpAddr,
    pub client_name: Option<&'a str>,
    pub kind: OffenceKind,
    pub event: &'a str,
}

/// A validated `Heartbeat`.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub node: &'a str,
    pub epoch: &'a str,
    pub leases: Vec<(&'a str, IpAddr)>,
    pub bare: Vec<&'a str>,
}

/// Decides. Generic over the store so that each backend is compiled in, not boxed.
pub struct Engine<S> {
    store: S,
    policy: Arc<PolicyHandle>,
    names: NameResolver,
    lookups: bool,
    /// Operators' blocks, kept fresh by the ledger keeper.
    blocks: BlockTable,
    /// Refusals and bad recipients for the top lists, flushed by the ledger keeper.
    tally: Tally,
    /// Refusals by bans and ClientRate that hold for a while: answered without the store.
    holds: Holds,
}

impl<S: Store> Engine<S> {
    pub fn new(store: S, policy: Arc<PolicyHandle>) -> Engine<S> {
        Engine {
            store,
            policy,
            names: NameResolver::default(),
            lookups: true,
            blocks: BlockTable::default(),
            tally: Tally::default(),
            holds: Holds::default(),
        }
    }

    /// Never looks names up, whatever the policy says: host and domain rules match only
    /// names callers send. For decisions that must cost no more than CPU time (the
    /// agent's local fallback, which runs after the limiter's deadline has passed).
    pub fn without_name_lookups(mut self) -> Engine<S> {
        self.lookups = false;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.policy
    }

    pub fn blocks(&self) -> &BlockTable {
        &self.blocks
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    /// An operator's block on `ip`, as its verdict. The check is one atomic load when
    /// no block is in force; the rest stays out of the decisions' code.
    fn blocked(&self, ip: IpAddr, reply: crate::policy::settings::BanReply) -> Option<Verdict> {
        if !self.blocks.any() {
            return None;
        }
        self.blocked_slow(ip, reply)
    }

    #[cold]
    #[inline(never)]
    fn blocked_slow(
        &self,
        ip: IpAddr,
        reply: crate::policy::settings::BanReply,
    ) -> Option<Verdict> {
        let b = self.blocks.check(ip)?;
        Some(verdict::blocked(
            reply,
            &verdict::block_rule(&b.target),
            &b.reason,
        ))
    }

    /// The name host and domain rules match: the caller's, else (only when such rules
    /// exist) the verified reverse name, within the DNS deadline.
    pub async fn client_name(
        &self,
        policy: &Policy,
        ip: IpAddr,
        given: Option<&str>,
    ) -> Option<Arc<str>> {
        if let Some(n) = given {
            return Some(n.trim_end_matches('.').to_ascii_lowercase().into());
        }
        if !self.lookups
            || !policy.has_name_rules
            || policy.settings.dns.mode == crate::policy::settings::DnsMode::Off
        {
            return None;
        }
        self.names.name(ip, &policy.settings.dns).await
    }

    pub async fn connect(&self, req: &Connect<'_>) -> Result<ConnectReply, StoreError> {
        // Before the policy: holds made under an older one are then cleared.
        let generation = self.policy.generation();
        let ticket = self.holds.ticket(generation);
        let policy = self.policy.get();
        let s = &policy.settings;
        let source = policy.source(req.ip);
        let name = self.client_name(&policy, req.ip, req.client_name).await;
        let rules = policy.client_rules(&source, name.as_deref());
        let reply = |verdict: Verdict, tarpit_ms: u32| {
            let r = ConnectReply {
                verdict: Some(verdict),
                policy: Some(SessionPolicy {
                    tarpit_ms,
                    ..session_policy(&policy, &rules)
                }),
                lease_ttl_ms: s.client_conn.lease_ttl.as_millis(),
            };
            self.refused(r, req.lease.node, &source)
        };

        // 1 and 2. An operator's block, or the access file, may decide without counting.
        let access = match self.before_counting(&policy, &rules, &source) {
            Uncounted::Decided(v) => return Ok(reply(v, 0)),
            Uncounted::Count { access } => access,
        };

        // 3. A refusal by a ban or by ClientRate that still holds: no store round trip.
        //    (Shadow mode counts every connection, so it holds nothing.)
        let limits = connect_limits(&rules);
        let window_ms = s.client_rate.window.as_millis();
        if !s.shadow {
            self.holds.policy_generation(generation);
            if let Some(h) = self.holds.check(&source, &limits, window_ms) {
                counter!(HELD_REFUSALS).increment(1);
                let v = connect_verdict(&policy, &rules, &source, Some(h.refusal));
                return Ok(reply(held(v, &source, h.promise, h.ms_left), 0));
            }
        }

        // 4. Bans, ClientRate and ClientConn at both levels: one store operation.
        let op = ConnectOp {
            source: &source,
            lease: req.lease,
            rate: limits.rate,
            window_ms,
            conn: limits.conn,
            lease_ttl_ms: s.client_conn.lease_ttl.as_millis(),
            shadow: s.shadow,
            bad_window_ms: s.bad_rcpt.window.as_millis(),
        };
        let outcome = self.store.connect(&op).await?;

        // 5. The verdict, the tarpit the session starts with, and how long a refusal
        //    holds (remembered here; told to the caller, who may hold it too).
        let mut v = counted_verdict(&policy, &rules, &source, access, outcome.refusal);
        if let Some(r) = outcome.refusal
            && !s.shadow
            && let Some((promise, ms_left)) =
                self.holds
                    .remember(&source, r, outcome.hold_ms, window_ms, ticket, |level| {
                        promised_level(&policy, &source, level)
                    })
        {
            v = held(v, &source, promise, ms_left);
        }
        Ok(reply(v, tarpit_ms(&policy, outcome.bad)))
    }

    /// The verdict a `Connect` of this source would get now, given what the store
    /// counts for it: Explain's prediction, by the same steps as [`Engine::connect`].
    pub fn connect_verdict_for(
        &self,
        policy: &Policy,
        rules: &ClientRules<'_>,
        source: &Source,
        counts: &ConnectCounts,
    ) -> Verdict {
        match self.before_counting(policy, rules, source) {
            Uncounted::Decided(v) => v,
            Uncounted::Count { access } => {
                let refusal = connect_order::refusal(counts, &connect_limits(rules));
                counted_verdict(policy, rules, source, access, refusal)
            }
        }
    }

    /// Steps 1 and 2 of a `Connect`: what is decided before the store counts.
    fn before_counting(
        &self,
        policy: &Policy,
        rules: &ClientRules<'_>,
        source: &Source,
    ) -> Uncounted {
        let s = &policy.settings;
        // An operator's block beats everything, access file included. It bites in
        // shadow mode too: it is no automatic decision.
        if let Some(v) = self.blocked(source.ip, s.bad_rcpt.ban_reply) {
            return Uncounted::Decided(v);
        }
        // OK/RELAY skip everything; a refusal needs no counting (unless shadow mode
        // only reports it, and the limits are counted as if it were not there).
        match access_verdict(rules) {
            Some(v) if rules.exempt() || !s.shadow => Uncounted::Decided(finish(policy, v)),
            access => Uncounted::Count { access },
        }
    }

    /// Logs and tallies a refused (or, in shadow mode, would-be refused) connection.
    fn refused(&self, r: ConnectReply, node: &str, source: &Source) -> ConnectReply {
        if r.verdict.as_ref().is_some_and(verdict::is_block) {
            self.tally.count(Metric::RefusedConnections, source);
            refusal_log::log("connect", node, source, r.verdict.as_ref());
        }
        r
    }

    // Long on purpose: the decision path of a Recipient, read top to bottom in one place
    // (block, count, then the verdicts strongest first).
    pub async fn recipient(&self, req: &Recipient<'_>) -> Result<RecipientReply, StoreError> {
        let policy = self.policy.get();
        let s = &policy.settings;
        let b = &s.bad_rcpt;
        let env = &s.envelope;
        let source = policy.source(req.ip);
        let name = self.client_name(&policy, req.ip, req.client_name).await;
        let rules = policy.client_rules(&source, name.as_deref());

        // 1. An operator's block closes the session.
        if let Some(v) = self.blocked(source.ip, crate::policy::settings::BanReply::Tempfail) {
            refusal_log::log("recipient", req.node, &source, Some(&v));
            return Ok(RecipientReply { verdict: Some(v) });
        }

        // 2. Count the bad recipient cluster-wide (and learn of bans): one store
        //    operation. Exempt sources are neither counted nor banned.
        let outcome = if rules.exempt() {
            Default::default()
        } else {
            let op = RecipientOp {
                source: &source,
                event: crate::store::rcpt_event(
                    req.node,
                    req.session,
                    req.envelope_rcpts,
                    req.recipient,
                ),
                rejected: req.rejected,
                window_ms: b.window.as_millis(),
                tarpit_after: PerLevel {
                    address: b.tarpit_after,
                    network: b.network_tarpit_after,
                },
                block_after: PerLevel {
                    address: b.block_after,
                    network: b.network_block_after,
                },
                ban: ban_policy(&policy),
                shadow: s.shadow,
            };
            let outcome = self.store.recipient(&op).await?;
            if req.rejected {
                self.tally.count(Metric::BadRecipients, &source);
            }
            if let Some(ban) = outcome.ban
                && ban.new
                && !s.shadow
            {
                self.tally.ban(ban.level, &source, ban.remaining_ms);
            }
            outcome
        };

        // 3. The verdict, strongest first: ban, too many recipients, tarpit, throttle.
        let prior_bad = req
            .envelope_bad_rcpts
            .saturating_sub(u32::from(req.rejected));
        let v = if let Some(ban) = outcome.ban {
            verdict::banned_in_session(ban.level, &verdict::ban_rule(&source.at(ban.level)))
        } else if env.max_rcpts_per_message > 0 && req.envelope_rcpts > env.max_rcpts_per_message {
            verdict::max_rcpts(verdict::rule::MAX_RCPTS)
        } else if b.tarpit_after > 0 && outcome.bad.address > b.tarpit_after {
            verdict::delay(
                ms(b.tarpit_delay.as_millis()),
                verdict::rule::TARPIT,
                reason::BAD_RCPT,
            )
        } else if b.network_tarpit_after > 0 && outcome.bad.network > b.network_tarpit_after {
            verdict::delay(
                ms(b.tarpit_delay.as_millis()),
                verdict::rule::NETWORK_TARPIT,
                reason::BAD_RCPT,
            )
        } else if env.bad_rcpt_throttle > 0 && prior_bad >= env.bad_rcpt_throttle {
            verdict::delay(
                ms(env.bad_rcpt_delay.as_millis()),
                verdict::rule::BAD_RCPT_THROTTLE,
                reason::BAD_RCPT_THROTTLE,
            )
        } else {
            verdict::accept(verdict::rule::BAD_RCPT)
        };
        let v = finish(&policy, v);
        refusal_log::log("recipient", req.node, &source, Some(&v));
        Ok(RecipientReply { verdict: Some(v) })
    }

    /// An offence: counted at both levels of the source with its kind's thresholds, and
    /// the source's ban if it is (now) banned.
    pub async fn offence(&self, req: &Offence<'_>) -> Result<OffenceReply, StoreError> {
        let policy = self.policy.get();
        let s = &policy.settings;
        let source = policy.source(req.ip);
        let name = self.client_name(&policy, req.ip, req.client_name).await;
        let rules = policy.client_rules(&source, name.as_deref());
        let limits = s.offences.limits(req.kind);
        let rule = verdict::rule::offences(req.kind);
        let done = |v: Verdict, result: &'static str| {
            counter!(OFFENCES, "kind" => req.kind.as_str(), "result" => result).increment(1);
            refusal_log::log("offence", req.node, &source, Some(&v));
            Ok(OffenceReply { verdict: Some(v) })
        };

        // 1. Not counted: a source an operator blocked (refused everywhere already; it
        //    bites in shadow mode too), an exempt one (OK, RELAY), or a kind turned off.
        if let Some(v) = self.blocked(source.ip, crate::policy::settings::BanReply::Tempfail) {
            return done(v, "blocked");
        }
        if rules.exempt() {
            let v = access_verdict(&rules).unwrap_or_else(|| verdict::exempt(rule));
            return done(finish(&policy, v), "exempt");
        }
        if limits.is_off() {
            return done(finish(&policy, verdict::accept(rule)), "off");
        }

        // 2. Count it and learn of bans: one store operation.
        let op = OffenceOp {
            source: &source,
            kind: req.kind,
            event: crate::store::offence_event(req.node, req.kind, req.event),
            window_ms: limits.window.as_millis(),
            ban_at: PerLevel {
                address: limits.ban_at,
                network: limits.network_ban_at,
            },
            ban: BanPolicy {
                block_for_ms: limits.block_for.as_millis(),
                ..ban_policy(&policy)
            },
            shadow: s.shadow,
        };
        let outcome = self.store.offence(&op).await?;

        // 3. The verdict: the ban, if any.
        let Some(ban) = outcome.ban else {
            return done(finish(&policy, verdict::accept(rule)), "counted");
        };
        if ban.new {
            tracing::info!(
                node = req.node,
                source = %source,
                kind = %req.kind,
                level = ban.level.as_str(),
                count = outcome.count.at(ban.level),
                ban_ms = ban.remaining_ms,
                offence = ban.offence,
                shadow = s.shadow,
                "banned for offences"
            );
            if !s.shadow {
                self.tally.ban(ban.level, &source, ban.remaining_ms);
            }
        }
        let v = verdict::banned_in_session(ban.level, &verdict::ban_rule(&source.at(ban.level)));
        done(
            finish(&policy, v),
            if ban.new { "banned" } else { "banned_before" },
        )
    }

    /// What `connect` would answer from bans and access rules alone; counts nothing.
    pub async fn lookup(
        &self,
        ip: IpAddr,
        client_name: Option<&str>,
    ) -> Result<LookupReply, StoreError> {
        let policy = self.policy.get();
        let s = &policy.settings;
        let source = policy.source(ip);
        let name = self.client_name(&policy, ip, client_name).await;
        let rules = policy.client_rules(&source, name.as_deref());
        if let Some(v) = self.blocked(ip, s.bad_rcpt.ban_reply) {
            return Ok(LookupReply { verdict: Some(v) });
        }
        let v = match access_verdict(&rules) {
            Some(v) => v,
            None => match self.store.ban(&source, s.shadow).await? {
                Some(ban) => verdict::banned_at_connect(
                    s.bad_rcpt.ban_reply,
                    ban.level,
                    &verdict::ban_rule(&source.at(ban.level)),
                ),
                None => verdict::accept(rules.rate.rule),
            },
        };
        Ok(LookupReply {
            verdict: Some(finish(&policy, v)),
        })
    }

    pub async fn disconnect(&self, ip: IpAddr, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let policy = self.policy.get();
        self.store.disconnect(&policy.source(ip), lease).await
    }

    /// Frees the leases of many ended sessions of one node: one store operation.
    pub async fn release(
        &self,
        node: &str,
        epoch: &str,
        leases: &[(&str, IpAddr)],
    ) -> Result<u64, StoreError> {
        let policy = self.policy.get();
        let op = ReleaseOp {
            node,
            epoch,
            by_net: by_network(&policy, leases),
        };
        self.store.release(&op).await
    }

    pub async fn heartbeat(&self, req: &Heartbeat<'_>) -> Result<HeartbeatReply, StoreError> {
        let policy = self.policy.get();
        let lease_ttl_ms = policy.settings.client_conn.lease_ttl.as_millis();
        let op = HeartbeatOp {
            node: req.node,
            epoch: req.epoch,
            by_net: by_network(&policy, &req.leases),
            bare: req.bare.clone(),
            lease_ttl_ms,
        };
        let out = self.store.heartbeat(&op).await?;
        self.tally.leases(req.node, out.renewed);
        if out.freed > 0 {
            tracing::info!(
                node = req.node,
                epoch = req.epoch,
                freed = out.freed,
                "leases of an earlier epoch freed"
            );
        }
        if out.unknown > 0 {
            counter!(HEARTBEAT_UNKNOWN_SESSIONS).increment(out.unknown);
            tracing::debug!(
                node = req.node,
                unknown = out.unknown,
                "heartbeat named sessions without address that no epoch-less Connect admitted"
            );
        }
        Ok(HeartbeatReply {
            lease_ttl_ms,
            unknown_sessions: out.unknown,
            renewed: out.renewed,
        })
    }
}

/// Sessions grouped by their client's network, each with its address as the lease
/// member writes it.
fn by_network<'a>(policy: &Policy, leases: &[(&'a str, IpAddr)]) -> Vec<NetLeases<'a>> {
    let mut by_net: HashMap<IpNet, NetLeases<'a>> = HashMap::new();
    for (session, ip) in leases {
        let source = policy.source(*ip);
        let ip_text = source.ip_text.clone();
        by_net
            .entry(source.net)
            .or_insert_with(|| NetLeases {
                source,
                leases: Vec::new(),
            })
            .leases
            .push((session, ip_text));
    }
    by_net.into_values().collect()
}

/// What the access file's `Connect:` entry says: exempt (`OK`, `RELAY`), a refusal,
/// or nothing (no entry, or `SKIP`).
fn access_verdict(rules: &ClientRules<'_>) -> Option<Verdict> {
    match rules.connect.map(|e| (&e.value, e.rule.as_str()))? {
        (Value::Connect(ConnectAction::Exempt), rule) => Some(verdict::exempt(rule)),
        (
            Value::Connect(ConnectAction::Refuse {
                code,
                enhanced,
                text,
            }),
            rule,
        ) => Some(verdict::access(*code, enhanced, text, rule)),
        _ => None,
    }
}

/// The verdict of a `Connect` the store admitted or refused (access rules aside).
fn connect_verdict(
    policy: &Policy,
    rules: &ClientRules<'_>,
    source: &Source,
    refusal: Option<Refusal>,
) -> Verdict {
    match refusal {
        None => verdict::accept(rules.rate.rule),
        Some(Refusal::Banned { level, .. }) => verdict::banned_at_connect(
            policy.settings.bad_rcpt.ban_reply,
            level,
            &verdict::ban_rule(&source.at(level)),
        ),
        Some(Refusal::Rate { level, .. }) => verdict::client_rate(match level {
            Level::Address => rules.rate.rule,
            Level::Network => rules.net_rate.rule,
        }),
        Some(Refusal::Conn { level, .. }) => verdict::client_conn(match level {
            Level::Address => rules.conn.rule,
            Level::Network => rules.net_conn.rule,
        }),
    }
}

/// A refusal that holds `ms_left` more for the source at the `promise` level, as the
/// verdict tells the caller, who may refuse `hold_source` itself without asking.
fn held(mut v: Verdict, source: &Source, promise: Level, ms_left: u64) -> Verdict {
    v.hold_ms = ms(ms_left);
    v.hold_source = source.at(promise);
    v
}

/// The level a hold at `level` is promised for. A caller refuses `hold_source` without
/// the rules, so a network's hold is promised for the network only when no `Connect:`
/// entry (an exemption above all) could tell its addresses apart, else for the
/// address; an address's hold depends on the client's name too where name rules
/// exist, which the caller keeps with it (mx-agent does). Decided once per hold: the
/// search goes over the access entries.
fn promised_level(policy: &Policy, source: &Source, level: Level) -> Level {
    match level {
        Level::Network if policy.table(Tag::Connect).has_entries_within(source.net) => {
            Level::Address
        }
        l => l,
    }
}

/// What [`Engine::before_counting`] leaves to the store.
enum Uncounted {
    Decided(Verdict),
    /// Count; `access` is a refusal that shadow mode only reports.
    Count {
        access: Option<Verdict>,
    },
}

/// Step 4 of a `Connect`: the verdict once the store has counted.
fn counted_verdict(
    policy: &Policy,
    rules: &ClientRules<'_>,
    source: &Source,
    access: Option<Verdict>,
    refusal: Option<Refusal>,
) -> Verdict {
    let v = access.unwrap_or_else(|| connect_verdict(policy, rules, source, refusal));
    finish(policy, v)
}

/// The ClientRate and ClientConn limits of these rules, at both levels.
fn connect_limits(rules: &ClientRules<'_>) -> ConnectLimits {
    ConnectLimits {
        rate: PerLevel {
            address: rules.rate.value,
            network: rules.net_rate.value,
        },
        conn: PerLevel {
            address: rules.conn.value,
            network: rules.net_conn.value,
        },
    }
}

fn ban_policy(p: &Policy) -> BanPolicy {
    let b = &p.settings.bad_rcpt;
    BanPolicy {
        block_for_ms: b.block_for.as_millis(),
        escalation: b.escalation,
        max_block_ms: b.max_block.as_millis(),
        remember_ms: b.remember.as_millis(),
    }
}

fn session_policy(p: &Policy, rules: &ClientRules<'_>) -> SessionPolicy {
    let env = &p.settings.envelope;
    SessionPolicy {
        max_rcpts_per_message: env.max_rcpts_per_message,
        bad_rcpt_throttle: env.bad_rcpt_throttle,
        bad_rcpt_delay_ms: ms(env.bad_rcpt_delay.as_millis()),
        greet_pause_ms: rules.greet_pause_ms,
        tarpit_ms: 0,
    }
}

fn finish(p: &Policy, v: Verdict) -> Verdict {
    if p.settings.shadow {
        verdict::shadow(v)
    } else {
        v
    }
}

/// The tarpit delay for a source with `bad` recipients in the window (0: none). The
/// same thresholds as [`Engine::recipient`]'s tarpit.
fn tarpit_ms(p: &Policy, bad: PerLevel<u32>) -> u32 {
    let b = &p.settings.bad_rcpt;
    // Shadow mode delays nothing.
    if p.settings.shadow {
        return 0;
    }
    let over = |after: u32, n: u32| after > 0 && n > after;
    if over(b.tarpit_after, bad.address) || over(b.network_tarpit_after, bad.network) {
        ms(b.tarpit_delay.as_millis())
    } else {
        0
    }
}

fn ms(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
