//! The agent's Prometheus metrics (listed in docs/OPERATIONS.md); served by
//! `--metrics-listen` through the limiter crate's exporter set-up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};

/// Limiter calls by `rpc` and `result` (`ok`, `timeout`, `unavailable`,
/// `invalid_argument`, `error`, `skipped` while the breaker is open).
pub const CALLS: &str = "mxagent_limiter_calls_total";
/// Time of calls that went out, by `rpc`.
pub const CALL_SECONDS: &str = "mxagent_limiter_call_duration_seconds";
/// Verdicts the agent enforced, by `rpc`, `action`, `reason`, `shadow` and `origin`
/// (`limiter`, `local` fallback limits, `closed` when failing closed).
pub const DECISIONS: &str = "mxagent_decisions_total";
/// Decisions made without the limiter, by `rpc` and `mode` (`local`, `tempfail`).
pub const FALLBACKS: &str = "mxagent_fallbacks_total";
/// Connects refused by this agent from a refusal the limiter said holds, without a call.
pub const HELD_REFUSALS: &str = "mxagent_held_refusals_total";
/// Sessions of this host holding a lease, sampled at every heartbeat.
pub const LEASES_LIVE: &str = "mxagent_leases_live";
/// Sessions the limiter could not decide, by `adapter` (`milter`, `policy`,
/// `socketmap`) and `cause` (see [`Undecided`]).
pub const UNDECIDED: &str = "mxagent_undecided_sessions_total";

/// Log lines read, by `result` (`matched`, `skipped`, `too_long`).
pub const LOG_LINES: &str = "mxagent_log_lines_total";
/// Events found in the logs, by `kind` (`unknown_recipient`, `pregreet`,
/// `protocol_error`, `auth_failure`).
pub const LOG_EVENTS: &str = "mxagent_log_events_total";
/// Log events not sent to the limiter, by `reason`: `queue_full` (the limiter slower
/// than the log), `unpaired` (a sendmail recipient whose client never came),
/// `counted_already` (the milter, or another log file, reported the same refusal).
pub const LOG_DROPPED: &str = "mxagent_log_events_dropped_total";

/// Why the limiter did not decide a session (or a connection of the MTA's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Undecided {
    /// The MTA gave no client address the agent can read (an unknown family, a text
    /// that is no address, a local socket): decided by the fallback mode instead.
    NoClientAddress,
    /// The MTA's connection broke the protocol (garbage, a truncated packet): the
    /// rest of its session went undecided.
    ProtocolError,
    /// The MTA's connection failed mid-session (reset, timeout, or closed without a
    /// word, as a port probe does): counted, logged at debug only.
    IoError,
    /// Every slot (`max_sessions`) was taken: the connection was closed at once and
    /// the MTA's own default for a missing milter or service applied.
    SlotsFull,
}

impl Undecided {
    pub fn as_str(self) -> &'static str {
        match self {
            Undecided::NoClientAddress => "no_client_address",
            Undecided::ProtocolError => "protocol_error",
            Undecided::IoError => "io_error",
            Undecided::SlotsFull => "slots_full",
        }
    }
}

/// Counts a session the limiter did not decide and warns about it: the first time
/// for each adapter and cause, then at most every 10 s with the count in between, so
/// that a flood of them is one line per period.
pub fn undecided(adapter: &'static str, cause: Undecided, detail: &dyn std::fmt::Display) {
    counter!(UNDECIDED, "adapter" => adapter, "cause" => cause.as_str()).increment(1);
    if cause == Undecided::IoError {
        tracing::debug!(adapter, cause = cause.as_str(), "{detail}");
        return;
    }
    // (adapter, cause, last warned, count since); a handful of entries at most.
    type Last = Vec<(&'static str, Undecided, Option<Instant>, u64)>;
    static LAST: Mutex<Last> = Mutex::new(Vec::new());
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let entry = match last.iter().position(|e| e.0 == adapter && e.1 == cause) {
        Some(i) => &mut last[i],
        None => {
            last.push((adapter, cause, None, 0));
            last.last_mut().expect("just pushed")
        }
    };
    entry.3 += 1;
    if entry
        .2
        .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
    {
        let since = entry.3;
        entry.2 = Some(now);
        entry.3 = 0;
        drop(last);
        tracing::warn!(
            adapter,
            cause = cause.as_str(),
            sessions = since,
            "{detail}"
        );
    }
}

const WARN_EVERY: Duration = Duration::from_secs(10);

/// Warns `what` the first time for `key`, then at most every 10 s with the count in
/// between: a flood is one line per period.
pub fn warn_every(key: &'static str, what: &dyn std::fmt::Display) {
    type Last = Vec<(&'static str, Instant, u64)>;
    static LAST: Mutex<Last> = Mutex::new(Vec::new());
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match last.iter_mut().find(|e| e.0 == key) {
        Some(e) if now.duration_since(e.1) < WARN_EVERY => e.2 += 1,
        Some(e) => {
            let since = e.2 + 1;
            (e.1, e.2) = (now, 0);
            drop(last);
            tracing::warn!(times = since, "{what}");
        }
        None => {
            last.push((key, now, 0));
            drop(last);
            tracing::warn!(times = 1, "{what}");
        }
    }
}

pub fn describe() {
    describe_counter!(CALLS, "Limiter calls, by rpc and result.");
    describe_counter!(
        DECISIONS,
        "Verdicts enforced, by rpc, action, reason, shadow and origin."
    );
    describe_histogram!(
        CALL_SECONDS,
        Unit::Seconds,
        "Time of limiter calls that went out, by rpc."
    );
    describe_counter!(
        FALLBACKS,
        "Decisions made without the limiter, by rpc and mode."
    );
    describe_counter!(
        UNDECIDED,
        "Sessions the limiter could not decide, by adapter and cause."
    );
    describe_counter!(LOG_LINES, "Log lines read, by result.");
    describe_counter!(LOG_EVENTS, "Events found in the MTA's logs, by kind.");
    describe_counter!(
        LOG_DROPPED,
        "Log events not sent to the limiter, by reason."
    );
    describe_gauge!(
        LEASES_LIVE,
        "Sessions of this host holding a lease (sampled at each heartbeat)."
    );
}
