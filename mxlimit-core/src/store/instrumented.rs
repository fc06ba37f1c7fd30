//! A store that times every operation and counts failures and leases, around any
//! other: the metrics of the store round trips without touching the backends.

use std::time::Instant;

use metrics::{counter, histogram};

use super::ledger::{Batch, Inspection, Ledger, Seed, SeedOutcome, Standing, TopQuery, TopRow};
use super::{
    Ban, ConnectOp, ConnectOutcome, HeartbeatOp, HeartbeatOutcome, LeaseId, OffenceOp,
    OffenceOutcome, RecipientOp, RecipientOutcome, ReleaseOp, Store, StoreError,
};
use crate::metrics::{LEASES_FREED, LEASES_RELEASED, LEASES_TAKEN, STORE_ERRORS, STORE_SECONDS};
use crate::source::{Level, Source};
use ipnet::IpNet;

pub struct Instrumented<S>(pub S);

fn observe<T>(op: &'static str, start: Instant, r: &Result<T, StoreError>) {
    histogram!(STORE_SECONDS, "op" => op).record(start.elapsed());
    if r.is_err() {
        counter!(STORE_ERRORS, "op" => op).increment(1);
    }
}

impl<S: Store> Store for Instrumented<S> {
    async fn connect(&self, op: &ConnectOp<'_>) -> Result<ConnectOutcome, StoreError> {
        let t = Instant::now();
        let r = self.0.connect(op).await;
        observe("connect", t, &r);
        // Shadow mode admits what it would refuse, lease and all.
        if let Ok(o) = &r
            && (o.refusal.is_none() || op.shadow)
            && !o.retry
        {
            counter!(LEASES_TAKEN).increment(1);
        }
        r
    }

    async fn recipient(&self, op: &RecipientOp<'_>) -> Result<RecipientOutcome, StoreError> {
        let t = Instant::now();
        let r = self.0.recipient(op).await;
        observe("recipient", t, &r);
        r
    }

    async fn offence(&self, op: &OffenceOp<'_>) -> Result<OffenceOutcome, StoreError> {
        let t = Instant::now();
        let r = self.0.offence(op).await;
        observe("offence", t, &r);
        r
    }

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.0.disconnect(source, lease).await;
        observe("disconnect", t, &r);
        if r.is_ok() {
            counter!(LEASES_RELEASED).increment(1);
        }
        r
    }

    async fn release(&self, op: &ReleaseOp<'_>) -> Result<u64, StoreError> {
        let t = Instant::now();
        let r = self.0.release(op).await;
        observe("release", t, &r);
        if let Ok(n) = &r {
            counter!(LEASES_RELEASED).increment(*n);
        }
        r
    }

    async fn heartbeat(&self, op: &HeartbeatOp<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let t = Instant::now();
        let r = self.0.heartbeat(op).await;
        observe("heartbeat", t, &r);
        if let Ok(o) = &r {
            counter!(LEASES_FREED).increment(o.freed);
        }
        r
    }

    async fn ban(&self, source: &Source, shadow: bool) -> Result<Option<Ban>, StoreError> {
        let t = Instant::now();
        let r = self.0.ban(source, shadow).await;
        observe("ban", t, &r);
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn usage(&self) -> Result<Option<super::StoreUsage>, StoreError> {
        self.0.usage().await
    }
}

/// The ledger's operations, timed like the decisions' (op `ledger_*`).
impl<S: Ledger> Ledger for Instrumented<S> {
    async fn record(&self, batch: &Batch, keep: u32) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.0.record(batch, keep).await;
        observe("ledger_record", t, &r);
        r
    }

    async fn seed(&self, seed: &Seed, keep: u32) -> Result<SeedOutcome, StoreError> {
        let t = Instant::now();
        let r = self.0.seed(seed, keep).await;
        observe("ledger_seed", t, &r);
        r
    }

    async fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        let t = Instant::now();
        let r = self.0.top(q).await;
        observe("ledger_top", t, &r);
        r
    }

    async fn inspect(
        &self,
        source: &Source,
        rate_window_ms: u64,
        bad_window_ms: u64,
        shadow: bool,
    ) -> Result<Inspection, StoreError> {
        let t = Instant::now();
        let r = self
            .0
            .inspect(source, rate_window_ms, bad_window_ms, shadow)
            .await;
        observe("ledger_inspect", t, &r);
        r
    }

    async fn put_block(&self, target: IpNet, ttl_ms: u64, reason: &str) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.0.put_block(target, ttl_ms, reason).await;
        observe("ledger_block", t, &r);
        r
    }

    async fn remove_block(&self, target: IpNet) -> Result<bool, StoreError> {
        let t = Instant::now();
        let r = self.0.remove_block(target).await;
        observe("ledger_unblock", t, &r);
        r
    }

    async fn clear_ban(
        &self,
        source: &Source,
        level: Level,
        shadow: bool,
    ) -> Result<bool, StoreError> {
        let t = Instant::now();
        let r = self.0.clear_ban(source, level, shadow).await;
        observe("ledger_unban", t, &r);
        r
    }

    async fn standing(&self, node_ttl_ms: u64, list_bans: u32) -> Result<Standing, StoreError> {
        let t = Instant::now();
        let r = self.0.standing(node_ttl_ms, list_bans).await;
        observe("ledger_standing", t, &r);
        r
    }
}
