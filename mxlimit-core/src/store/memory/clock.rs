//! Store time for the in-memory store: monotonic milliseconds, or a hand-moved clock
//! in tests so that windows and TTLs are checked exactly, without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub enum Clock {
    System(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System(Instant::now())
    }

    /// A clock that stands still until `advance` moves it. Starts well above 0 so that
    /// "now minus a window" never underflows.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(1_000_000_000)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            // Offset so that the first window subtraction never goes below zero.
            Clock::System(start) => 1_000_000_000 + start.elapsed().as_millis() as u64,
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }
}
