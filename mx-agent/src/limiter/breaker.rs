//! Stops asking a limiter that is down: after `THRESHOLD` failures in a row it is left
//! alone for `retry_after`, so that each SMTP step does not wait out the deadline; the
//! first call after that tries it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const THRESHOLD: u32 = 3;

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    retry_after: Duration,
}

impl Breaker {
    pub fn new(retry_after: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
            }),
            retry_after,
        }
    }

    /// Whether to skip the limiter now.
    pub fn is_open(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open_until.is_some_and(|t| Instant::now() < t)
    }

    pub fn success(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.failures >= THRESHOLD {
            tracing::warn!("limiter answers again; decisions are cluster-wide again");
        }
        s.failures = 0;
        s.open_until = None;
    }

    pub fn failure(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.failures = s.failures.saturating_add(1);
        if s.failures >= THRESHOLD {
            if s.failures == THRESHOLD {
                tracing::warn!(
                    retry_after = ?self.retry_after,
                    "limiter unreachable ({} failures in a row); deciding locally",
                    s.failures
                );
            }
            s.open_until = Some(Instant::now() + self.retry_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_three_failures_and_closes_on_success() {
        let b = Breaker::new(Duration::from_secs(60));
        b.failure();
        b.failure();
        assert!(!b.is_open());
        b.failure();
        assert!(b.is_open());
        b.success();
        assert!(!b.is_open());
    }

    #[test]
    fn a_half_open_breaker_lets_the_next_call_through() {
        let b = Breaker::new(Duration::from_millis(0));
        for _ in 0..3 {
            b.failure();
        }
        assert!(
            !b.is_open(),
            "retry_after has passed: the next call tries the limiter"
        );
    }
}
