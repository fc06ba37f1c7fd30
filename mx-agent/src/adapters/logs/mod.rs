//! The MTA's own log as an adapter: every refusal the MTA writes there, including the
//! ones no milter or policy service is told of (sendmail's virtusertable `error:` and
//! `check_rcpt`, Postfix's recipient tables before the milter, Exim), counted at the
//! limiter as the milter counts a rejected recipient: the same tarpit, the same
//! cluster-wide ban. Early talkers, protocol errors and AUTH failures, which only the
//! log tells of, are the limiter's `Offence`s, each kind with its own thresholds.
//!
//! Each file is followed on a thread of its own ([`follow`]) and parsed there
//! (`mxlimit_maillog`); events go through a bounded queue to the limiter, so that a
//! log flood far faster than the limiter answers costs dropped events (counted and
//! warned), never memory or the adapters' time. Following starts at the end of each
//! file: what was written while the agent was down is `mxlimit import-log`'s. A file
//! rotated away is still read for [`follow::ROTATED_DRAIN`] after it last grew.

pub mod follow;
pub mod journal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::counter;
use mxlimit_core::offence::OffenceKind;
use mxlimit_maillog::{Event, Kind, Reader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::limiter::{Limiter, Rcpt};
use crate::metrics::{LOG_DROPPED, LOG_EVENTS, LOG_LINES, warn_every};

/// Limiter calls in flight at once for log events.
const IN_FLIGHT: usize = 32;
/// How long an event read from the log waits before it is counted: the milter may be
/// telling the agent of the same refusal just now (the MTA logs before it calls it).
pub const GRACE: Duration = Duration::from_secs(1);

/// What the log adapter did with the events it read.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Unknown recipients sent to the limiter.
    pub reported: AtomicU64,
    /// Unknown recipients not sent: counted already (by the milter, or from another
    /// log file).
    pub duplicates: AtomicU64,
    /// Offences (early talkers, protocol errors, AUTH failures) sent to the limiter.
    pub offences: AtomicU64,
    /// Lines read, all files together.
    pub lines: AtomicU64,
    /// Times a followed file was found rotated, truncated, deleted or made.
    pub reopened: AtomicU64,
}

/// Follows `files` (and the journal) and counts their events at the limiter until
/// `until` resolves.
pub fn serve(
    files: &[PathBuf],
    journal: Option<journal::Journal>,
    poll: Duration,
    queue: usize,
    limiter: Arc<Limiter>,
    stats: Arc<LogStats>,
    until: impl Future<Output = ()> + Send + 'static,
) -> Vec<JoinHandle<()>> {
    // The milter's rejected recipients are remembered from now on, for `report`.
    limiter.counted.enable();
    let (tx, rx) = mpsc::channel::<(Instant, Event)>(queue.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for path in files {
        let (path, tx, stop, stats) = (path.clone(), tx.clone(), stop.clone(), stats.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut sink = Parse {
                stats,
                path: path.clone(),
                reader: Reader::new(),
                events: Vec::new(),
                tx,
                dropped_unpaired: 0,
                wait_for_room: false,
            };
            follow::follow(&path, poll, &stop, &mut sink);
        }));
    }
    let child = Arc::new(journal::Child::default());
    if let Some(j) = journal {
        let (tx, stop, stats, child) = (tx.clone(), stop.clone(), stats.clone(), child.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut sink = Parse {
                stats,
                path: PathBuf::from("the journal"),
                reader: Reader::new(),
                events: Vec::new(),
                tx,
                dropped_unpaired: 0,
                wait_for_room: true,
            };
            journal::follow(&j, &stop, &child, &mut sink);
        }));
    }
    drop(tx);
    tasks.push(tokio::spawn(async move {
        until.await;
        stop.store(true, Ordering::SeqCst);
        // The journal's reader waits on journalctl's output: end it.
        child.terminate();
    }));
    tasks.push(tokio::spawn(count(rx, limiter, stats)));
    tasks
}

/// Lines to events, on the follower's thread.
struct Parse {
    stats: Arc<LogStats>,
    path: PathBuf,
    reader: Reader,
    events: Vec<Event>,
    tx: mpsc::Sender<(Instant, Event)>,
    dropped_unpaired: u64,
    /// Wait for room in the queue rather than drop: the journal keeps what is not read
    /// yet (a file's follower drops, so that a flood costs events, not the agent's
    /// memory or a stale backlog).
    wait_for_room: bool,
}

impl follow::Sink for Parse {
    fn line(&mut self, line: &str) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        let before = self.reader.stats().matched;
        self.reader.line(line, &mut self.events);
        let result = if self.reader.stats().matched > before {
            "matched"
        } else {
            "skipped"
        };
        counter!(LOG_LINES, "result" => result).increment(1);
        let unpaired = self.reader.stats().dropped;
        if unpaired > self.dropped_unpaired {
            counter!(LOG_DROPPED, "reason" => "unpaired")
                .increment(unpaired - self.dropped_unpaired);
            self.dropped_unpaired = unpaired;
        }
        for e in self.events.drain(..) {
            counter!(LOG_EVENTS, "kind" => e.kind.as_str()).increment(1);
            if self.wait_for_room {
                // Only when the agent is stopping is there no reader.
                let _ = self.tx.blocking_send((Instant::now(), e));
            } else if self.tx.try_send((Instant::now(), e)).is_err() {
                counter!(LOG_DROPPED, "reason" => "queue_full").increment(1);
                warn_every(
                    "logs_queue_full",
                    &"logs: events dropped: the queue ([logs] queue) holds less than the log writes in the 1 s grace, or the limiter is slow",
                );
            }
        }
    }

    fn too_long(&mut self) {
        counter!(LOG_LINES, "result" => "too_long").increment(1);
        warn_every("logs_too_long", &"logs: a line over 64 KiB was skipped");
    }

    fn reopened(&mut self, why: &'static str) {
        if !matches!(why, "started" | "waiting") {
            self.stats.reopened.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(path = %self.path.display(), why, "logs: following");
    }

    fn unreadable(&mut self, error: &std::io::Error) {
        warn_every(
            "logs_unreadable",
            &format_args!(
                "logs: cannot read {}: {error} (tried again every poll)",
                self.path.display()
            ),
        );
    }

    /// The agent is stopping (or its runtime is gone): the queue's reader has closed.
    fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Sends each event to the limiter, a bounded number at a time.
async fn count(
    mut rx: mpsc::Receiver<(Instant, Event)>,
    limiter: Arc<Limiter>,
    stats: Arc<LogStats>,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some((read, e)) = rx.recv().await {
        // Events come in the order they were read: waiting for this one's grace
        // holds back only later ones.
        tokio::time::sleep_until((read + GRACE).into()).await;
        while in_flight.len() >= IN_FLIGHT {
            in_flight.join_next().await;
        }
        let (limiter, stats) = (limiter.clone(), stats.clone());
        in_flight.spawn(async move { report(&limiter, &stats, &e).await });
    }
    while in_flight.join_next().await.is_some() {}
}

/// One event at the limiter. An unknown recipient is a rejected `Recipient`, with a
/// session id made from the event's own id: the same line read twice counts once.
/// Early talkers, protocol errors and AUTH failures are `Offence`s of their kind, with
/// the same id.
async fn report(limiter: &Limiter, stats: &LogStats, e: &Event) {
    let id = format!("log-{:016x}", fnv1a(e.id.as_bytes()));
    let kind = match e.kind {
        Kind::UnknownRecipient => return report_recipient(limiter, stats, e, &id).await,
        Kind::Pregreet => OffenceKind::Pregreet,
        Kind::ProtocolError => OffenceKind::Protocol,
        Kind::AuthFailure => OffenceKind::Auth,
    };
    stats.offences.fetch_add(1, Ordering::Relaxed);
    // The MTA has dealt with this session; a ban the verdict reports bites at the
    // source's next connection, on every MX.
    let _ = limiter.offence(e.ip, kind, &id).await;
}

async fn report_recipient(limiter: &Limiter, stats: &LogStats, e: &Event, session: &str) {
    let recipient = e.recipient.as_deref().unwrap_or("");
    // Checked and noted in one step: two log files' copies of one refusal, reported
    // at once, count once.
    if !limiter.counted.first_time(e.ip, recipient) {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
        counter!(LOG_DROPPED, "reason" => "counted_already").increment(1);
        return;
    }
    stats.reported.fetch_add(1, Ordering::Relaxed);
    let rcpt = Rcpt {
        recipient,
        rejected: true,
        smtp_code: 550,
        envelope_rcpts: 1,
        envelope_bad_rcpts: 1,
    };
    // The verdict is the MTA's business: it has refused the recipient already.
    let _ = limiter.recipient(session, e.ip, None, rcpt).await;
}

/// FNV-1a, 64 bits: a stable id across restarts (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
