//! The limiter server's own metrics (each listed in docs/OPERATIONS.md): calls,
//! verdicts, the ledger, TLS and Admin. The decision path's and the stores' are
//! `mxlimit_core::metrics`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Verdicts by `rpc`, `action`, `reason` and `shadow`.
pub const DECISIONS: &str = "mxlimit_decisions_total";
/// Time to answer one call, by `rpc`.
pub const REQUEST_SECONDS: &str = "mxlimit_request_duration_seconds";
/// Calls answered with an error, by `rpc` and gRPC `code`.
pub const REQUEST_ERRORS: &str = "mxlimit_request_errors_total";
/// TLS certificate reloads by `result`.
pub const TLS_RELOADS: &str = "mxlimit_tls_reloads_total";
/// Operator blocks and automatic bans in force, cluster-wide, by `kind` (`block`, `ban`).
pub const BANS_IN_FORCE: &str = "mxlimit_bans_in_force";
/// Leases held by live sessions, cluster-wide, as of each node's last heartbeat.
pub const LEASES_LIVE: &str = "mxlimit_leases_live";
/// Ledger flushes (top lists, ban index, live leases) by `result`.
pub const LEDGER_FLUSHES: &str = "mxlimit_ledger_flushes_total";
/// Admin calls by `rpc` and `result` (`ok`, `unauthenticated`, `error`).
pub const ADMIN_CALLS: &str = "mxlimit_admin_calls_total";
/// 1, with the `version` and the `store` kind as labels.
pub const BUILD_INFO: &str = "mxlimit_build_info";

/// The limiter's descriptions (HELP lines), the core's included.
pub fn describe() {
    mxlimit_core::metrics::describe();
    describe_counter!(
        DECISIONS,
        "Verdicts given, by rpc, action, reason and shadow."
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer one call, by rpc."
    );
    describe_counter!(
        REQUEST_ERRORS,
        "Calls answered with an error, by rpc and gRPC code."
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads, by result (ok, error)."
    );
    describe_gauge!(
        BANS_IN_FORCE,
        "Operator blocks and automatic bans in force, cluster-wide, by kind (block, ban)."
    );
    describe_gauge!(
        LEASES_LIVE,
        "Leases of live sessions, cluster-wide, as of each node's last heartbeat."
    );
    describe_counter!(
        LEDGER_FLUSHES,
        "Flushes of top-list counts and bans to the store, by result (ok, error)."
    );
    describe_counter!(ADMIN_CALLS, "Admin calls, by rpc and result.");
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version and the store kind."
    );
}
