//! `loadtest bench`: drives the Limiter API as many MX nodes with many sessions
//! (Connect, k × Recipient, Disconnect), closed loop at full speed or open loop at a set
//! rate, and reports decisions per second, latency percentiles and errors. With `--rls`
//! it drives an Envoy rate limit service the same way, one `ShouldRateLimit` a session
//! ([`rls`]), so that a peer is measured with the same clients and addresses.
//!
//! Open-loop latency is measured from each session's intended start, so a stall that
//! delays the sessions behind it shows in their latency (no coordinated omission).

pub mod ceiling;
pub mod compare;
pub mod heartbeat;
pub mod jitter;
pub mod rls;
pub mod sweep;
pub mod target;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{
    Action, ConnectRequest, DisconnectRequest, Lease, RecipientRequest, ReleaseRequest,
};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use tonic::transport::Channel;

use rls::proto::rate_limit_service_client::RateLimitServiceClient;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Simulated MX nodes (node names).
    pub nodes: usize,
    /// Closed loop: sessions in flight. Ignored when `rate` is set.
    pub concurrency: usize,
    /// Open loop: sessions started per second.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Recipients per session, and the share of them that are unknown users.
    pub rcpts: u32,
    pub bad_share: f64,
    /// Source addresses spread over this many /24 networks.
    pub networks: u32,
    pub progress: bool,
    /// What is driven: mxlimit's Limiter, or an Envoy rate limit service.
    pub api: Api,
    /// mxlimit: release ended sessions' leases in batches this often, one `Release`
    /// call per node, as mx-agent does; None: a `Disconnect` per session.
    pub release_every: Option<Duration>,
}

/// The API a bench drives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Api {
    /// mxlimit's Limiter: a session is Connect, `rcpts` × Recipient, Disconnect (or
    /// its lease queued for a batched `Release`); a refused session ends at Connect,
    /// as an MTA ends it.
    #[default]
    Mxlimit,
    /// Envoy's rate limit service: a session is one `ShouldRateLimit` in `domain`, one
    /// decision and one admission ([`rls`]).
    Rls { domain: String },
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `mxlimit` or `rls`.
    pub api: &'static str,
    pub mode: String,
    /// Open loop: the sessions per second asked for.
    pub offered_per_s: Option<f64>,
    pub seconds: f64,
    /// Sessions whose every call was answered. With 0 recipients (Connect, Disconnect)
    /// and with `--rls` (one ShouldRateLimit), one session is one admission.
    pub sessions: u64,
    /// Answered calls (Connect, Recipient, Disconnect; or ShouldRateLimit).
    pub decisions: u64,
    pub sessions_per_s: f64,
    pub decisions_per_s: f64,
    /// Per RPC, and for a whole session (from its intended start in open loop). An RLS
    /// session is its one call: `should_rate_limit`, and no `session`.
    pub latency: BTreeMap<String, Latency>,
    /// Connect verdicts by reason ("ok", "client_rate", ...): a run that is mostly
    /// refusals measures a cheaper path than one that is mostly admissions. With
    /// `--rls`, ShouldRateLimit's overall codes ("ok", "over_limit", "unknown").
    pub connect_verdicts: BTreeMap<String, u64>,
    /// Failed calls by gRPC status code.
    /// Batched `Release` calls answered (with --release-every): not decisions.
    pub release_calls: u64,
    pub errors: BTreeMap<String, u64>,
    /// Sessions and decisions that ended in each whole second of the run's duration, to
    /// show throughput over time. A partial last second, and what ended after the
    /// duration (open loop's stragglers), are in the totals only.
    pub timeline: Vec<Second>,
}

/// One second of a run's [`BenchReport::timeline`].
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start: this covers `second` to `second + 1`.
    pub second: u64,
    pub sessions: u64,
    pub decisions: u64,
}

/// The embedded limiter's policy: every limit on and none reached, so that each
/// decision does all its work and is admitted (see the file).
pub const POLICY: &str = include_str!("../../bench-policy.toml");

/// Open-loop sessions in flight at most.
const SLOTS: u32 = 20_000;

/// How early the open-loop pacer may send a session rather than sleep until it is due.
const EARLY: Duration = Duration::from_micros(50);

/// Histograms: per RPC, per session, and (open loop) how late the generator itself
/// started sessions, so that its own stalls are not blamed on the limiter.
const RPCS: [&str; 7] = [
    "connect",
    "recipient",
    "disconnect",
    "session",
    "start lag",
    "should_rate_limit",
    "release",
];
const CONNECT: usize = 0;
const RECIPIENT: usize = 1;
const DISCONNECT: usize = 2;
const SESSION: usize = 3;
const LAG: usize = 4;
const SHOULD_RATE_LIMIT: usize = 5;
const RELEASE: usize = 6;

struct Shared {
    hists: Mutex<Vec<Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// A std mutex: held for one map update, never across an await.
    verdicts: std::sync::Mutex<BTreeMap<String, u64>>,
    decisions: AtomicU64,
    sessions: AtomicU64,
    start: Instant,
    /// Per whole second of the duration: (sessions, decisions) that ended in it.
    timeline: Box<[(AtomicU64, AtomicU64)]>,
    /// Per node, the leases of ended sessions waiting for their batched `Release`.
    pending: std::sync::Mutex<Vec<Vec<Lease>>>,
    release_calls: AtomicU64,
}

impl Shared {
    /// Counts a session that ended now, with its answered calls; `complete`: every one
    /// of its calls was answered.
    fn ended(&self, decided: u64, complete: bool) {
        self.decisions.fetch_add(decided, Ordering::Relaxed);
        self.sessions
            .fetch_add(u64::from(complete), Ordering::Relaxed);
        if let Some((s, d)) = self.timeline.get(self.start.elapsed().as_secs() as usize) {
            s.fetch_add(u64::from(complete), Ordering::Relaxed);
            d.fetch_add(decided, Ordering::Relaxed);
        }
    }

    fn verdict(&self, name: String) {
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(name).or_default() += 1;
    }
}

/// The clients of one run, one per simulated node (for RLS: per simulated Envoy).
#[derive(Clone)]
enum Clients {
    Limiter(Arc<[LimiterClient<Channel>]>),
    Rls(Arc<[RateLimitServiceClient<Channel>]>, Arc<str>),
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Runs the load against a limiter: `nodes` holds one connection per simulated MX node
/// (as each agent has its own), and a session goes over its node's connection.
pub async fn run(nodes: &[Channel], o: &BenchOptions) -> BenchReport {
    assert!(!nodes.is_empty(), "at least one node connection");
    let start = Instant::now();
    let shared = Arc::new(Shared {
        hists: Mutex::new(RPCS.iter().map(|_| hist()).collect()),
        errors: Mutex::default(),
        verdicts: std::sync::Mutex::default(),
        decisions: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        start,
        timeline: (0..o.duration.as_secs())
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect(),
        pending: std::sync::Mutex::new(vec![Vec::new(); nodes.len()]),
        release_calls: AtomicU64::new(0),
    });
    let bar = progress(o.progress, shared.clone());
    let deadline = start + o.duration;
    let clients = match &o.api {
        Api::Mxlimit => Clients::Limiter(nodes.iter().cloned().map(LimiterClient::new).collect()),
        Api::Rls { domain } => Clients::Rls(
            nodes
                .iter()
                .cloned()
                .map(RateLimitServiceClient::new)
                .collect(),
            domain.as_str().into(),
        ),
    };
    let (stop_releases, stopped) = tokio::sync::watch::channel(false);
    let releaser = match (&clients, o.release_every) {
        (Clients::Limiter(c), Some(every)) => Some(tokio::spawn(releases(
            c.clone(),
            shared.clone(),
            every,
            stopped,
        ))),
        _ => None,
    };
    match o.rate {
        None => closed_loop(&clients, &shared, o, deadline).await,
        Some(rate) => open_loop(&clients, &shared, o, start, rate).await,
    }
    let _ = stop_releases.send(true);
    if let Some(r) = releaser {
        let _ = r.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let connect_verdicts = shared
        .verdicts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let h = shared.hists.lock().await;
    let decisions = shared.decisions.load(Ordering::Relaxed);
    let sessions = shared.sessions.load(Ordering::Relaxed);
    let (api, what) = match o.api {
        Api::Mxlimit => ("mxlimit", ""),
        Api::Rls { .. } => ("rls", "Envoy RLS, "),
    };
    BenchReport {
        api,
        offered_per_s: o.rate,
        mode: match o.rate {
            Some(r) => format!("{what}open loop, {r:.0} sessions/s"),
            None => format!("{what}closed loop, {} in flight", o.concurrency),
        },
        seconds,
        sessions,
        decisions,
        sessions_per_s: sessions as f64 / seconds,
        decisions_per_s: decisions as f64 / seconds,
        latency: RPCS
            .iter()
            .zip(h.iter())
            .filter(|(_, h)| !h.is_empty())
            .map(|(k, h)| (k.to_string(), Latency::of(h)))
            .collect(),
        connect_verdicts,
        release_calls: shared.release_calls.load(Ordering::Relaxed),
        errors: shared.errors.lock().await.clone(),
        timeline: shared
            .timeline
            .iter()
            .enumerate()
            .map(|(i, (s, d))| Second {
                second: i as u64,
                sessions: s.load(Ordering::Relaxed),
                decisions: d.load(Ordering::Relaxed),
            })
            .collect(),
    }
}

/// `concurrency` workers, each starting its next session when the last one ends.
async fn closed_loop(clients: &Clients, shared: &Arc<Shared>, o: &BenchOptions, deadline: Instant) {
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        let (clients, shared, o) = (clients.clone(), shared.clone(), o.clone());
        workers.push(tokio::spawn(async move {
            let mut local: Vec<Histogram<u64>> = RPCS.iter().map(|_| hist()).collect();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let id = (w as u64) << 40 | n;
                let t = Instant::now();
                let mut took = Took::default();
                session(&clients, &o, id, t, &mut took, &shared).await;
                took.into(&mut local);
                n += 1;
            }
            let mut h = shared.hists.lock().await;
            for (a, b) in h.iter_mut().zip(local) {
                let _ = a.add(b);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Sessions started at `rate` per second whether or not earlier ones have ended.
async fn open_loop(
    clients: &Clients,
    shared: &Arc<Shared>,
    o: &BenchOptions,
    start: Instant,
    rate: f64,
) {
    // The pacing runs on its own thread with sub-millisecond sleeps: the runtime's
    // timer ticks in whole milliseconds and would send sessions in bursts.
    let total = (rate * o.duration.as_secs_f64()).round() as u64;
    // Bounded: a limiter that stops answering must not exhaust memory. The pacer
    // takes a slot before it spawns a session, so at most SLOTS sessions exist;
    // one that waits for a slot still counts its latency from its intended start.
    let slots = Arc::new(Semaphore::new(SLOTS as usize));
    let handle = tokio::runtime::Handle::current();
    let (o2, clients2, shared2, slots2) =
        (o.clone(), clients.clone(), shared.clone(), slots.clone());
    let pacer = std::thread::spawn(move || {
        for n in 0..total {
            let intended = start + Duration::from_secs_f64(n as f64 / rate);
            // Sleeping costs a system call and a wakeup: a session due within
            // EARLY goes now, with its latency counted from when it was sent.
            let now = Instant::now();
            if intended > now + EARLY {
                std::thread::sleep(intended - now);
            }
            let Ok(slot) = handle.block_on(slots2.clone().acquire_owned()) else {
                return;
            };
            let (clients, shared, o) = (clients2.clone(), shared2.clone(), o2.clone());
            handle.spawn(async move {
                let mut took = Took::default();
                record(
                    &mut took,
                    LAG,
                    Instant::now().saturating_duration_since(intended),
                );
                session(&clients, &o, n, intended, &mut took, &shared).await;
                // A histogram is tens of kilobytes: sessions record into the shared
                // ones (one short lock per session), never into their own. The
                // slot goes last: a free slot means a recorded session.
                took.into(&mut shared.hists.lock().await);
                drop(slot);
            });
        }
    });
    let paced = tokio::task::spawn_blocking(move || pacer.join()).await;
    if !matches!(paced, Ok(Ok(()))) {
        tracing::error!("the open-loop pacer failed; the report covers what it sent");
    }
    // Every session holds a slot until it has recorded: all slots free = all done.
    let _ = slots.acquire_many(SLOTS).await;
}

/// The `n`-th session's source: spread over `networks` /24s of 10.0.0.0/8.
fn source(n: u64, networks: u32) -> IpAddr {
    let net = (n % u64::from(networks.max(1))) as u32;
    let host = 1 + ((n / u64::from(networks.max(1))) % 250) as u32;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (net << 8) | host))
}

/// The latencies of one session, in microseconds, before they go into histograms.
#[derive(Default)]
struct Took {
    values: Vec<(usize, u64)>,
}

impl Took {
    fn into(self, h: &mut [Histogram<u64>]) {
        for (i, v) in self.values {
            let _ = h[i].record(v.max(1));
        }
    }
}

/// One session over the clients' API.
async fn session(
    clients: &Clients,
    o: &BenchOptions,
    id: u64,
    intended: Instant,
    h: &mut Took,
    shared: &Shared,
) {
    match clients {
        Clients::Limiter(c) => limiter_session(c, o, id, intended, h, shared).await,
        Clients::Rls(c, domain) => rls_admission(c, domain, o, id, intended, h, shared).await,
    }
}

/// One ShouldRateLimit for the `id`-th source, as an Envoy in front of a mail server
/// would ask before it admits a connection.
async fn rls_admission(
    clients: &[RateLimitServiceClient<Channel>],
    domain: &str,
    o: &BenchOptions,
    id: u64,
    intended: Instant,
    h: &mut Took,
    shared: &Shared,
) {
    let mut c = clients[(id % clients.len() as u64) as usize].clone();
    let request = rls::request(domain, source(id, o.networks));
    let t = Instant::now();
    let r = c.should_rate_limit(request).await;
    match r {
        Ok(reply) => {
            // From its intended start in open loop, as mxlimit's Connect.
            record(h, SHOULD_RATE_LIMIT, intended.min(t).elapsed());
            shared.verdict(rls::code_name(reply.into_inner().overall_code));
            shared.ended(1, true);
        }
        Err(e) => {
            error(shared, &e).await;
            shared.ended(0, false);
        }
    }
}

// Long on purpose: one session's calls in the order an agent makes them (Connect,
// the RCPTs, Disconnect), each timed where it is made.
async fn limiter_session(
    clients: &[LimiterClient<Channel>],
    o: &BenchOptions,
    id: u64,
    intended: Instant,
    h: &mut Took,
    shared: &Shared,
) {
    let n = (id % clients.len() as u64) as usize;
    let mut c = clients[n].clone();
    let node = format!("mx{}", 1 + n);
    let session_id = format!("{id:x}");
    let ip = source(id, o.networks).to_string();
    // Only answered calls count, as decisions and in the latency histograms: a limiter
    // that fails fast must not look fast. Failures count by gRPC status.
    let mut decided = 0;
    let mut failed = false;
    let t = Instant::now();
    let r = c
        .connect(ConnectRequest {
            node: node.clone(),
            session_id: session_id.clone(),
            client_ip: ip.clone(),
            epoch: "bench".into(),
            ..Default::default()
        })
        .await;
    // The first call of an open-loop session counts from its intended start.
    let start = intended.min(t);
    match r {
        Ok(reply) => {
            record(h, CONNECT, start.elapsed());
            decided += 1;
            let v = reply.into_inner().verdict.unwrap_or_default();
            let admitted = matches!(
                v.action(),
                Action::Accept | Action::Delay | Action::Unspecified
            );
            let reason = Some(v.reason)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "accept".into());
            shared.verdict(reason);
            // Refused: the MTA ends the session; no lease is held, nothing to release.
            if !admitted {
                record(h, SESSION, start.elapsed());
                shared.ended(decided, true);
                return;
            }
        }
        Err(e) => {
            error(shared, &e).await;
            shared.ended(0, false);
            return;
        }
    }
    let bad = (f64::from(o.rcpts) * o.bad_share).round() as u32;
    for i in 0..o.rcpts {
        let t = Instant::now();
        let r = c
            .recipient(RecipientRequest {
                node: node.clone(),
                session_id: session_id.clone(),
                client_ip: ip.clone(),
                recipient: format!("r{i}@mx.test"),
                rejected: i < bad,
                envelope_rcpts: i + 1,
                envelope_bad_rcpts: (i + 1).min(bad),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {
                record(h, RECIPIENT, t.elapsed());
                decided += 1;
            }
            Err(e) => {
                failed = true;
                error(shared, &e).await;
            }
        }
    }
    if o.release_every.is_some() {
        // As mx-agent: the lease waits for its node's next batch, off the session.
        shared.pending.lock().unwrap_or_else(|p| p.into_inner())[n].push(Lease {
            session_id,
            client_ip: ip,
        });
        if !failed {
            record(h, SESSION, start.elapsed());
        }
        shared.ended(decided, !failed);
        return;
    }
    let t = Instant::now();
    let r = c
        .disconnect(DisconnectRequest {
            node,
            session_id,
            client_ip: ip,
            epoch: "bench".into(),
        })
        .await;
    match r {
        Ok(_) => {
            record(h, DISCONNECT, t.elapsed());
            decided += 1;
        }
        Err(e) => {
            failed = true;
            error(shared, &e).await;
        }
    }
    if !failed {
        record(h, SESSION, start.elapsed());
    }
    shared.ended(decided, !failed);
}

/// Sends each node's waiting leases in one `Release` every `every`, and what waits
/// when the run ends.
async fn releases(
    clients: Arc<[LimiterClient<Channel>]>,
    shared: Arc<Shared>,
    every: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut local = hist();
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stopped.wait_for(|s| *s) => true,
        };
        let batches = std::mem::replace(
            &mut *shared.pending.lock().unwrap_or_else(|p| p.into_inner()),
            vec![Vec::new(); clients.len()],
        );
        let calls = batches
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(n, leases)| {
                let mut c = clients[n].clone();
                async move {
                    let t = Instant::now();
                    let r = c
                        .release(ReleaseRequest {
                            node: format!("mx{}", 1 + n),
                            epoch: "bench".into(),
                            leases,
                        })
                        .await;
                    (t.elapsed(), r)
                }
            });
        for (took, r) in futures_util::future::join_all(calls).await {
            match r {
                Ok(_) => {
                    let _ = local.record((took.as_micros() as u64).max(1));
                    shared.release_calls.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => error(&shared, &e).await,
            }
        }
        if last {
            break;
        }
    }
    let _ = shared.hists.lock().await[RELEASE].add(local);
}

fn record(h: &mut Took, i: usize, d: Duration) {
    h.values.push((i, d.as_micros() as u64));
}

async fn error(shared: &Shared, e: &tonic::Status) {
    *shared
        .errors
        .lock()
        .await
        .entry(format!("{:?}", e.code()))
        .or_default() += 1;
}

/// A live line with the current rate, on a terminal.
fn progress(on: bool, shared: Arc<Shared>) -> Option<ProgressBar> {
    if !on || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
    );
    let b = bar.clone();
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !b.is_finished() {
            tick.tick().await;
            let now = shared.decisions.load(Ordering::Relaxed);
            b.set_message(format!("{now} decisions, {} /s now", (now - last) * 2));
            last = now;
            b.tick();
        }
    });
    Some(bar)
}

impl BenchReport {
    /// The p99 of the slower of Connect and Disconnect (or of ShouldRateLimit), in
    /// microseconds.
    pub fn decision_p99_us(&self) -> u64 {
        ["connect", "disconnect", "should_rate_limit"]
            .iter()
            .filter_map(|k| self.latency.get(*k))
            .map(|l| l.p99_us)
            .max()
            .unwrap_or(0)
    }

    /// The latency of a session's first call (Connect, or ShouldRateLimit).
    pub fn first_call(&self) -> Option<&Latency> {
        self.latency
            .get("connect")
            .or_else(|| self.latency.get("should_rate_limit"))
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {} sessions, {} decisions in {:.1} s: {:.0} sessions/s, {:.0} decisions/s\n",
            self.mode,
            self.sessions,
            self.decisions,
            self.seconds,
            self.sessions_per_s,
            self.decisions_per_s
        );
        if self.api == "rls" {
            s.push_str(
                "(one ShouldRateLimit per session: a session is one decision and one admission)\n",
            );
        }
        s.push_str(&format!(
            "{:<17} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "latency µs", "count", "p50", "p90", "p99", "p99.9", "max"
        ));
        for (k, l) in &self.latency {
            s.push_str(&format!(
                "{:<17} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                k, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            ));
        }
        let verdicts = match self.api {
            "rls" => "ShouldRateLimit codes",
            _ => "connect verdicts",
        };
        s.push_str(&format!("{verdicts}: {:?}\n", self.connect_verdicts));
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str(&format!("errors: {:?}\n", self.errors));
        }
        if !self.timeline.is_empty() {
            let each: Vec<String> = self
                .timeline
                .iter()
                .map(|t| t.decisions.to_string())
                .collect();
            s.push_str(&format!("decisions in each second: {}\n", each.join(" ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_networks() {
        assert_eq!(source(0, 4), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(source(1, 4), "10.0.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(source(4, 4), "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
