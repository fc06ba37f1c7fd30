//! Rejected recipients this agent has counted lately, by client and recipient, so that
//! the same refusal seen twice (by the milter and in the MTA's log, or in two log
//! files, as Exim writes a refusal to both mainlog and rejectlog) counts once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Long enough for sendmail, which logs a session's client only when its transaction
/// ends (tarpitted sessions last minutes); the same address refused again within it
/// counts once.
pub const REMEMBER: Duration = Duration::from_secs(600);
/// Entries at most: a flood of distinct recipients must not grow memory.
const MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct Counted {
    /// Only an agent that reads logs needs the memory: without `[logs]` a rejected
    /// recipient costs no lock and no allocation here.
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    at: HashMap<(IpAddr, String), Instant>,
    order: VecDeque<((IpAddr, String), Instant)>,
}

impl Counted {
    /// Starts remembering (the log adapter does, when it starts).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Notes a refusal counted now.
    pub fn note(&self, ip: IpAddr, recipient: &str) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let key = key(ip, recipient);
        let now = Instant::now();
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.insert(key, now);
    }

    /// Notes this refusal, and says whether it is new: checked and noted under one
    /// lock, so that of two callers at once only one hears yes.
    pub fn first_time(&self, ip: IpAddr, recipient: &str) -> bool {
        let key = key(ip, recipient);
        let now = Instant::now();
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if i.at
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REMEMBER)
        {
            return false;
        }
        i.insert(key, now);
        true
    }
}

/// The same recipient however an MTA wrote it: `<Nobody@Example.test>` is
/// `nobody@example.test`.
fn key(ip: IpAddr, recipient: &str) -> (IpAddr, String) {
    let r = recipient.trim();
    let r = r
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(r);
    // As the limiter gets it (512 bytes): a 64 KiB recipient must not be kept whole.
    (ip, r[..r.floor_char_boundary(512)].to_ascii_lowercase())
}

impl Inner {
    fn insert(&mut self, key: (IpAddr, String), now: Instant) {
        self.expire(now);
        while self.order.len() >= MAX {
            if let Some((k, at)) = self.order.pop_front()
                && self.at.get(&k) == Some(&at)
            {
                self.at.remove(&k);
            }
        }
        self.at.insert(key.clone(), now);
        self.order.push_back((key, now));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((k, at)) = self.order.front()
            && now.duration_since(*at) >= REMEMBER
        {
            if self.at.get(k) == Some(at) {
                self.at.remove(k);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_known_by_client_and_recipient_in_any_case_and_memory_is_bounded() {
        let c = Counted::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Off until enabled: nothing is kept.
        c.note(a, "<Nobody@Example.test>");
        assert!(c.inner.lock().unwrap().at.is_empty());
        c.enable();
        c.note(a, "<Nobody@Example.test>");
        assert!(!c.first_time(a, "nobody@example.test"));
        assert!(c.first_time(b, "nobody@example.test"));
        assert!(c.first_time(a, "other@example.test"));
        assert!(c.first_time(b, "x@example.test"));
        assert!(!c.first_time(b, "x@example.test"));
        for n in 0..(MAX + 10) {
            c.note(b, &format!("u{n}@example.test"));
        }
        let i = c.inner.lock().unwrap();
        assert!(i.order.len() <= MAX && i.at.len() <= MAX);
    }
}
