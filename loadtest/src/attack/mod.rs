//! Plays a scenario against a fleet and measures containment: what each actor got
//! through, against the configured limits, and when it was banned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::fleet::{Fleet, Outcome, Rcpt, SessionReport};
use crate::scenario::{Actor, Attempt, Role, Scenario};

/// One attempt and what became of it.
#[derive(Debug, Clone)]
pub struct Record {
    pub attempt: Attempt,
    /// When the session actually began, from the start of the run (the schedule's time
    /// plus whatever lateness): what the limiter's windows saw.
    pub sent: Duration,
    pub report: SessionReport,
}

/// Sessions in flight at most, so that a stalled target cannot exhaust memory.
const MAX_IN_FLIGHT: usize = 5000;

/// Plays every attempt at its time (open loop: a slow answer does not delay the next).
pub async fn play(
    scenario: &Scenario,
    fleet: Arc<Fleet>,
    progress: Option<ProgressBar>,
) -> Vec<Record> {
    let schedule = scenario.schedule();
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = Vec::with_capacity(schedule.len());
    for attempt in schedule {
        tokio::time::sleep_until((start + attempt.at).into()).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let actor = &scenario.actors[attempt.actor];
        let rcpts: Vec<Rcpt> = (0..actor.rcpts)
            .map(|i| Rcpt {
                address: if actor.bad {
                    format!("nobody-{}-{}-{i}@mx.test", attempt.actor, attempt.seq)
                } else {
                    crate::lab::SmtpLab::MAILBOX.into()
                },
                bad: actor.bad,
            })
            .collect();
        let fleet = fleet.clone();
        let progress = progress.clone();
        let task = tokio::spawn(async move {
            let session = format!("a{}-{}", attempt.actor, attempt.seq);
            let sent = start.elapsed();
            let report = fleet
                .session(attempt.node, &session, attempt.ip, &rcpts)
                .await;
            drop(slot);
            if let Some(p) = progress {
                p.inc(1);
            }
            Record {
                attempt,
                sent,
                report,
            }
        });
        tasks.push((attempt, task));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (attempt, t) in tasks {
        // A session that panicked is an error of the run, counted as such, not lost.
        out.push(t.await.unwrap_or_else(|e| Record {
            attempt,
            sent: attempt.at,
            report: SessionReport {
                connect: Outcome::Error,
                reason: format!("session task failed: {e}"),
                rcpts: Vec::new(),
                connect_latency: Duration::ZERO,
            },
        }));
    }
    out.sort_by_key(|r| (r.attempt.at, r.attempt.actor, r.attempt.seq));
    out
}

/// The limits a run is measured against (the policy's).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    #[serde(rename = "window_ms", serialize_with = "ms")]
    pub window: Duration,
    pub network_rate: u32,
    pub network_block_after: u32,
}

impl Limits {
    pub fn of(settings: &mxlimit_core::policy::Settings) -> Limits {
        Limits {
            window: settings.client_rate.window.0,
            network_rate: settings.client_rate.network,
            network_block_after: settings.bad_rcpt.network_block_after,
        }
    }
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// What one actor got, in one mode.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActorReport {
    pub name: String,
    pub role: Role,
    pub attempts: u64,
    pub admitted: u64,
    pub refused: u64,
    pub errors: u64,
    /// Most connections of the actor's network admitted within any window of the
    /// ClientRate window, against the network limit of one limiter.
    pub max_admitted_in_window: u64,
    pub window_limit: u32,
    pub bad_rcpts_sent: u64,
    /// Bad recipients that went on to the MTA (not stopped by a ban).
    pub bad_rcpts_passed: u64,
    /// From the actor's first attempt to its first ban.
    pub time_to_ban_ms: Option<u64>,
    /// Legitimate traffic refused (connections and recipients).
    pub false_refusals: u64,
    pub delayed: u64,
}

/// Traffic per time bucket, for the chart.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub t_ms: u64,
    pub attacker_admitted: u64,
    pub attacker_refused: u64,
    pub legit_admitted: u64,
    pub legit_refused: u64,
    /// Connections that got no answer (neither admitted nor refused).
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub actors: Vec<ActorReport>,
    pub bucket_ms: u64,
    pub timeline: Vec<Bucket>,
    /// The first ban of any attacker, from the start of the run.
    pub first_ban_ms: Option<u64>,
}

/// Measures a played run.
pub fn measure(mode: &str, scenario: &Scenario, limits: Limits, records: &[Record]) -> ModeReport {
    let actors = scenario
        .actors
        .iter()
        .enumerate()
        .map(|(a, actor)| {
            let mine: Vec<&Record> = records.iter().filter(|r| r.attempt.actor == a).collect();
            actor_report(actor, &mine, limits)
        })
        .collect();
    let (bucket, timeline) = timeline(scenario, records);
    let first_ban_ms = records
        .iter()
        .filter(|r| scenario.actors[r.attempt.actor].role == Role::Attacker)
        .filter(|r| {
            r.report.connect == Outcome::Banned || r.report.rcpts.contains(&Outcome::Banned)
        })
        .map(|r| r.attempt.at.as_millis() as u64)
        .min();
    ModeReport {
        mode: mode.into(),
        actors,
        bucket_ms: bucket,
        timeline,
        first_ban_ms,
    }
}

/// What one actor's attempts met.
fn actor_report(actor: &Actor, mine: &[&Record], limits: Limits) -> ActorReport {
    let mut admitted_at: Vec<Duration> = mine
        .iter()
        .filter(|r| r.report.connect.passed())
        .map(|r| r.sent)
        .collect();
    admitted_at.sort();
    let ban_at = mine
        .iter()
        .filter(|r| {
            r.report.connect == Outcome::Banned || r.report.rcpts.contains(&Outcome::Banned)
        })
        .map(|r| r.attempt.at)
        .min();
    let legit = actor.role == Role::Legitimate;
    let refused_rcpts: u64 = mine
        .iter()
        .flat_map(|r| &r.report.rcpts)
        .filter(|o| matches!(o, Outcome::Refused | Outcome::Banned))
        .count() as u64;
    let refused = mine
        .iter()
        .filter(|r| matches!(r.report.connect, Outcome::Refused | Outcome::Banned))
        .count() as u64;
    ActorReport {
        name: actor.name.clone(),
        role: actor.role,
        attempts: mine.len() as u64,
        admitted: admitted_at.len() as u64,
        refused,
        errors: mine
            .iter()
            .flat_map(|r| std::iter::once(&r.report.connect).chain(&r.report.rcpts))
            .filter(|o| **o == Outcome::Error)
            .count() as u64,
        max_admitted_in_window: max_in_window(&admitted_at, limits.window),
        window_limit: limits.network_rate,
        bad_rcpts_sent: if actor.bad {
            mine.iter().map(|r| r.report.rcpts.len() as u64).sum()
        } else {
            0
        },
        bad_rcpts_passed: if actor.bad {
            mine.iter()
                .flat_map(|r| &r.report.rcpts)
                .filter(|o| o.passed())
                .count() as u64
        } else {
            0
        },
        time_to_ban_ms: ban_at.map(|t| t.saturating_sub(actor.start).as_millis() as u64),
        false_refusals: if legit { refused + refused_rcpts } else { 0 },
        delayed: mine
            .iter()
            .flat_map(|r| &r.report.rcpts)
            .filter(|o| **o == Outcome::Delayed)
            .count() as u64,
    }
}

/// Attempts admitted and refused per time bucket (about 30 over the run), attackers
/// and legitimate senders apart; and the bucket length.
fn timeline(scenario: &Scenario, records: &[Record]) -> (u64, Vec<Bucket>) {
    let duration = scenario.duration().max(Duration::from_millis(1));
    let bucket = (duration.as_millis() as u64 / 30).max(50);
    let n = (duration.as_millis() as u64).div_ceil(bucket) as usize;
    let mut timeline: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            t_ms: i as u64 * bucket,
            attacker_admitted: 0,
            attacker_refused: 0,
            legit_admitted: 0,
            legit_refused: 0,
            errors: 0,
        })
        .collect();
    for r in records {
        let i = ((r.attempt.at.as_millis() as u64) / bucket) as usize;
        let Some(b) = timeline.get_mut(i) else {
            continue;
        };
        if r.report.connect == Outcome::Error {
            b.errors += 1;
            continue;
        }
        let passed = r.report.connect.passed();
        match (scenario.actors[r.attempt.actor].role, passed) {
            (Role::Attacker, true) => b.attacker_admitted += 1,
            (Role::Attacker, false) => b.attacker_refused += 1,
            (Role::Legitimate, true) => b.legit_admitted += 1,
            (Role::Legitimate, false) => b.legit_refused += 1,
        }
    }
    (bucket, timeline)
}

/// The most events within any window of length `w` (half-open: (t - w, t]).
pub fn max_in_window(times: &[Duration], w: Duration) -> u64 {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].saturating_sub(times[lo]) >= w {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide() {
        let t = |ms: &[u64]| {
            ms.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let w = Duration::from_millis(1000);
        assert_eq!(max_in_window(&t(&[]), w), 0);
        assert_eq!(max_in_window(&t(&[0, 600, 1600, 2700]), w), 2);
        assert_eq!(max_in_window(&t(&[0, 600, 1000, 1100]), w), 3);
        assert_eq!(max_in_window(&t(&[0, 600, 999, 1100]), w), 3);
        // Fixed windows would see 2 and 2 here; a sliding one sees the 4.
        assert_eq!(max_in_window(&t(&[800, 900, 1000, 1100]), w), 4);
    }
}
