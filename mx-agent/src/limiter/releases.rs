//! Ended sessions' leases, released in batches off the SMTP session's path: one
//! `Release` call (one store round trip on one Redis) frees many, so a session's end
//! costs no call of its own. A lease is freed within `every` of the session's end,
//! plus the call (at most its 2 s deadline); until then it still counts for
//! ClientConn. A limiter too old for `Release` gets a `Disconnect` per session again.
//! A batch the limiter did not take goes back to wait for the next round; at most
//! [`MAX_PENDING`] wait (the oldest beyond expire by their TTL). Once the sender has
//! stopped (the agent shuts down), each session is released by its own call again.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mxlimit_proto::v1::Lease;
use tokio::sync::Notify;

/// Leases per `Release` call at most (the limiter takes up to 100 000).
pub const MAX_BATCH: usize = 1000;

/// Leases waiting at most, while the limiter does not take them.
pub const MAX_PENDING: usize = 100_000;

#[derive(Default)]
struct Pending {
    leases: Vec<Lease>,
    /// The sender has stopped: nothing waits any more.
    closed: bool,
}

pub struct Releases {
    every: Duration,
    pending: Mutex<Pending>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a lease for the next batch; false once the sender has stopped (the
    /// caller releases it by its own call).
    pub fn push(&self, session: &str, ip: IpAddr) -> bool {
        let n = {
            let mut p = self.lock();
            if p.closed {
                return false;
            }
            p.leases.push(Lease {
                session_id: session.to_string(),
                client_ip: ip.to_string(),
            });
            p.leases.len()
        };
        if n >= MAX_BATCH {
            self.full.notify_one();
        }
        true
    }

    /// Everything waiting, to release now.
    pub fn take(&self) -> Vec<Lease> {
        std::mem::take(&mut self.lock().leases)
    }

    /// Everything waiting, for a last batch; later leases are not queued.
    pub fn close(&self) -> Vec<Lease> {
        let mut p = self.lock();
        p.closed = true;
        std::mem::take(&mut p.leases)
    }

    /// Leases the limiter did not take, back in front of what waits, within
    /// [`MAX_PENDING`] (the oldest go first: their TTL frees them anyway).
    pub fn put_back(&self, mut leases: Vec<Lease>) {
        let mut p = self.lock();
        if p.closed {
            return;
        }
        leases.append(&mut p.leases);
        let over = leases.len().saturating_sub(MAX_PENDING);
        leases.drain(..over);
        p.leases = leases;
    }

    /// Waits until a full batch waits (or forever).
    pub async fn full(&self) {
        self.full.notified().await
    }

    pub fn pending(&self) -> usize {
        self.lock().leases.len()
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

    #[test]
    fn what_was_not_taken_waits_again_within_the_bound_and_nothing_after_close() {
        let r = Releases::new(Duration::from_millis(100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(r.push("new", ip));
        let old: Vec<Lease> = (0..MAX_PENDING)
            .map(|i| Lease {
                session_id: format!("old{i}"),
                client_ip: ip.to_string(),
            })
            .collect();
        r.put_back(old);
        assert_eq!(r.pending(), MAX_PENDING, "bounded");
        let waiting = r.take();
        assert_eq!(waiting.last().unwrap().session_id, "new", "the newest kept");
        assert_eq!(waiting[0].session_id, "old1", "the oldest dropped");
        assert!(r.push("last", ip));
        assert_eq!(r.close().len(), 1);
        assert!(!r.push("after", ip), "released by its own call");
        assert_eq!(r.pending(), 0);
    }
}
