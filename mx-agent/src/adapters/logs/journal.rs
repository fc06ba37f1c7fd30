//! The systemd journal as a log, where the MTA logs there: `journalctl --follow`, run
//! as a child, its entries (JSON, one per line) made into syslog lines for the same
//! parsers. journalctl keeps up with the journal's own rotation. With a cursor file
//! the reader resumes after the last entry it read, across restarts of the agent (or
//! of journalctl): what the MTA logged meanwhile is counted too.

use std::io::{BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::follow::{MAX_LINE, Sink};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// journalctl matches (`FIELD=value`); entries matching any are read.
    pub matches: Vec<String>,
    /// A journal directory other than the system's (`--directory`).
    pub directory: Option<PathBuf>,
    /// Where the place reached is kept; without it reading starts at the end.
    pub cursor: Option<PathBuf>,
}

/// How often, at most, the place reached is written down while entries come.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Entries older than this when read (a backlog after the agent was down) are not
/// counted: the limiter's windows (an hour by default) have let them go.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long to wait before journalctl is started again after it ended.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// journalctl's process, for the agent to end it when it stops. The pid is only
/// signalled under the lock, and cleared under it before the child is reaped: a pid
/// the system has given to another process is never signalled.
#[derive(Debug, Default)]
pub struct Child(Mutex<Option<u32>>);

impl Child {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks journalctl to end (its stdout then ends, and the reader with it).
    pub fn terminate(&self) {
        if let Some(pid) = *self.lock() {
            // SAFETY: kill(2) takes plain integers; the pid is our own child's, not yet
            // reaped (the reader clears it under this lock before it waits).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

/// The fields of an entry that make its syslog line. (`-o json` writes every value
/// as a string, or as an array of bytes when it is not UTF-8.)
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: String,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "MESSAGE")]
    message: Option<Field>,
    #[serde(rename = "SYSLOG_IDENTIFIER")]
    identifier: Option<Field>,
    #[serde(rename = "SYSLOG_PID")]
    syslog_pid: Option<Field>,
    #[serde(rename = "_PID")]
    pid: Option<Field>,
    #[serde(rename = "_HOSTNAME")]
    host: Option<Field>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Field {
    Text(String),
    Bytes(Vec<u8>),
}

impl Field {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Field::Text(s) => s.into(),
            Field::Bytes(b) => String::from_utf8_lossy(b),
        }
    }
}

impl Entry {
    /// Whether the entry was logged within `age` of `now` (both since the epoch).
    fn recent(&self, now: Duration, age: Duration) -> bool {
        let usec: u64 = self
            .realtime
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        Duration::from_micros(usec) + age >= now
    }

    /// `2026-12-03T17:51:22.123456+00:00 host program[pid]: message`, as rsyslog's
    /// high-precision format writes it. `None` for an entry without a message.
    fn line(&self) -> Option<String> {
        let message = self.message.as_ref()?.text();
        let text = |f: &Option<Field>| f.as_ref().map(|f| f.text().into_owned());
        let program = text(&self.identifier).unwrap_or_else(|| "unknown".into());
        let host = text(&self.host).unwrap_or_else(|| "localhost".into());
        let pid = text(&self.syslog_pid).or_else(|| text(&self.pid));
        let usec: u64 = self.realtime.as_deref()?.parse().ok()?;
        let mut line = format!("{} {host} {program}", iso_time(usec));
        if let Some(pid) = pid {
            line.push('[');
            line.push_str(&pid);
            line.push(']');
        }
        line.push_str(": ");
        line.push_str(message.trim_end_matches('\n'));
        Some(line)
    }
}

/// Microseconds since the epoch as RFC 3339, UTC (days to a civil date as in Howard
/// Hinnant's `civil_from_days`).
fn iso_time(usec: u64) -> String {
    let secs = usec / 1_000_000;
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        usec % 1_000_000
    )
}

fn saved_cursor(path: &Path) -> Option<String> {
    let c = std::fs::read_to_string(path).ok()?;
    let c = c.trim();
    // A cursor is `s=...;i=...;...`: printable, no spaces.
    (!c.is_empty() && c.len() < 1024 && c.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| c.to_string())
}

/// Writes the cursor where the next start finds it, in one step (a crash mid-write
/// leaves the old one).
fn save_cursor(path: &Path, cursor: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(cursor.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Reads the journal until `stop`, starting journalctl again whenever it ends.
// Long on purpose: one journalctl run after another, read top to bottom (start it,
// read its entries keeping the place, end it, start again).
pub fn follow(j: &Journal, stop: &Arc<AtomicBool>, child: &Child, sink: &mut impl Sink) {
    let mut cursor = j.cursor.as_deref().and_then(saved_cursor);
    let mut first = true;
    while !stop.load(Ordering::SeqCst) && !sink.closed() {
        let mut cmd = Command::new("journalctl");
        // --all: -o json would make fields over 4 KiB null; no --quiet, so that
        // journalctl's own hints (a user that may not read the journal) reach the
        // agent's log.
        cmd.args(["--follow", "--no-pager", "--all", "--output=json"])
            .arg("--output-fields=MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME");
        let resumed = cursor.is_some();
        match &cursor {
            Some(c) => cmd.arg(format!("--after-cursor={c}")),
            None => cmd.arg("--lines=0"),
        };
        if let Some(d) = &j.directory {
            cmd.arg("--directory").arg(d);
        }
        // Alternatives of one field are ORed by journalctl; "+" ORs the rest.
        for (i, m) in j.matches.iter().enumerate() {
            if i > 0 {
                cmd.arg("+");
            }
            cmd.arg(m);
        }
        let mut proc = match cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn() {
            Ok(p) => p,
            Err(e) => {
                let e = if e.kind() == ErrorKind::NotFound {
                    std::io::Error::new(e.kind(), "journalctl is not installed")
                } else {
                    e
                };
                sink.unreadable(&e);
                pause(stop, Duration::from_secs(10));
                continue;
            }
        };
        *child.lock() = Some(proc.id());
        // A stop that came while journalctl started must not be missed.
        if stop.load(Ordering::SeqCst) {
            child.terminate();
        }
        sink.reopened(if first { "started" } else { "restarted" });
        first = false;
        let mut saved = Instant::now();
        let mut unsaved = false;
        let mut entries = 0u64;
        if let Some(out) = proc.stdout.take() {
            let mut r = BufReader::with_capacity(1 << 16, out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match mxlimit_maillog::bounded::read_line(&mut r, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.len() >= MAX_LINE => sink.too_long(),
                    Ok(_) => {
                        if let Ok(e) = serde_json::from_slice::<Entry>(&buf) {
                            entries += 1;
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default();
                            // The sink hands the line's events on before it returns
                            // (the journal waits for room in the queue rather than
                            // drop): the cursor never runs ahead of them.
                            if let Some(line) = e.line()
                                && e.recent(now, MAX_AGE)
                            {
                                sink.line(&line);
                            }
                            cursor = Some(e.cursor);
                            unsaved = true;
                        }
                    }
                }
                if unsaved && saved.elapsed() >= SAVE_EVERY {
                    keep(j, &cursor, sink);
                    (saved, unsaved) = (Instant::now(), false);
                }
            }
        }
        // Its output ended (or broke): make sure it is gone, then forget its pid
        // before it is reaped.
        {
            let mut pid = child.lock();
            let _ = proc.kill();
            *pid = None;
        }
        let status = proc.wait();
        if unsaved {
            keep(j, &cursor, sink);
        }
        if stop.load(Ordering::SeqCst) || sink.closed() {
            return;
        }
        if resumed && entries == 0 && !status.as_ref().is_ok_and(|s| s.success()) {
            // journalctl refuses a cursor it cannot find (a journal vacuumed, a file
            // edited by hand): from the end, rather than never again.
            sink.unreadable(&std::io::Error::other(
                "journalctl would not resume at the kept cursor; reading from the end",
            ));
            cursor = None;
        }
        sink.unreadable(&std::io::Error::other(format!(
            "journalctl ended ({}); started again",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        )));
        pause(stop, RESTART_AFTER);
    }
}

fn keep(j: &Journal, cursor: &Option<String>, sink: &mut impl Sink) {
    if let (Some(path), Some(c)) = (&j.cursor, cursor)
        && let Err(e) = save_cursor(path, c)
    {
        sink.unreadable(&std::io::Error::new(
            e.kind(),
            format!("cannot keep the journal cursor in {}: {e}", path.display()),
        ));
    }
}

/// Sleeps `d`, or less if told to stop.
fn pause(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_syslog_lines_the_parsers_read() {
        let e: Entry = serde_json::from_str(
            r#"{"SYSLOG_PID":"4242","MESSAGE":[113,49,58,32,233],"__REALTIME_TIMESTAMP":"1796320296372138","_PID":"12080","SYSLOG_IDENTIFIER":"sm-mta","_HOSTNAME":"vm","__CURSOR":"s=4d;i=159"}"#,
        )
        .unwrap();
        assert_eq!(
            e.line().unwrap(),
            "2026-12-03T17:51:36.372138+00:00 vm sm-mta[4242]: q1: \u{fffd}"
        );
        let line = e.line().unwrap();
        let l = mxlimit_maillog::prefix::split(&line).unwrap();
        assert_eq!((l.program, l.pid), ("sm-mta", Some(4242)));
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso_time(951_782_400_000_001),
            "2000-02-29T00:00:00.000001+00:00"
        );
        let no_message: Entry = serde_json::from_str(r#"{"__CURSOR":"c"}"#).unwrap();
        assert_eq!(no_message.line(), None);
        // Logged at 1796320296 s: recent within an hour of then, not two hours later.
        let at = Duration::from_secs(1_796_320_296);
        assert!(e.recent(at, MAX_AGE));
        assert!(!e.recent(at + Duration::from_secs(7200), MAX_AGE));
    }
}
