//! `bench --sweep`: open-loop runs at a list of rates, one line each, to show where
//! latency turns as load grows.

use serde::Serialize;
use tonic::transport::Channel;

use super::{BenchOptions, BenchReport, run};

#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub runs: Vec<BenchReport>,
}

pub async fn sweep(nodes: &[Channel], o: &BenchOptions, rates: &[f64]) -> Sweep {
    let mut runs = Vec::with_capacity(rates.len());
    for &rate in rates {
        let open = BenchOptions {
            rate: Some(rate),
            ..o.clone()
        };
        runs.push(run(nodes, &open).await);
    }
    Sweep { runs }
}

impl Sweep {
    pub fn text(&self) -> String {
        let mut s = format!(
            "{:>9} {:>9} {:>12} {:>12} {:>12} {:>15} {:>14} {:>7}\n",
            "offered/s",
            "sessions/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "start lag p99",
            "decisions/s",
            "errors"
        );
        for r in &self.runs {
            let first = r.first_call();
            let q = |f: fn(&super::Latency) -> u64| first.map_or(0, f);
            s.push_str(&format!(
                "{:>9.0} {:>9.0} {:>12} {:>12} {:>12} {:>15} {:>14.0} {:>7}\n",
                r.offered_per_s.unwrap_or(0.0),
                r.sessions_per_s,
                q(|l| l.p50_us),
                r.decision_p99_us(),
                q(|l| l.p999_us),
                r.latency.get("start lag").map_or(0, |l| l.p99_us),
                r.decisions_per_s,
                r.errors.values().sum::<u64>()
            ));
        }
        s.push_str(
            "(p50 and p99.9 of Connect, or ShouldRateLimit; p99 of the slower of Connect and Disconnect)\n",
        );
        s
    }
}
