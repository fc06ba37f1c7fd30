//! `loadtest jitter`: how late this machine wakes a thread that sleeps to a schedule.
//! A floor under every latency measured here: no limiter answers faster than the
//! machine lets its threads run.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Latency;

#[derive(Debug, Clone, Serialize)]
pub struct Jitter {
    pub interval_us: u64,
    /// Lateness of each wakeup past its scheduled time.
    pub late: Latency,
}

/// Sleeps to a schedule of one wakeup per `interval` for `duration`, on the calling
/// thread, and records how late each wakeup was.
pub fn measure(interval: Duration, duration: Duration) -> Jitter {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let start = Instant::now();
    let total = (duration.as_secs_f64() / interval.as_secs_f64()).max(1.0) as u32;
    for n in 0..total {
        let due = start + interval * n;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let late = Instant::now().saturating_duration_since(due);
        let _ = h.record((late.as_micros() as u64).max(1));
    }
    Jitter {
        interval_us: interval.as_micros() as u64,
        late: Latency::of(&h),
    }
}

impl Jitter {
    pub fn text(&self) -> String {
        let l = &self.late;
        format!(
            "wakeups every {} µs: {} late by p50 {} / p90 {} / p99 {} / p99.9 {} / max {} µs\n",
            self.interval_us, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_wakeup_and_none_is_early() {
        let j = measure(Duration::from_millis(2), Duration::from_millis(100));
        assert_eq!(j.late.count, 50);
        assert!(j.late.p50_us >= 1 && j.late.max_us >= j.late.p99_us);
    }
}
