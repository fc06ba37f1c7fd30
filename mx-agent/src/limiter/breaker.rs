//! Stops asking a limiter that is down: after `THRESHOLD` failures in a row it is left
//! alone for `retry_after`, so that each SMTP step does not wait out the deadline; then
//! ONE call tries it again (the others keep deciding locally until that one answers).

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

    /// Whether this call may ask the limiter. Once `retry_after` has passed, the first
    /// caller is the probe: the breaker stays open for everybody else meanwhile.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                s.open_until = Some(Instant::now() + self.retry_after);
                true
            }
        }
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
        assert!(b.allow());
        b.failure();
        assert!(!b.allow());
        b.success();
        assert!(b.allow());
    }

    #[test]
    fn after_retry_after_one_call_probes_and_the_others_wait_for_it() {
        let b = Breaker::new(Duration::from_millis(50));
        for _ in 0..3 {
            b.failure();
        }
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "no second probe while the first is out");
        b.success();
        assert!(b.allow());
    }
}
