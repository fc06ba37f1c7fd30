//! The agent's Prometheus metrics (listed in docs/OPERATIONS.md); served by
//! `--metrics-listen` through the limiter crate's exporter set-up.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

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
/// Sessions of this host holding a lease, sampled at every heartbeat.
pub const LEASES_LIVE: &str = "mxagent_leases_live";

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
    describe_gauge!(
        LEASES_LIVE,
        "Sessions of this host holding a lease (sampled at each heartbeat)."
    );
}
