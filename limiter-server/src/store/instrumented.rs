//! A store that times every operation and counts failures and leases, around any
//! other: the metrics of the store round trips without touching the backends.

use std::time::Instant;

use metrics::{counter, histogram};

use super::{
    Ban, ConnectOp, ConnectOutcome, HeartbeatOp, HeartbeatOutcome, LeaseId, RecipientOp,
    RecipientOutcome, Store, StoreError,
};
use crate::metrics::{LEASES_FREED, LEASES_RELEASED, LEASES_TAKEN, STORE_ERRORS, STORE_SECONDS};
use crate::source::Source;

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

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.0.disconnect(source, lease).await;
        observe("disconnect", t, &r);
        if r.is_ok() {
            counter!(LEASES_RELEASED).increment(1);
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
}
