//! `bench --capacity`: the most the limiter does, its latency at half of that load, and
//! (when it keeps its counters in Redis) the ceiling of that Redis, measured in one run
//! and put side by side.

use anyhow::{Result, bail};
use serde::Serialize;
use tonic::transport::Channel;

use super::ceiling::{self, Ceiling};
use super::{BenchOptions, BenchReport, run};

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The best closed-loop run.
    pub max: BenchReport,
    /// Open loop at half of `max`'s sessions per second.
    pub half: BenchReport,
    pub ceiling: Option<Ceiling>,
    /// The limiter's sessions per second over the ceiling's: the same work on both
    /// sides (one Connect and one Disconnect each).
    pub ratio: Option<f64>,
    /// The p99 of the slower RPC in the half-load run: the target is per decision.
    pub half_p99_us: u64,
}

/// Closed-loop concurrencies tried for the maximum: more in flight means more requests
/// per system call, up to a point.
const IN_FLIGHT: [usize; 3] = [64, 128, 256];

/// `redis`: the limiter's Redis, whose ceiling to measure too, with `requests` calls
/// per script.
pub async fn capacity(
    nodes: &[Channel],
    o: &BenchOptions,
    redis: Option<&str>,
    requests: u64,
) -> Result<Comparison> {
    // Before the limiter runs, not after: a missing tool should not cost half a minute.
    if redis.is_some() {
        ceiling::check_tools()?;
    }
    let mut max: Option<BenchReport> = None;
    for c in IN_FLIGHT {
        let closed = BenchOptions {
            rate: None,
            concurrency: c,
            ..o.clone()
        };
        let r = run(nodes, &closed).await;
        if max
            .as_ref()
            .is_none_or(|m| r.sessions_per_s > m.sessions_per_s)
        {
            max = Some(r);
        }
    }
    let max = max.expect("at least one run");
    // A capacity of failures, or of nothing, would make every figure below meaningless
    // (and a p99 of nothing would read as a pass).
    if max.sessions == 0 || !max.errors.is_empty() {
        bail!(
            "the limiter did not answer cleanly at full load ({} sessions, errors {:?}): no capacity to report",
            max.sessions,
            max.errors
        );
    }
    let open = BenchOptions {
        rate: Some(max.sessions_per_s / 2.0),
        ..o.clone()
    };
    let half = run(nodes, &open).await;
    if !half.errors.is_empty() {
        bail!("calls failed at half load: {:?}", half.errors);
    }
    // Last, so that its keys (and their expiry) do not load Redis while the limiter runs.
    let ceiling = redis
        .map(|r| ceiling::measure(r, 64, requests))
        .transpose()?;
    let ratio = ceiling
        .as_ref()
        .map(|c| max.sessions_per_s / c.sessions_per_s);
    let half_p99_us = half.decision_p99_us();
    Ok(Comparison {
        max,
        half,
        ceiling,
        ratio,
        half_p99_us,
    })
}

impl Comparison {
    pub fn text(&self) -> String {
        let mut s = format!("most: {}at half: {}", self.max.text(), self.half.text());
        if let (Some(c), Some(ratio)) = (&self.ceiling, self.ratio) {
            s.push_str(&c.text());
            s.push_str(&format!(
                "limiter sessions/s over the Redis ceiling: {ratio:.2} (target >= 0.5)\n"
            ));
        }
        s.push_str(&format!(
            "decision p99 at half load: {:.2} ms (target <= 2 ms)\n",
            self.half_p99_us as f64 / 1000.0
        ));
        s
    }
}
