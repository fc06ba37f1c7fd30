//! The agent's side of the limiter: every call has a deadline; when the limiter is slow
//! or gone the agent decides locally within that deadline (fail-open, with this host's
//! own limits) or refuses for now (fail-closed); leases of live sessions are renewed by
//! heartbeats and released where they were taken.

pub mod breaker;
pub mod channel;
pub mod counted;
pub mod holds;
pub mod releases;
pub mod sessions;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mxlimit_core::decision::{self, Engine, verdict};
use mxlimit_core::offence::OffenceKind;
use mxlimit_core::store::LeaseId;
use mxlimit_core::store::memory::MemoryStore;
use mxlimit_core::telemetry;
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{
    Action, ConnectRequest, DisconnectRequest, HeartbeatRequest, Lease, LookupRequest,
    OffenceRequest, RecipientRequest, ReleaseRequest, SessionPolicy, Verdict,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::Instrument;

use crate::config::FailMode;
use breaker::Breaker;
use metrics::{counter, gauge, histogram};
use mxlimit_core::decision::verdict::{action_label, reason_label};

use crate::metrics as m;
pub use sessions::Origin;
use sessions::{Live, Sessions};

/// The source every session without a client address counts as, in this host's
/// fallback limits: `0.0.0.0`, which no client connects from.
pub const UNATTRIBUTED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Whether the adapter will see a session end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// It calls `disconnect`; meanwhile heartbeats keep the lease.
    Seen,
    /// It never knows; the lease lives its TTL and is not renewed.
    Unseen,
}

/// A `Connect` decided: the verdict, the session's limits, and who decided.
#[derive(Debug, Clone)]
pub struct Admission {
    pub verdict: Verdict,
    pub policy: SessionPolicy,
    pub origin: Origin,
}

impl Admission {
    /// Whether the session goes on (and so holds a lease to release).
    pub fn admitted(&self) -> bool {
        matches!(action(&self.verdict), Action::Accept | Action::Delay)
    }
}

pub fn action(v: &Verdict) -> Action {
    // An unset action is an accept, never a refusal.
    match Action::try_from(v.action) {
        Ok(Action::Unspecified) | Err(_) => Action::Accept,
        Ok(a) => a,
    }
}

/// One RCPT as the MTA saw it.
#[derive(Debug, Clone, Copy)]
pub struct Rcpt<'a> {
    pub recipient: &'a str,
    pub rejected: bool,
    pub smtp_code: u32,
    pub envelope_rcpts: u32,
    pub envelope_bad_rcpts: u32,
}

/// Fallbacks and calls, counted.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub fallbacks: AtomicU64,
    pub skipped: AtomicU64,
    /// Connects refused from a hold, without a call.
    pub held: AtomicU64,
    /// `Release` calls answered, and the leases they freed at the limiter.
    pub release_calls: AtomicU64,
    pub released: AtomicU64,
}

/// How the limiter client is set up.
pub struct LimiterOptions {
    pub node: String,
    pub deadline: Duration,
    pub fail: FailMode,
    pub retry_after: Duration,
    /// The longest a refusal the limiter said holds is held here (0: never).
    pub hold_max: Duration,
    /// How long an ended session's lease may wait to be released in a batch (0: each
    /// session is released by its own call).
    pub release_every: Duration,
}

pub struct Limiter {
    client: LimiterClient<Channel>,
    node: String,
    epoch: String,
    deadline: Duration,
    fail: FailMode,
    breaker: Breaker,
    local: Engine<Arc<MemoryStore>>,
    sessions: Sessions,
    lease_ttl_ms: AtomicU64,
    next_id: AtomicU64,
    pub stats: Stats,
    /// Rejected recipients counted lately, so that none counts twice.
    pub counted: counted::Counted,
    /// Refusals the limiter said hold: answered here, without a call.
    pub holds: holds::Holds,
    /// Ended sessions' leases waiting for their batch.
    pub releases: releases::Releases,
}

/// Why the limiter gave no answer.
#[derive(Debug)]
enum Failure {
    Skipped,
    Timeout,
    Status(Status),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Skipped => f.write_str("skipped (limiter down)"),
            Failure::Timeout => f.write_str("deadline exceeded"),
            Failure::Status(s) => write!(f, "{}: {}", s.code(), s.message()),
        }
    }
}

impl Limiter {
    /// `local` decides while the limiter is unreachable (fail-open).
    pub fn new(channel: Channel, local: Engine<Arc<MemoryStore>>, opts: LimiterOptions) -> Limiter {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Limiter {
            client: LimiterClient::new(channel),
            node: opts.node,
            // Time-ordered and unique per start: a restart is a new epoch.
            epoch: format!(
                "{:013}-{:05}",
                started.as_millis(),
                std::process::id() % 100_000
            ),
            deadline: opts.deadline,
            fail: opts.fail,
            breaker: Breaker::new(opts.retry_after),
            local,
            sessions: Sessions::default(),
            lease_ttl_ms: AtomicU64::new(30_000),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            counted: counted::Counted::default(),
            holds: holds::Holds::new(opts.hold_max),
            releases: releases::Releases::new(opts.release_every),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A session id unique on this node for this epoch.
    pub fn new_session_id(&self) -> String {
        format!("{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Calls the limiter within the deadline. One retry, only while half the deadline
    /// is left and only for errors that say the request never got through; every
    /// call retried here is idempotent (the same session id counts once).
    async fn remote<T, F, Fut>(&self, rpc: &'static str, call: F) -> Result<T, Failure>
    where
        F: FnMut(LimiterClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.remote_within(rpc, self.deadline, true, call).await
    }

    /// `breaker`: whether the call obeys (and feeds) the breaker; background calls do not.
    async fn remote_within<T, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        breaker: bool,
        call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(LimiterClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if breaker && !self.breaker.allow() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            counter!(m::CALLS, "rpc" => rpc, "result" => "skipped").increment(1);
            return Err(Failure::Skipped);
        }
        let start = Instant::now();
        let span = telemetry::client_span(rpc_path(rpc));
        let r = self
            .attempts(rpc, deadline, breaker, start, call)
            .instrument(span)
            .await;
        histogram!(m::CALL_SECONDS, "rpc" => rpc).record(start.elapsed());
        let result = match &r {
            Ok(_) => "ok",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Status(s)) if s.code() == Code::Unavailable => "unavailable",
            Err(Failure::Status(s)) if s.code() == Code::InvalidArgument => "invalid_argument",
            Err(_) => "error",
        };
        counter!(m::CALLS, "rpc" => rpc, "result" => result).increment(1);
        r
    }

    /// The call, retried once on UNAVAILABLE while half the deadline is left.
    async fn attempts<T, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        breaker: bool,
        start: Instant,
        mut call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(LimiterClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut retried = false;
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, call(self.client.clone(), left)).await {
                Ok(Ok(r)) => {
                    if breaker {
                        self.breaker.success();
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(s))
                    if !retried
                        && s.code() == Code::Unavailable
                        && start.elapsed() < deadline / 2 =>
                {
                    retried = true;
                }
                Ok(Err(s)) => {
                    if s.code() == Code::InvalidArgument {
                        // Our request, not the limiter, is at fault: say so loudly.
                        tracing::error!(rpc, error = %s.message(), "the limiter refused the request");
                    } else if breaker {
                        self.breaker.failure();
                    }
                    return Err(Failure::Status(s));
                }
                Err(_) => {
                    if breaker {
                        self.breaker.failure();
                    }
                    return Err(Failure::Timeout);
                }
            }
        }
    }

    fn fell_back(&self, rpc: &'static str, why: &Failure) {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        let (mode, label) = match self.fail {
            FailMode::Open => ("local limits", "local"),
            FailMode::Closed => ("tempfail", "tempfail"),
        };
        counter!(m::FALLBACKS, "rpc" => rpc, "mode" => label).increment(1);
        tracing::debug!(rpc, reason = %why, mode, "limiter fallback");
    }

    /// A new session. `ends` says whether the caller will see the session end and call
    /// `disconnect` (the milter does; Postfix's policy service never learns of it): only
    /// then is its lease renewed by heartbeats; otherwise it expires after its TTL.
    pub async fn connect(
        &self,
        session: &str,
        ip: IpAddr,
        name: Option<&str>,
        helo: &str,
        ends: Ends,
    ) -> Admission {
        // A refusal the limiter said still holds: no call.
        if let Some((verdict, policy)) = self.holds.check(ip, name) {
            counter!(m::HELD_REFUSALS).increment(1);
            self.stats.held.fetch_add(1, Ordering::Relaxed);
            let a = Admission {
                verdict,
                policy,
                origin: Origin::Limiter,
            };
            decided("Connect", &a.verdict, a.origin);
            return a;
        }
        let sent = Instant::now();
        let req = ConnectRequest {
            node: self.node.clone(),
            session_id: session.to_string(),
            client_ip: ip.to_string(),
            client_name: name.unwrap_or_default().to_string(),
            helo: truncate(helo, 255).to_string(),
            epoch: self.epoch.clone(),
        };
        let mut maybe_remote = false;
        let a = match self
            .remote("Connect", |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.connect(r).await }
            })
            .await
        {
            Ok(r) => {
                if r.lease_ttl_ms > 0 {
                    self.lease_ttl_ms.store(r.lease_ttl_ms, Ordering::Relaxed);
                }
                let a = Admission {
                    verdict: r.verdict.unwrap_or_else(accept),
                    policy: r.policy.unwrap_or_default(),
                    origin: Origin::Limiter,
                };
                if !a.admitted() {
                    self.holds.remember(&a.verdict, &a.policy, name, sent);
                }
                a
            }
            Err(why) => {
                self.fell_back("Connect", &why);
                // A slow limiter may have admitted the session after all.
                maybe_remote = !matches!(why, Failure::Skipped);
                self.fallback_connect(session, ip, name).await
            }
        };
        decided("Connect", &a.verdict, a.origin);
        self.track(session, ip, &a, maybe_remote, ends);
        a
    }

    /// A session whose client the MTA did not name by an address (an unknown family,
    /// a text that is no address, a local socket). The limiter cannot count it, so
    /// the fallback mode decides, as if the limiter were down: `open`, this host's own
    /// limits, every such session of the host counted as one source
    /// ([`UNATTRIBUTED`]); `closed`, a temporary failure. Never waved through.
    pub async fn connect_unattributed(
        &self,
        session: &str,
        name: Option<&str>,
        ends: Ends,
    ) -> Admission {
        let a = self.fallback_connect(session, UNATTRIBUTED, name).await;
        decided("Connect", &a.verdict, a.origin);
        self.track(session, UNATTRIBUTED, &a, false, ends);
        a
    }

    /// Keeps an admitted session whose end the caller will see, for heartbeats and
    /// its release.
    fn track(&self, session: &str, ip: IpAddr, a: &Admission, maybe_remote: bool, ends: Ends) {
        if a.admitted() && a.origin != Origin::Closed && ends == Ends::Seen {
            let live = Live {
                ip,
                origin: a.origin,
                maybe_remote,
            };
            self.sessions.insert(session, live);
        }
    }

    /// A `Connect` decided without the limiter, by the fallback mode.
    async fn fallback_connect(&self, session: &str, ip: IpAddr, name: Option<&str>) -> Admission {
        match self.fail {
            FailMode::Closed => Admission {
                verdict: verdict::unavailable(Action::Disconnect, 421),
                policy: SessionPolicy::default(),
                origin: Origin::Closed,
            },
            FailMode::Open => {
                let lease = LeaseId {
                    node: &self.node,
                    epoch: &self.epoch,
                    session,
                };
                let local = decision::Connect {
                    lease,
                    ip,
                    client_name: name,
                };
                match self.local.connect(&local).await {
                    Ok(r) => Admission {
                        verdict: r.verdict.unwrap_or_else(accept),
                        policy: r.policy.unwrap_or_default(),
                        origin: Origin::Local,
                    },
                    Err(_) => Admission {
                        verdict: accept(),
                        policy: SessionPolicy::default(),
                        origin: Origin::Local,
                    },
                }
            }
        }
    }

    pub async fn recipient(
        &self,
        session: &str,
        ip: IpAddr,
        name: Option<&str>,
        rcpt: Rcpt<'_>,
    ) -> (Verdict, Origin) {
        if rcpt.rejected {
            self.counted.note(ip, rcpt.recipient);
        }
        let req = RecipientRequest {
            node: self.node.clone(),
            session_id: session.to_string(),
            client_ip: ip.to_string(),
            recipient: truncate(rcpt.recipient, 512).to_string(),
            rejected: rcpt.rejected,
            smtp_code: rcpt.smtp_code,
            envelope_rcpts: rcpt.envelope_rcpts,
            envelope_bad_rcpts: rcpt.envelope_bad_rcpts,
            client_name: name.unwrap_or_default().to_string(),
        };
        let (verdict, origin) = match self
            .remote("Recipient", |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.recipient(r).await }
            })
            .await
        {
            Ok(r) => (r.verdict.unwrap_or_else(accept), Origin::Limiter),
            Err(why) => {
                self.fell_back("Recipient", &why);
                self.fallback_recipient(session, ip, name, &req.recipient, rcpt)
                    .await
            }
        };
        decided("Recipient", &verdict, origin);
        (verdict, origin)
    }

    /// A RCPT of a session admitted by [`Limiter::connect_unattributed`].
    pub async fn recipient_unattributed(
        &self,
        session: &str,
        name: Option<&str>,
        rcpt: Rcpt<'_>,
    ) -> (Verdict, Origin) {
        let recipient = truncate(rcpt.recipient, 512);
        let (verdict, origin) = self
            .fallback_recipient(session, UNATTRIBUTED, name, recipient, rcpt)
            .await;
        decided("Recipient", &verdict, origin);
        (verdict, origin)
    }

    /// A `Recipient` decided without the limiter, by the fallback mode.
    async fn fallback_recipient(
        &self,
        session: &str,
        ip: IpAddr,
        name: Option<&str>,
        recipient: &str,
        rcpt: Rcpt<'_>,
    ) -> (Verdict, Origin) {
        match self.fail {
            FailMode::Closed => (verdict::unavailable(Action::Tempfail, 451), Origin::Closed),
            FailMode::Open => {
                let local = decision::Recipient {
                    node: &self.node,
                    session,
                    ip,
                    client_name: name,
                    recipient,
                    rejected: rcpt.rejected,
                    envelope_rcpts: rcpt.envelope_rcpts,
                    envelope_bad_rcpts: rcpt.envelope_bad_rcpts,
                };
                let v = self
                    .local
                    .recipient(&local)
                    .await
                    .ok()
                    .and_then(|r| r.verdict);
                (v.unwrap_or_else(accept), Origin::Local)
            }
        }
    }

    /// An offence the MTA saw (talked before the greeting, broke the protocol, failed
    /// AUTH), named by `event` on this node so that a retry counts once. Counted at the
    /// limiter; without it, in this host's fallback limits when failing open (so that
    /// this MX still refuses the source), not at all when failing closed.
    pub async fn offence(&self, ip: IpAddr, kind: OffenceKind, event: &str) -> (Verdict, Origin) {
        let req = OffenceRequest {
            node: self.node.clone(),
            client_ip: ip.to_string(),
            kind: kind.to_wire() as i32,
            event_id: event.to_string(),
            client_name: String::new(),
        };
        let (verdict, origin) = match self
            .remote("Offence", |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.offence(r).await }
            })
            .await
        {
            Ok(r) => (r.verdict.unwrap_or_else(accept), Origin::Limiter),
            Err(why) => {
                self.fell_back("Offence", &why);
                match self.fail {
                    FailMode::Closed => {
                        (verdict::unavailable(Action::Tempfail, 451), Origin::Closed)
                    }
                    FailMode::Open => {
                        let local = decision::Offence {
                            node: &self.node,
                            ip,
                            client_name: None,
                            kind,
                            event,
                        };
                        let v = self
                            .local
                            .offence(&local)
                            .await
                            .ok()
                            .and_then(|r| r.verdict);
                        (v.unwrap_or_else(accept), Origin::Local)
                    }
                }
            }
        };
        decided("Offence", &verdict, origin);
        (verdict, origin)
    }

    /// Releases the session's lease where it was taken. Never fails the caller.
    pub async fn disconnect(&self, session: &str) {
        let Some(Live {
            ip,
            origin,
            maybe_remote,
        }) = self.sessions.remove(session)
        else {
            return;
        };
        if origin == Origin::Local {
            let lease = LeaseId {
                node: &self.node,
                epoch: &self.epoch,
                session,
            };
            let _ = self.local.disconnect(ip, lease).await;
        }
        // Batched unless batching is off or its sender has stopped.
        if (origin == Origin::Limiter || maybe_remote)
            && !(self.releases.batching() && self.releases.push(session, ip))
        {
            self.disconnect_now(session, ip).await;
        }
    }

    /// Releases one session's lease at the limiter with its own call.
    async fn disconnect_now(&self, session: &str, ip: IpAddr) {
        let req = DisconnectRequest {
            node: self.node.clone(),
            session_id: session.to_string(),
            client_ip: ip.to_string(),
            epoch: self.epoch.clone(),
        };
        if let Err(why) = self
            .remote("Disconnect", |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.disconnect(r).await }
            })
            .await
        {
            // The lease expires by itself within its TTL.
            tracing::debug!(session, reason = %why, "lease not released; it will expire");
        }
    }

    /// Releases the waiting leases in batches every `release_every` (sooner when a
    /// batch is full), and what waits at `shutdown`.
    pub async fn releases(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        if self.releases.every().is_zero() {
            return;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.releases.every()) => {}
                _ = self.releases.full() => {}
            }
            let waiting = self.releases.take();
            self.release_batches(waiting).await;
        }
        // Sessions that end from now on are released by their own calls.
        let last = self.releases.close();
        self.release_batches(last).await;
    }

    /// One `Release` call per batch of what waits now.
    pub async fn release_pending(&self) {
        let waiting = self.releases.take();
        self.release_batches(waiting).await;
    }

    /// One `Release` call per batch; a batch the limiter did not take waits again,
    /// with those after it, for the next round.
    async fn release_batches(&self, waiting: Vec<Lease>) {
        let mut chunks = waiting.chunks(releases::MAX_BATCH);
        while let Some(batch) = chunks.next() {
            let req = ReleaseRequest {
                node: self.node.clone(),
                epoch: self.epoch.clone(),
                leases: batch.to_vec(),
            };
            // Off every SMTP session's path: it may take longer than a decision.
            match self
                .remote_within("Release", Duration::from_secs(2), false, |mut c, left| {
                    let r = timed(req.clone(), left);
                    async move { c.release(r).await }
                })
                .await
            {
                Ok(r) => {
                    self.stats.release_calls.fetch_add(1, Ordering::Relaxed);
                    self.stats.released.fetch_add(r.released, Ordering::Relaxed);
                }
                Err(Failure::Status(s)) if s.code() == Code::Unimplemented => {
                    tracing::warn!(
                        "the limiter has no Release call (older version): releasing each session by its own call"
                    );
                    self.releases.unsupported();
                    for l in batch {
                        if let Ok(ip) = l.client_ip.parse() {
                            self.disconnect_now(&l.session_id, ip).await;
                        }
                    }
                }
                Err(why) => {
                    tracing::debug!(leases = batch.len(), reason = %why, "leases not released yet; they wait for the next round");
                    let mut rest = batch.to_vec();
                    rest.extend(chunks.flatten().cloned());
                    self.releases.put_back(rest);
                    return;
                }
            }
        }
    }

    /// Bans and access refusals for the MTA's own access checks (socketmap). `None`:
    /// unknown now (fail-closed and the limiter is unreachable).
    pub async fn lookup(&self, ip: IpAddr, name: Option<&str>) -> Option<Verdict> {
        let req = LookupRequest {
            client_ip: ip.to_string(),
            client_name: name.unwrap_or_default().to_string(),
        };
        match self
            .remote("Lookup", |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.lookup(r).await }
            })
            .await
        {
            Ok(r) => {
                let v = r.verdict.unwrap_or_else(accept);
                decided("Lookup", &v, Origin::Limiter);
                Some(v)
            }
            Err(why) => {
                self.fell_back("Lookup", &why);
                match self.fail {
                    // The MTA is told "unknown, try later", which is no verdict.
                    FailMode::Closed => None,
                    FailMode::Open => {
                        let v = self
                            .local
                            .lookup(ip, name)
                            .await
                            .ok()
                            .and_then(|r| r.verdict)
                            .unwrap_or_else(accept);
                        decided("Lookup", &v, Origin::Local);
                        Some(v)
                    }
                }
            }
        }
    }

    /// Renews the leases of live sessions every third of the lease TTL, at the limiter
    /// and in the local fallback, until `shutdown`.
    pub async fn heartbeats(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut reported = 0;
        loop {
            let every =
                Duration::from_millis((self.lease_ttl_ms.load(Ordering::Relaxed) / 3).max(100));
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
            self.heartbeat_once().await;
            gauge!(m::LEASES_LIVE).set(self.sessions.len() as f64);
            // Every fallback is counted; the log gets one line per period that had any.
            let now = self.stats.fallbacks.load(Ordering::Relaxed);
            if now > reported {
                tracing::warn!(
                    fallbacks = now - reported,
                    total = now,
                    "decided without the limiter since the last report"
                );
                reported = now;
            }
        }
    }

    /// One heartbeat. The first one also tells the limiter this process's epoch, which
    /// frees the leases a previous run of this node left behind.
    pub async fn heartbeat_once(&self) {
        let leases: Vec<Lease> = self
            .sessions
            .held_by(Origin::Limiter)
            .into_iter()
            .map(|(s, ip)| Lease {
                session_id: s,
                client_ip: ip.to_string(),
            })
            .collect();
        let req = HeartbeatRequest {
            node: self.node.clone(),
            epoch: self.epoch.clone(),
            leases,
            ..Default::default()
        };
        // Not on any SMTP session's path: it may take longer than a decision.
        match self
            .remote_within("Heartbeat", Duration::from_secs(2), false, |mut c, left| {
                let r = timed(req.clone(), left);
                async move { c.heartbeat(r).await }
            })
            .await
        {
            Ok(r) if r.lease_ttl_ms > 0 => {
                self.lease_ttl_ms.store(r.lease_ttl_ms, Ordering::Relaxed)
            }
            Ok(_) => {}
            Err(why) => tracing::debug!(reason = %why, "heartbeat failed"),
        }
        let local: Vec<(String, IpAddr)> = self.sessions.held_by(Origin::Local);
        if !local.is_empty() {
            let hb = decision::Heartbeat {
                node: &self.node,
                epoch: &self.epoch,
                leases: local.iter().map(|(s, ip)| (s.as_str(), *ip)).collect(),
                bare: Vec::new(),
            };
            let _ = self.local.heartbeat(&hb).await;
        }
    }
}

fn timed<T>(msg: T, left: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    // The limiter stops working on a call nobody waits for any more.
    r.set_timeout(left);
    // The limiter's span joins this call's trace.
    telemetry::inject(r.metadata_mut());
    r
}

/// The gRPC method of an RPC, as spans name it.
fn rpc_path(rpc: &'static str) -> &'static str {
    match rpc {
        "Connect" => "mxlimit.v1.Limiter/Connect",
        "Recipient" => "mxlimit.v1.Limiter/Recipient",
        "Disconnect" => "mxlimit.v1.Limiter/Disconnect",
        "Heartbeat" => "mxlimit.v1.Limiter/Heartbeat",
        "Lookup" => "mxlimit.v1.Limiter/Lookup",
        "Release" => "mxlimit.v1.Limiter/Release",
        other => other,
    }
}

fn accept() -> Verdict {
    verdict::accept("")
}

/// Counts a verdict the agent enforces. A fail-closed refusal has the agent's own
/// reason; every other reason is one of the limiter's (or `other`).
fn decided(rpc: &'static str, v: &Verdict, origin: Origin) {
    let reason = match origin {
        Origin::Closed => verdict::reason::LIMITER_UNAVAILABLE,
        _ => reason_label(&v.reason),
    };
    counter!(
        m::DECISIONS,
        "rpc" => rpc,
        "action" => action_label(v.action()),
        "reason" => reason,
        "shadow" => if v.shadow { "true" } else { "false" },
        "origin" => origin.as_str(),
    )
    .increment(1);
}

fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}
