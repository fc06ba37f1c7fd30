//! Prometheus metrics of the decision path and the stores: the names (each listed in
//! docs/OPERATIONS.md) and the scrape endpoint. Verdicts' labels are
//! `decision::verdict::{action_label, reason_label}`. Without `--metrics-listen` no recorder is installed and recording costs
//! next to nothing.

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_histogram};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// One store operation (one round trip on Redis), by `op`.
pub const STORE_SECONDS: &str = "mxlimit_store_duration_seconds";
/// Store operations that failed, by `op`.
pub const STORE_ERRORS: &str = "mxlimit_store_errors_total";
/// Leases (concurrent sessions) taken; Disconnects answered (a Disconnect of a session
/// that held no lease counts too); leases freed because their node restarted. The
/// agents' `mxagent_leases_live` is the exact count of live sessions.
pub const LEASES_TAKEN: &str = "mxlimit_leases_taken_total";
pub const LEASES_RELEASED: &str = "mxlimit_leases_released_total";
pub const LEASES_FREED: &str = "mxlimit_leases_freed_total";
/// Rule reloads by `result` (`ok`, `error`).
pub const RULE_RELOADS: &str = "mxlimit_rule_reloads_total";
/// Offences reported (the `Offence` call), by `kind` and `result`: `counted`,
/// `banned` (this one set a ban), `banned_before` (a ban was in force: not counted),
/// `exempt` (an OK or RELAY rule), `off` (the kind's thresholds are 0), `blocked`.
pub const OFFENCES: &str = "mxlimit_offences_total";
/// Connects refused from a hold (a ban's or ClientRate's refusal that still holds),
/// with no store round trip.
pub const HELD_REFUSALS: &str = "mxlimit_held_refusals_total";
/// Bare session ids in heartbeats that the node's session index did not know (sessions
/// admitted with an epoch, whose caller should send `leases`; or ended ones).
pub const HEARTBEAT_UNKNOWN_SESSIONS: &str = "mxlimit_heartbeat_unknown_sessions_total";
/// Refusal log lines not written because the log budget was spent (50 a second).
pub const REFUSAL_LOGS_SUPPRESSED: &str = "mxlimit_refusal_logs_suppressed_total";
/// Events not counted in the top lists because too many distinct sources came in one
/// flush interval.
pub const TALLY_DROPPED: &str = "mxlimit_tally_dropped_total";

/// Latency buckets, 100 µs to 2.5 s: decisions take a fraction of a millisecond, and
/// agents give up after their deadline (50 ms by default).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the global recorder and serves it over HTTP on `addr` (any path), from the
/// current tokio runtime. Histograms named `*_seconds` get [`LATENCY_BUCKETS`].
pub fn serve(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .install()
}

/// Descriptions (HELP lines) of the metrics the decision path and the stores record.
pub fn describe() {
    describe_histogram!(
        STORE_SECONDS,
        Unit::Seconds,
        "One store operation (one round trip to the store), by op."
    );
    describe_counter!(STORE_ERRORS, "Store operations that failed, by op.");
    describe_counter!(
        LEASES_TAKEN,
        "Session leases taken by admitted connections."
    );
    describe_counter!(
        LEASES_RELEASED,
        "Disconnects answered (each releases its lease, if any)."
    );
    describe_counter!(
        LEASES_FREED,
        "Session leases freed because their node restarted."
    );
    describe_counter!(RULE_RELOADS, "Rule reloads, by result (ok, error).");
    describe_counter!(
        OFFENCES,
        "Offences reported, by kind and result (counted, banned, banned_before, exempt, off, blocked)."
    );
    describe_counter!(
        TALLY_DROPPED,
        "Events left out of the top lists: too many distinct sources in one second."
    );
}
