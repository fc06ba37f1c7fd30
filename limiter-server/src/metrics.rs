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
/// What the store holds, by `unit` (`bytes` on Redis: `used_memory`, summed over a
/// cluster's nodes; `entries` in memory).
pub const STORE_HELD: &str = "mxlimit_store_held";
/// The bound on it, by `unit` (Redis `maxmemory`, `--memory-max-entries`); 0: none.
pub const STORE_LIMIT: &str = "mxlimit_store_limit";
/// Dropped to stay within the bound (Redis `evicted_keys`; networks in memory).
pub const STORE_EVICTED: &str = "mxlimit_store_evicted_total";
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
        STORE_HELD,
        "What the store holds, by unit (bytes on Redis, entries in memory)."
    );
    describe_gauge!(
        STORE_LIMIT,
        "The store's bound, by unit (Redis maxmemory, --memory-max-entries); 0: none."
    );
    describe_counter!(
        STORE_EVICTED,
        "State the store dropped to stay within its bound (Redis evicted keys; networks in memory)."
    );
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version and the store kind."
    );
}
