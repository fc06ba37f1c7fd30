//! MTA log lines as the events mxlimit counts.
//!
//! Every MTA already logs each refusal it makes, including the ones a milter or a
//! policy service never sees: sendmail's virtusertable `error:` and `check_rcpt`
//! refusals, Postfix's recipient tables and postscreen, Exim's ACLs. [`Reader`] turns
//! the lines of a log (syslog's `/var/log/mail.log`, Postfix's `maillog_file`, Exim's
//! `mainlog` or `rejectlog`) into [`Event`]s, one line at a time, with bounded state.
//!
//! Every format matched here is quoted from the MTA's source, with file and line, in
//! the module that parses it: [`sendmail`], [`postfix`], [`exim`]. A line that matches
//! none is counted in [`Stats::skipped`] and otherwise ignored; no input panics.

pub mod bounded;
pub mod exim;
mod ip;
pub mod postfix;
pub mod prefix;
pub mod sendmail;

use std::net::IpAddr;

pub use prefix::{Line, Stamp, stamp};

/// What a source did, as the MTA logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A recipient refused as unknown, whatever refused it.
    UnknownRecipient,
    /// Talked before the greeting (sendmail's greet_pause, postscreen's PREGREET,
    /// Exim's synchronization check).
    Pregreet,
    /// Another protocol offence: postscreen's NON-SMTP COMMAND or BARE NEWLINE.
    ProtocolError,
    /// A failed SMTP AUTH.
    AuthFailure,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::UnknownRecipient,
        Kind::Pregreet,
        Kind::ProtocolError,
        Kind::AuthFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UnknownRecipient => "unknown_recipient",
            Kind::Pregreet => "pregreet",
            Kind::ProtocolError => "protocol_error",
            Kind::AuthFailure => "auth_failure",
        }
    }
}

/// One thing a source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// The client, canonical (an IPv4-mapped address is its IPv4 address).
    pub ip: IpAddr,
    /// The refused recipient, for [`Kind::UnknownRecipient`].
    pub recipient: Option<String>,
    /// The line's time stamp as written (formats differ between loggers).
    pub time: String,
    /// Names this event among the log's: MTA, process, queue id or session, and the
    /// recipient, so that reading a line twice can be told from two events.
    pub id: String,
}

/// Appends the event of line `l` for `addr`, when the address could be read; whether
/// it could. The id is the MTA, the process, the time, the client and `tail`.
fn push(
    out: &mut Vec<Event>,
    mta: &str,
    l: &Line<'_>,
    kind: Kind,
    addr: Option<IpAddr>,
    recipient: Option<String>,
    tail: &str,
) -> bool {
    let Some(ip) = addr else {
        return false;
    };
    out.push(Event {
        kind,
        ip,
        recipient,
        time: l.time.to_string(),
        // The client too: postscreen is one process for all clients, and two of them
        // can offend in the same second.
        id: format!("{mta}:{}:{}:{ip}:{tail}", l.pid.unwrap_or(0), l.time),
    });
    true
}

/// Counts of what a [`Reader`] has read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    /// Lines that gave an event, or that an event needs (sendmail's `from=` lines).
    pub matched: u64,
    /// Lines of no interest, or that no format matched.
    pub skipped: u64,
    /// sendmail recipients whose client address never came (their session's state was
    /// dropped to stay within bounds).
    pub dropped: u64,
}

/// Reads one log, line by line. The sendmail parser keeps a bounded state per queue
/// id (the client address comes on a later line); the others are stateless.
#[derive(Debug, Default)]
pub struct Reader {
    sendmail: sendmail::Sessions,
    stats: Stats,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// The events of one line (without its newline), appended to `out`.
    pub fn line(&mut self, text: &str, out: &mut Vec<Event>) {
        self.stats.lines += 1;
        let before = out.len();
        let used = match prefix::split(text) {
            Some(l) if sendmail::is_sendmail(l.program) => self.sendmail.line(&l, out),
            Some(l) if postfix::is_postfix(l.program) => postfix::line(&l, out),
            Some(l) if exim::is_exim(l.program) => exim::line(&l, out),
            _ => false,
        };
        if used || out.len() > before {
            self.stats.matched += 1;
        } else {
            self.stats.skipped += 1;
        }
        self.stats.dropped = self.sendmail.dropped();
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}
