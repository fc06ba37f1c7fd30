//! Operating the limiter cluster: the `Admin` gRPC service, its authentication, and
//! the ledger keeper that carries each instance's counts to the shared ledger and
//! brings every instance's blocks back.

pub mod auth;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};

use crate::metrics::{BANS_IN_FORCE, LEASES_LIVE, LEDGER_FLUSHES};
use mxlimit_core::decision::Engine;
use mxlimit_core::store::Store;
use mxlimit_core::store::ledger::Ledger;

/// How the ledger keeper runs.
#[derive(Debug, Clone, Copy)]
pub struct KeeperOptions {
    /// Flush and refresh period: how soon a block made on another instance bites here.
    pub every: Duration,
    /// Entries kept per top-list bucket.
    pub keep: u32,
}

impl Default for KeeperOptions {
    fn default() -> Self {
        KeeperOptions {
            every: Duration::from_secs(1),
            keep: 10_000,
        }
    }
}

/// One round: this instance's counts out, everyone's blocks in, the gauges set.
pub async fn keep_once<S: Store + Ledger>(engine: &Engine<S>, keep: u32) {
    let batch = engine.tally().take();
    if !batch.is_empty() {
        // A failed flush loses one interval's counts: top lists are statistics, and
        // holding on to them would grow memory while the store is away.
        match engine.store().record(&batch, keep).await {
            Ok(()) => counter!(LEDGER_FLUSHES, "result" => "ok").increment(1),
            Err(e) => {
                counter!(LEDGER_FLUSHES, "result" => "error").increment(1);
                tracing::warn!(error = %e, "top-list counts not recorded");
            }
        }
    }
    let node_ttl = engine
        .policy()
        .get()
        .settings
        .client_conn
        .lease_ttl
        .as_millis();
    // Bans only counted: under an attack the list is long, and every instance asks.
    match engine.store().standing(node_ttl, 0).await {
        Ok(st) => {
            engine.blocks().replace(&st.blocks);
            engine.holds().unblocks(st.unblocks);
            gauge!(BANS_IN_FORCE, "kind" => "block").set(st.blocks.len() as f64);
            gauge!(BANS_IN_FORCE, "kind" => "ban").set(st.ban_count as f64);
            gauge!(LEASES_LIVE).set(st.leases_live as f64);
        }
        // The blocks in force stay until the store answers again (each expires by
        // its own deadline meanwhile).
        Err(e) => tracing::warn!(error = %e, "blocks not refreshed"),
    }
}

/// Runs `keep_once` every `options.every` until `stop` resolves, then flushes once
/// more so that a clean shutdown loses no counts. The caller enables the engine's
/// tally before serving (`server::serve` does): an engine without a keeper, as the
/// agent's local fallback, counts nothing.
pub async fn keeper<S: Store + Ledger>(
    engine: Arc<Engine<S>>,
    options: KeeperOptions,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(options.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => keep_once(&engine, options.keep).await,
            _ = &mut stop => break,
        }
    }
    keep_once(&engine, options.keep).await;
}
