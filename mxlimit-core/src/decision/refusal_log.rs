//! One log line per refusal (or would-be refusal), but never a flood of them: under an
//! attack the limiter refuses thousands of connections a second, and a line each
//! (~200 bytes) would fill disks and drown everything else. At most
//! [`LINES_PER_SECOND`] lines a second are written; the rest are counted
//! (`mxlimit_refusal_logs_suppressed_total`) and summed up in one line, written with
//! the first refusal of a later second.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use metrics::counter;
use mxlimit_proto::v1::Verdict;

use crate::decision::verdict;
use crate::metrics::REFUSAL_LOGS_SUPPRESSED;
use crate::source::Source;

/// Refusal lines written per second at most.
pub const LINES_PER_SECOND: u32 = 50;

/// A budget of lines per second, shared by every decision of the process.
pub struct Budget {
    per_second: u32,
    /// The second (since `start`) the counts below are for.
    second: AtomicU64,
    written: AtomicU32,
    suppressed: AtomicU64,
}

impl Budget {
    pub const fn new(per_second: u32) -> Budget {
        Budget {
            per_second,
            second: AtomicU64::new(0),
            written: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written in `second`; when a new second begins,
    /// the lines suppressed in the last one are returned to be reported.
    pub fn take(&self, second: u64) -> (bool, u64) {
        let mut reported = 0;
        let last = self.second.load(Ordering::Relaxed);
        if second != last
            && self
                .second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
            reported = self.suppressed.swap(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < self.per_second {
            (true, reported)
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            (false, reported)
        }
    }
}

static BUDGET: Budget = Budget::new(LINES_PER_SECOND);

fn second_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Logs a refusal (source, rule, reason, node) within the budget; a verdict that
/// refuses nothing is not logged.
pub fn log(rpc: &str, node: &str, source: &Source, v: Option<&Verdict>) {
    let Some(v) = v.filter(|v| verdict::is_block(v)) else {
        return;
    };
    let (write, suppressed) = BUDGET.take(second_now());
    if suppressed > 0 {
        tracing::info!(
            suppressed,
            per_second = LINES_PER_SECOND,
            "refusals not logged since the last refused line (over the log budget; counted in metrics)"
        );
    }
    if !write {
        counter!(REFUSAL_LOGS_SUPPRESSED).increment(1);
        return;
    }
    tracing::info!(
        rpc,
        node,
        source = %source,
        network = %source.net,
        rule = %v.rule,
        reason = %v.reason,
        code = v.smtp_code,
        delay_ms = v.delay_ms,
        shadow = v.shadow,
        "refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_counted_and_reported_the_next_second() {
        let b = Budget::new(3);
        let got: Vec<bool> = (0..5).map(|_| b.take(7).0).collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert_eq!(
            b.take(8),
            (true, 2),
            "2 suppressed in second 7, reported once"
        );
        assert_eq!(b.take(8), (true, 0));
        assert_eq!(b.take(9), (true, 0), "nothing suppressed in second 8");
    }
}
