//! Counts of refusals and bad recipients between two flushes to the ledger. A
//! decision adds to a map under a short lock (never across an await); the ledger
//! keeper takes the whole map once a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::counter;

use crate::metrics::TALLY_DROPPED;
use crate::source::{Level, Source};
use crate::store::ledger::{Batch, Metric};

/// Distinct sources counted between two flushes at most: an attack from ever new
/// addresses cannot grow the map without bound. Past it, new sources of that
/// interval are not counted (their networks still are, unless those overflow too).
pub const MAX_PENDING: usize = 100_000;

#[derive(Default)]
struct Pending {
    /// Per top list (`Metric::LISTS`), source -> count: looked up by `&str`, so that
    /// a source already counted costs no allocation.
    counts: [HashMap<Box<str>, u64>; 4],
    /// Distinct sources in `counts`, all lists together.
    distinct: usize,
    bans: Vec<(Level, String, u64)>,
    leases: HashMap<String, u64>,
}

/// Off until a ledger keeper runs: nobody would empty it.
#[derive(Default)]
pub struct Tally {
    on: AtomicBool,
    pending: Mutex<Pending>,
}

impl Tally {
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    fn pending(&self) -> Option<std::sync::MutexGuard<'_, Pending>> {
        self.on
            .load(Ordering::Relaxed)
            .then(|| self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One event at both levels of a source.
    pub fn count(&self, metric: Metric, source: &Source) {
        let Some(mut p) = self.pending() else {
            return;
        };
        for (level, text) in [
            (Level::Address, source.ip_text.as_str()),
            // The tag is `n4:<network>`: its text without an allocation.
            (Level::Network, &source.tag[3..]),
        ] {
            let room = p.distinct < MAX_PENDING;
            let list = &mut p.counts[metric.list(level)];
            if let Some(n) = list.get_mut(text) {
                *n += 1;
            } else if room {
                list.insert(text.into(), 1);
                p.distinct += 1;
            } else {
                counter!(TALLY_DROPPED).increment(1);
            }
        }
    }

    pub fn ban(&self, level: Level, source: &Source, length_ms: u64) {
        let Some(mut p) = self.pending() else {
            return;
        };
        if p.bans.len() < MAX_PENDING {
            p.bans.push((level, source.at(level), length_ms));
        } else {
            counter!(TALLY_DROPPED).increment(1);
        }
    }

    /// The leases a node renewed on its heartbeat (all its live sessions).
    pub fn leases(&self, node: &str, renewed: u64) {
        let Some(mut p) = self.pending() else {
            return;
        };
        let room = p.leases.len() < MAX_PENDING;
        match p.leases.get_mut(node) {
            Some(n) => *n = renewed,
            None if room => {
                p.leases.insert(node.to_string(), renewed);
            }
            None => counter!(TALLY_DROPPED).increment(1),
        }
    }

    /// Everything counted since the last call.
    pub fn take(&self) -> Batch {
        let p = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut counts = Vec::with_capacity(p.distinct);
        for ((metric, level), list) in Metric::LISTS.into_iter().zip(p.counts) {
            counts.extend(
                list.into_iter()
                    .map(|(source, n)| (metric, level, String::from(source), n)),
            );
        }
        Batch {
            counts,
            bans: p.bans,
            leases: p.leases.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Aggregation;

    #[test]
    fn counts_both_levels_and_empties_on_take() {
        let t = Tally::default();
        let early = Source::new("192.0.2.9".parse().unwrap(), Aggregation::default());
        t.count(Metric::BadRecipients, &early);
        assert!(
            t.take().is_empty(),
            "nothing is counted before a keeper enables it"
        );
        t.enable();
        let a = Source::new("192.0.2.1".parse().unwrap(), Aggregation::default());
        let b = Source::new("192.0.2.2".parse().unwrap(), Aggregation::default());
        t.count(Metric::BadRecipients, &a);
        t.count(Metric::BadRecipients, &a);
        t.count(Metric::BadRecipients, &b);
        let mut counts = t.take().counts;
        counts.sort_by(|x, y| x.2.cmp(&y.2));
        assert_eq!(
            counts
                .iter()
                .map(|(_, l, s, n)| (*l, s.as_str(), *n))
                .collect::<Vec<_>>(),
            [
                (Level::Network, "192.0.2.0/24", 3),
                (Level::Address, "192.0.2.1", 2),
                (Level::Address, "192.0.2.2", 1),
            ]
        );
        assert!(t.take().is_empty());
    }
}
