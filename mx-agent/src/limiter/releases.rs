//! Ended sessions' leases, released in batches off the SMTP session's path: one
//! `Release` call (one store round trip on one Redis) frees many, so a session's end
//! costs no call of its own. A lease is freed within `every` of the session's end,
//! plus the call (at most its 2 s deadline); until then it still counts for
//! ClientConn. A limiter too old for `Release` gets a `Disconnect` per session again.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mxlimit_proto::v1::Lease;
use tokio::sync::Notify;

/// Leases per `Release` call at most (the limiter takes up to 100 000).
pub const MAX_BATCH: usize = 1000;

pub struct Releases {
    every: Duration,
    pending: Mutex<Vec<Lease>>,
    /// Woken when a full batch waits.
    full: Notify,
    /// The limiter answered `Release` with UNIMPLEMENTED: release one by one.
    unsupported: AtomicBool,
}

impl Releases {
    /// `every`: how long an ended session's lease may wait for its batch (0: no
    /// batching, each session is released by its own call).
    pub fn new(every: Duration) -> Releases {
        Releases {
            every,
            pending: Mutex::default(),
            full: Notify::new(),
            unsupported: AtomicBool::new(false),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether ended sessions wait for a batch.
    pub fn batching(&self) -> bool {
        !self.every.is_zero() && !self.unsupported.load(Ordering::Relaxed)
    }

    /// From now on each session is released by its own call.
    pub fn unsupported(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Lease>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, session: &str, ip: IpAddr) {
        let n = {
            let mut p = self.lock();
            p.push(Lease {
                session_id: session.to_string(),
                client_ip: ip.to_string(),
            });
            p.len()
        };
        if n >= MAX_BATCH {
            self.full.notify_one();
        }
    }

    /// Everything waiting, to release now.
    pub fn take(&self) -> Vec<Lease> {
        std::mem::take(&mut *self.lock())
    }

    /// Waits until a full batch waits (or forever).
    pub async fn full(&self) {
        self.full.notified().await
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_batch_wakes_the_sender_and_take_empties_it() {
        let r = Releases::new(Duration::from_secs(3600));
        assert!(r.batching());
        for i in 0..MAX_BATCH {
            r.push(&format!("s{i}"), "192.0.2.1".parse().unwrap());
        }
        tokio::time::timeout(Duration::from_secs(1), r.full())
            .await
            .expect("woken by a full batch");
        assert_eq!(r.take().len(), MAX_BATCH);
        assert_eq!(r.pending(), 0);
        r.unsupported();
        assert!(!r.batching());
        assert!(!Releases::new(Duration::ZERO).batching());
    }
}
