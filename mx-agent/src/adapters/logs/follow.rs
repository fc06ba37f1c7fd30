//! Follows a log file as `tail -F` does: from its end when the agent starts, through
//! rotation by rename (the new file is read from its start, and the old one as long
//! as the logger may still write to it), copytruncate (read again from the start),
//! deletion (the new file is waited for) and lines written in pieces. Runs on a thread
//! of its own: a slow disk never stalls the adapters.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Lines longer than this are dropped (counted), not buffered: a binary file or a
/// runaway line must not grow memory.
pub const MAX_LINE: usize = mxlimit_maillog::bounded::MAX_LINE;

/// How long a rotated file is still read after it last grew. logrotate makes the new
/// file (`create`) before its `postrotate` tells the logger to reopen (rsyslog's HUP):
/// until then the logger writes to the old one.
pub const ROTATED_DRAIN: Duration = Duration::from_secs(10);

/// What the follower reports besides lines.
pub trait Sink {
    fn line(&mut self, line: &str);
    /// A line longer than [`MAX_LINE`] was skipped.
    fn too_long(&mut self);
    /// Following began (`started`: at the end of the file, if there is one), or the
    /// file was rotated, truncated, deleted, or appeared.
    fn reopened(&mut self, why: &'static str);
    /// The file cannot be read (not a regular file, no permission, a read error);
    /// it is tried again every poll.
    fn unreadable(&mut self, error: &std::io::Error);
    /// Whoever takes the lines is gone: stop.
    fn closed(&self) -> bool {
        false
    }
}

/// Follows `path` until `stop`, checking for more every `poll`.
pub fn follow(path: &Path, poll: Duration, stop: &Arc<AtomicBool>, sink: &mut impl Sink) {
    let mut cur: Option<Open> = match Open::at_end(path) {
        Ok(o) => Some(o),
        Err(e) => {
            if e.kind() != ErrorKind::NotFound {
                sink.unreadable(&e);
            }
            None
        }
    };
    sink.reopened(if cur.is_some() { "started" } else { "waiting" });
    let mut lines = Lines::default();
    let mut chunk = vec![0u8; 64 * 1024];
    // The file rotated away, still read while the logger may write to it.
    let mut rotated: Option<Rotated> = None;
    while !stop.load(Ordering::Relaxed) && !sink.closed() {
        if let Some(r) = &mut rotated
            && !r.drain(&mut chunk, sink)
        {
            rotated = None;
        }
        let Some(f) = cur.as_mut() else {
            // Not there (yet, or deleted and not made again): a file that appears
            // later is new, and is read from its start.
            match Open::at_start(path) {
                Ok(o) => {
                    cur = Some(o);
                    sink.reopened("created");
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => sink.unreadable(&e),
            }
            std::thread::sleep(poll);
            continue;
        };
        match f.read_to_end(&mut chunk, &mut lines, sink) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                // Tried again at the same place: reopening would read it all again.
                sink.unreadable(&e);
                std::thread::sleep(poll);
                continue;
            }
        }
        // At the end of what is open: has the file under the name changed?
        match std::fs::metadata(path) {
            Ok(m) if m.ino() != f.ino || m.dev() != f.dev => {
                // Renamed away and made again: the new file is read from its start,
                // and the old one still, until it has not grown for a while.
                let _ = f.read_to_end(&mut chunk, &mut lines, sink);
                match Open::at_start(path) {
                    Ok(o) => {
                        if let Some(mut r) = rotated.take() {
                            r.finish(&mut chunk, sink);
                        }
                        let old = std::mem::replace(f, o);
                        rotated = Some(Rotated {
                            open: old,
                            lines: std::mem::take(&mut lines),
                            grew: std::time::Instant::now(),
                        });
                        sink.reopened("rotated");
                    }
                    Err(e) => {
                        lines.flush(sink);
                        sink.unreadable(&e);
                        cur = None;
                    }
                }
                continue;
            }
            Ok(m) if m.len() < f.pos => {
                // Cut short in place (copytruncate): what is there now is new.
                lines.clear();
                if f.file.seek(SeekFrom::Start(0)).is_ok() {
                    f.pos = 0;
                }
                sink.reopened("truncated");
                continue;
            }
            Ok(_) => f.gone = false,
            // No file under the name (deleted, or renamed and not made again yet):
            // what is open is still read, since a logger may write to it until told
            // to reopen; the new file is taken up when it appears.
            Err(_) => {
                if !f.gone {
                    f.gone = true;
                    sink.reopened("deleted");
                }
            }
        }
        std::thread::sleep(poll);
    }
}

/// A file rotated away, and its last line's beginning.
struct Rotated {
    open: Open,
    lines: Lines,
    grew: std::time::Instant,
}

impl Rotated {
    /// Reads what the logger added; whether to keep reading it.
    fn drain(&mut self, chunk: &mut [u8], sink: &mut impl Sink) -> bool {
        match self.open.read_to_end(chunk, &mut self.lines, sink) {
            Ok(true) => {
                self.grew = std::time::Instant::now();
                true
            }
            Ok(false) if self.grew.elapsed() < ROTATED_DRAIN => true,
            _ => {
                self.lines.flush(sink);
                false
            }
        }
    }

    /// Reads it to its end, for good (the file rotated again).
    fn finish(&mut self, chunk: &mut [u8], sink: &mut impl Sink) {
        let _ = self.open.read_to_end(chunk, &mut self.lines, sink);
        self.lines.flush(sink);
    }
}

struct Open {
    file: File,
    ino: u64,
    dev: u64,
    pos: u64,
    /// No file has the name now.
    gone: bool,
}

impl Open {
    fn at_end(path: &Path) -> std::io::Result<Open> {
        let mut o = Open::at_start(path)?;
        o.pos = o.file.seek(SeekFrom::End(0))?;
        Ok(o)
    }

    fn at_start(path: &Path) -> std::io::Result<Open> {
        // Only regular files: a FIFO or a device would block the read, and the
        // follower with it.
        let m = std::fs::metadata(path)?;
        if !m.is_file() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let file = File::open(path)?;
        let m = file.metadata()?;
        Ok(Open {
            file,
            ino: m.ino(),
            dev: m.dev(),
            pos: 0,
            gone: false,
        })
    }

    /// Reads what is there now into `lines`; whether anything was.
    fn read_to_end(
        &mut self,
        chunk: &mut [u8],
        lines: &mut Lines,
        sink: &mut impl Sink,
    ) -> std::io::Result<bool> {
        let mut any = false;
        loop {
            match self.file.read(chunk) {
                Ok(0) => return Ok(any),
                Ok(n) => {
                    self.pos += n as u64;
                    lines.push(&chunk[..n], sink);
                    any = true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Bytes into lines, a line split over reads put together.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    /// Inside a line already too long: skip to its end.
    skipping: bool,
}

impl Lines {
    fn push(&mut self, mut bytes: &[u8], sink: &mut impl Sink) {
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            let (head, rest) = bytes.split_at(nl);
            bytes = &rest[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.len() + head.len() > MAX_LINE {
                self.partial.clear();
                sink.too_long();
                continue;
            }
            self.partial.extend_from_slice(head);
            // Logs are bytes: a Latin-1 recipient is read, not refused.
            sink.line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
            sink.too_long();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// The end of a file: a last line without its newline is still a line.
    fn flush(&mut self, sink: &mut impl Sink) {
        if !self.skipping && !self.partial.is_empty() {
            sink.line(&String::from_utf8_lossy(&self.partial));
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Lines, overlong lines, and why it reopened.
    type Record = (Vec<String>, u32, Vec<&'static str>);

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Record>>);
    impl Sink for Seen {
        fn line(&mut self, l: &str) {
            self.0.lock().unwrap().0.push(l.to_string());
        }
        fn too_long(&mut self) {
            self.0.lock().unwrap().1 += 1;
        }
        fn reopened(&mut self, why: &'static str) {
            self.0.lock().unwrap().2.push(why);
        }
        fn unreadable(&mut self, _: &std::io::Error) {
            self.0.lock().unwrap().2.push("unreadable");
        }
    }

    /// A follower on a thread, and a way to wait for what it has seen.
    struct Running {
        seen: Seen,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }
    impl Running {
        fn start(path: &Path) -> Running {
            let seen = Seen::default();
            let stop = Arc::new(AtomicBool::new(false));
            let (p, mut s, st) = (path.to_path_buf(), seen.clone(), stop.clone());
            let thread =
                std::thread::spawn(move || follow(&p, Duration::from_millis(5), &st, &mut s));
            let r = Running {
                seen,
                stop,
                thread: Some(thread),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !["started", "waiting"]
                .iter()
                .any(|w| r.seen.0.lock().unwrap().2.contains(w))
            {
                assert!(Instant::now() < deadline, "never started");
                std::thread::sleep(Duration::from_millis(5));
            }
            r
        }
        fn reopened_for(&self, why: &str) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.seen.0.lock().unwrap().2.contains(&why) {
                assert!(Instant::now() < deadline, "never {why}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        fn lines_until(&self, n: usize) -> Vec<String> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = self.seen.0.lock().unwrap().0.clone();
                if got.len() >= n {
                    return got;
                }
                assert!(Instant::now() < deadline, "only {got:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn append(path: &Path, text: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text).unwrap();
    }

    #[test]
    fn starts_at_the_end_and_joins_lines_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, b"old line\n");
        let r = Running::start(&log);
        // The follower is at the end once a marker written now is its first line.
        append(&log, b"first\n");
        assert_eq!(r.lines_until(1), ["first"]);
        append(&log, b"par");
        append(&log, b"tial\xe9 line\n");
        assert_eq!(r.lines_until(2)[1], "partial\u{fffd} line");
    }

    #[test]
    fn survives_rename_rotation_copytruncate_and_deletion_losing_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, b"");
        let r = Running::start(&log);
        append(&log, b"a\n");
        r.lines_until(1);
        // logrotate's default: rename, then the logger makes a new file. A line
        // written to the old file after the rename is still read.
        std::fs::rename(&log, dir.path().join("mail.log.1")).unwrap();
        append(&dir.path().join("mail.log.1"), b"b\n");
        append(&log, b"c\n");
        assert_eq!(r.lines_until(3), ["a", "b", "c"]);
        // copytruncate: copied away, cut to nothing in place, written again. (A file
        // cut and written back to its old length before the follower looks is
        // indistinguishable from one untouched, as for `tail -F`: the test waits.)
        std::fs::write(&log, b"").unwrap();
        r.reopened_for("truncated");
        append(&log, b"d\n");
        assert_eq!(r.lines_until(4)[3], "d");
        // Deleted, and made again later.
        std::fs::remove_file(&log).unwrap();
        r.reopened_for("deleted");
        append(&log, b"e\n");
        assert_eq!(r.lines_until(5)[4], "e");
    }

    #[test]
    fn a_rotated_file_is_still_read_while_the_logger_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        let old = dir.path().join("mail.log.1");
        append(&log, b"");
        let r = Running::start(&log);
        append(&log, b"a\n");
        r.lines_until(1);
        // logrotate with `create`: renamed, a new file made, and the logger (not yet
        // told to reopen) writes on to the old one, half a line first.
        std::fs::rename(&log, &old).unwrap();
        append(&log, b"");
        r.reopened_for("rotated");
        append(&old, b"b, in pie");
        append(&log, b"c\n");
        r.lines_until(2);
        append(&old, b"ces\n");
        // postrotate's HUP: the logger reopens the new file.
        append(&log, b"d\n");
        let mut got = r.lines_until(4);
        got.sort();
        assert_eq!(got, ["a", "b, in pieces", "c", "d"]);
    }

    #[test]
    fn a_fifo_is_refused_not_blocked_on_and_the_follower_stops() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let r = Running::start(&fifo);
        r.reopened_for("unreadable");
        // Dropping `r` stops and joins the thread: it must not hang in an open.
    }

    #[test]
    fn an_overlong_line_is_dropped_and_counted_and_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        append(&log, b"");
        let r = Running::start(&log);
        append(&log, &vec![b'x'; 3 * MAX_LINE]);
        append(&log, b"\nafter\n");
        assert_eq!(r.lines_until(1), ["after"]);
        assert_eq!(r.seen.0.lock().unwrap().1, 1);
    }
}
