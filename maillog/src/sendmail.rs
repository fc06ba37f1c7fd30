//! sendmail 8.17 (Debian's `sm-mta`, LogLevel 9).
//!
//! A recipient refused as unknown is logged without the client's address:
//! `<qid>: <nobody@example.test>... User unknown`. That is `usrerr` (`err.c:342`) for a
//! local user unknown (`deliver.c:4581`, 550 5.1.1) and for a virtusertable
//! `error:nouser User unknown` entry (`parseaddr.c:2153`, 553 5.3.0): the two lines are
//! the same. The address comes on a later line of the same queue id, when the
//! transaction ends:
//!
//! - `<qid>: from=<a@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP,
//!   daemon=MTA-v4, relay=host.example [192.0.2.7]` (`headers.c:1247`, LogLevel > 4,
//!   at QUIT, RSET, the next MAIL or an abort);
//! - `<qid>: lost input channel from [192.0.2.7] to MTA-v4 after rcpt`
//!   (`srvrsmtp.c:1569`).
//!
//! So recipients wait per queue id for their client (every line of a session carries
//! one, assigned when it starts: `envelope.c:105`). A `check_rcpt` refusal names the
//! client at once: `<qid>: ruleset=check_rcpt, arg1=<x@example.org>,
//! relay=[192.0.2.7], reject=550 5.1.1 <x@example.org>... User unknown`
//! (`parseaddr.c:3324`); 8.17.2 writes `arg1=` the same way.
//!
//! Early talkers: `rejecting commands from [192.0.2.7] [192.0.2.7] due to
//! pre-greeting traffic after 0 seconds` (`srvrsmtp.c:1439`, the host name first).
//! AUTH: `AUTH failure (LOGIN): authentication failure (-13) SASL(-13): ...,
//! relay=host.example [192.0.2.7]` (`srvrsmtp.c:1867`, LogLevel 9).
//!
//! Client addresses are `$_` (`daemon.c:3916`): `name [addr]` or `[addr]`, IPv6 as
//! `IPv6:2001:db8:0:0:0:0:0:1`, maybe followed by ` (may be forged)`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::{Event, Kind, Line, ip};

/// Sessions waiting for their client's address at most, recipients per session, and
/// bytes of all their recipients and time stamps: a log that never says `from=` must
/// not grow memory. Past a bound the oldest sessions go first (counted as dropped).
const MAX_SESSIONS: usize = 10_000;
const MAX_RECIPIENTS: usize = 100;
const MAX_BYTES: usize = 16 << 20;
/// A recipient is kept to this many bytes: it only names the event.
const MAX_RECIPIENT: usize = 512;

pub fn is_sendmail(program: &str) -> bool {
    matches!(program, "sm-mta" | "sendmail" | "sm-msp-queue")
}

/// Recipients refused as unknown, by queue id, until their client's address comes.
#[derive(Debug, Default)]
pub struct Sessions {
    waiting: HashMap<String, Waiting>,
    /// Queue ids in the order they came, to drop the oldest first.
    order: VecDeque<String>,
    /// Bytes held in `waiting`, about.
    bytes: usize,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Waiting {
    recipients: Vec<(String, String)>,
    bytes: usize,
}

impl Sessions {
    /// Reads one sendmail line; whether it mattered.
    pub fn line(&mut self, l: &Line<'_>, out: &mut Vec<Event>) -> bool {
        // `<qid>: what`; a line before the session has an id says NOQUEUE or nothing.
        let (qid, what) = match l.message.split_once(": ") {
            Some((q, w)) if !q.is_empty() && !q.contains(' ') => (q, w),
            _ => ("", l.message),
        };
        // Client addresses are read from where sendmail puts them, never from text a
        // client chose (its reverse name, a recipient, a sender): see
        // `ip::trailing_bracketed`.
        if let Some(rest) = what.strip_prefix("rejecting commands from ")
            && let Some((client, _)) = rest.rsplit_once(" due to pre-greeting traffic")
        {
            let addr = ip::trailing_bracketed(client);
            return crate::push(out, "sendmail", l, Kind::Pregreet, addr, None, "pregreet");
        }
        if let Some(rest) = what.strip_prefix("AUTH failure (") {
            let relay = rest.rsplit_once(", relay=").map(|(_, r)| r);
            let addr = relay.and_then(ip::trailing_bracketed);
            return crate::push(out, "sendmail", l, Kind::AuthFailure, addr, None, "auth");
        }
        if qid.is_empty() {
            return false;
        }
        // A check_rcpt refusal: its `relay=` cannot be told from text the client put
        // in `arg1=` (the recipient) or in `reject=`, so it waits for the session's
        // `from=` line as an unknown user does. Before the suffix test: it may end in
        // "User unknown" too.
        if let Some(rest) = what.strip_prefix("ruleset=check_rcpt, arg1=") {
            return match check_rcpt(rest) {
                Some(rcpt) => {
                    self.wait(qid, rcpt, l.time);
                    true
                }
                None => false,
            };
        }
        if let Some(rcpt) = what.strip_suffix("... User unknown") {
            self.wait(qid, rcpt, l.time);
            return true;
        }
        // `from=` ends with `relay=`, after everything the client chose (sender,
        // message id); `lost input channel from <relay> to <daemon> after <command>`.
        let client = if let Some(rest) = what.strip_prefix("from=") {
            rest.rsplit_once(", relay=").map(|(_, r)| r)
        } else if let Some(rest) = what.strip_prefix("lost input channel from ") {
            rest.rsplit_once(" to ").map(|(c, _)| c)
        } else {
            None
        };
        let Some(client) = client else {
            return false;
        };
        match ip::trailing_bracketed(client) {
            Some(addr) => {
                self.release(qid, addr, out);
                true
            }
            None => false,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn wait(&mut self, qid: &str, rcpt: &str, time: &str) {
        let rcpt = clip(unbracket(rcpt), MAX_RECIPIENT);
        let size = rcpt.len() + time.len() + 64;
        if !self.waiting.contains_key(qid) {
            // Released ids stay in `order` until here: compacting now and then keeps
            // a release O(1).
            if self.order.len() >= 2 * MAX_SESSIONS {
                let waiting = &self.waiting;
                self.order.retain(|q| waiting.contains_key(q));
            }
            self.order.push_back(qid.to_string());
        }
        let new = !self.waiting.contains_key(qid);
        // Each turn drops one session (or passes over an id released, or this one);
        // `order` bounds the turns.
        for _ in 0..self.order.len() {
            let full = new && self.waiting.len() >= MAX_SESSIONS;
            if !full && self.bytes + size <= MAX_BYTES {
                break;
            }
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if old == qid {
                self.order.push_back(old);
                continue;
            }
            if let Some(w) = self.waiting.remove(&old) {
                self.dropped += w.recipients.len() as u64;
                self.bytes = self.bytes.saturating_sub(w.bytes);
            }
        }
        let w = self.waiting.entry(qid.to_string()).or_default();
        if w.recipients.len() < MAX_RECIPIENTS {
            w.recipients.push((rcpt.to_string(), time.to_string()));
            w.bytes += size;
            self.bytes += size;
        } else {
            self.dropped += 1;
        }
    }

    fn release(&mut self, qid: &str, addr: IpAddr, out: &mut Vec<Event>) {
        let Some(w) = self.waiting.remove(qid) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(w.bytes);
        for (n, (rcpt, time)) in w.recipients.into_iter().enumerate() {
            out.push(Event {
                kind: Kind::UnknownRecipient,
                ip: addr,
                id: format!("sendmail:{qid}:{n}:{rcpt}"),
                recipient: Some(rcpt),
                time,
            });
        }
    }
}

/// The recipient of a `check_rcpt` refusal of an unknown user (`arg1=<rcpt>, relay=...,
/// reject=550 5.1.1 ... User unknown`), if that is what it refused. The recipient is
/// the client's text: it names the event, nothing more.
fn check_rcpt(rest: &str) -> Option<&str> {
    let (arg1, _) = rest.split_once(", relay=")?;
    let (_, reject) = rest.rsplit_once(", reject=")?;
    (reject.contains("User unknown") || reject.contains(" 5.1.1 ")).then_some(arg1)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

fn unbracket(a: &str) -> &str {
    let a = a.trim();
    a.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use crate::{Event, Kind, Reader};

    fn read(lines: &[&str]) -> (Vec<Event>, crate::Stats) {
        let mut r = Reader::new();
        let mut out = Vec::new();
        for l in lines {
            r.line(l, &mut out);
        }
        (out, r.stats())
    }

    #[test]
    fn unknown_users_wait_for_their_client_on_the_from_line() {
        let (ev, st) = read(&[
            "Jun  3 10:00:01 mx sm-mta[4242]: 553A0x1F004242: <nouser@example.test>... User unknown",
            "Jun  3 10:00:01 mx sm-mta[4242]: 553A0x1F004242: <other@example.test>... User unknown",
            "Jun  3 10:00:02 mx sm-mta[4242]: 553A0x1F004242: from=<a@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA-v4, relay=host.example [192.0.2.7] (may be forged)",
        ]);
        assert_eq!(ev.len(), 2);
        assert!(
            ev.iter()
                .all(|e| e.kind == Kind::UnknownRecipient && e.ip.to_string() == "192.0.2.7")
        );
        assert_eq!(ev[0].recipient.as_deref(), Some("nouser@example.test"));
        assert_eq!(ev[0].time, "Jun  3 10:00:01");
        assert_ne!(ev[0].id, ev[1].id);
        assert_eq!((st.matched, st.skipped), (3, 0));
    }

    /// As Debian's sendmail 8.17.1 logged a virtusertable catch-all's refusals in
    /// mxlimit-cli's import_log_counts_a_sendmail_virtusertable_s_refusals (through
    /// syslog(3), written as rsyslog's traditional format does).
    #[test]
    fn a_real_run_of_sendmail_8_17() {
        let (ev, st) = read(&[
            "Dec  3 15:15:39 mx sendmail[6748]: starting daemon (8.17.1.9): SMTP",
            "Dec  3 15:15:39 mx sendmail[6751]: 6B3FFdtX006751: localhost [127.0.0.1] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA",
            "Dec  3 15:15:39 mx sendmail[6752]: 6B3FFds5006752: <nobody0@mx.test>... User unknown",
            "Dec  3 15:15:39 mx sendmail[6752]: 6B3FFds5006752: <nobody1@mx.test>... User unknown",
            "Dec  3 15:15:39 mx sendmail[6752]: 6B3FFds5006752: from=<a@client.test>, size=0, class=0, nrcpts=1, proto=ESMTP, daemon=MTA, relay=[127.0.0.74]",
            "Dec  3 15:15:39 mx sendmail[6753]: 6B3FFdrm006753: <nobody0@mx.test>... User unknown",
            "Dec  3 15:15:39 mx sendmail[6753]: 6B3FFdrm006753: from=<a@client.test>, size=0, class=0, nrcpts=1, proto=ESMTP, daemon=MTA6, relay=[IPv6:2001:db8:72:0:0:0:0:9]",
        ]);
        let got: Vec<_> = ev
            .iter()
            .map(|e| (e.ip.to_string(), e.recipient.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.74".to_string(), "nobody0@mx.test".to_string()),
                ("127.0.0.74".to_string(), "nobody1@mx.test".to_string()),
                ("2001:db8:72::9".to_string(), "nobody0@mx.test".to_string()),
            ]
        );
        assert_eq!((st.matched, st.skipped), (5, 2));
    }

    #[test]
    fn a_lost_channel_names_the_client_too_and_ipv6_is_one_address() {
        let (ev, _) = read(&[
            "Jun  3 10:00:01 mx sm-mta[7]: 553A0x1F000007: <x@example.test>... User unknown",
            "Jun  3 10:00:09 mx sm-mta[7]: 553A0x1F000007: lost input channel from [IPv6:2001:db8:0:0:0:0:0:5] to MTA-v6 after rcpt",
        ]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].ip.to_string(), "2001:db8::5");
    }

    #[test]
    fn check_rcpt_refusals_of_unknown_users_count_and_relaying_denied_does_not() {
        let (ev, st) = read(&[
            "Jun  3 10:00:01 mx sm-mta[9]: 553A0x1F000009: ruleset=check_rcpt, arg1=<u@example.test>, relay=[192.0.2.9], reject=550 5.1.1 <u@example.test>... User unknown",
            "Jun  3 10:00:01 mx sm-mta[9]: 553A0x1F000009: ruleset=check_rcpt, arg1=<x@example.org>, relay=[192.0.2.9], reject=550 5.7.1 <x@example.org>... Relaying denied",
            "Jun  3 10:00:02 mx sm-mta[9]: 553A0x1F000009: from=<a@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.9]",
        ]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].recipient.as_deref(), Some("u@example.test"));
        assert_eq!(ev[0].ip.to_string(), "192.0.2.9");
        assert_eq!(st.skipped, 1);
    }

    /// A client chooses its recipients, its sender and its reverse name: none of them
    /// can make an event count for an address of its choice.
    #[test]
    fn text_the_client_chose_never_names_the_client() {
        let victim = "198.51.100.1";
        let (ev, _) = read(&[
            // A recipient that spells a relay= and a reject= of its own.
            "Jun  3 10:00:01 mx sm-mta[9]: q1: ruleset=check_rcpt, arg1=<\"x, relay=[198.51.100.1], reject=550 5.1.1 \"@example.org>, relay=[203.0.113.9], reject=550 5.7.1 <\"x, relay=[198.51.100.1], reject=550 5.1.1 \"@example.org>... Relaying denied",
            // A sender that spells a relay=.
            "Jun  3 10:00:02 mx sm-mta[9]: q1: from=<\"y, relay=[198.51.100.1]\"@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay=[203.0.113.9]",
            // A reverse name with brackets, before pre-greeting traffic.
            "Jun  3 10:00:03 mx sm-mta[10]: q2: rejecting commands from [198.51.100.1].evil.example [203.0.113.10] due to pre-greeting traffic after 0 seconds",
            // relay=%.100s cut the real address off: nothing is counted.
            "Jun  3 10:00:04 mx sm-mta[11]: q3: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): x, user=bob, relay=[198.51.100.1].aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa [203.0",
        ]);
        assert!(ev.iter().all(|e| e.ip.to_string() != victim), "{ev:?}");
        // The first line's own text says "5.1.1": the client is charged, not the victim.
        let ips: Vec<String> = ev.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["203.0.113.9", "203.0.113.10"]);
    }

    #[test]
    fn early_talkers_and_auth_failures() {
        let (ev, _) = read(&[
            "Jun  3 10:00:01 mx sm-mta[11]: 553A0x1F000011: rejecting commands from [192.0.2.11] [192.0.2.11] due to pre-greeting traffic after 0 seconds",
            "Jun  3 10:00:02 mx sm-mta[12]: 553A0x1F000012: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass failed, user=bob, relay=host.example [192.0.2.12]",
        ]);
        let got: Vec<_> = ev.iter().map(|e| (e.kind, e.ip.to_string())).collect();
        assert_eq!(
            got,
            [
                (Kind::Pregreet, "192.0.2.11".to_string()),
                (Kind::AuthFailure, "192.0.2.12".to_string())
            ]
        );
    }

    #[test]
    fn a_log_that_never_names_clients_stays_bounded() {
        let mut r = Reader::new();
        let mut out = Vec::new();
        for i in 0..(super::MAX_SESSIONS + 500) {
            r.line(
                &format!("Jun  3 10:00:01 mx sm-mta[1]: q{i}: <u@example.test>... User unknown"),
                &mut out,
            );
        }
        assert!(out.is_empty());
        assert_eq!(r.stats().dropped, 500);
        assert!(r.sendmail.waiting.len() <= super::MAX_SESSIONS);
    }
}
