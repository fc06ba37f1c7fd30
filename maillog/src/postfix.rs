//! Postfix 3.7: smtpd and postscreen.
//!
//! smtpd's refusals are `log_whatsup()` (`smtpd_check.c:1005`): `"%s: %s: %s from %s:
//! %s;"` then ` from=<%s> to=<%s> proto=%s helo=<%s>`, the client as `name[addr]`
//! (`:port` with `smtpd_client_port_logging`), IPv6 plain (`unknown[2001:db8::1]`).
//! An unknown recipient, whichever table refused it, reads `"<%s>: %s rejected: User
//! unknown%s"` (local `:5396`, virtual mailbox `:5412`, relay `:5428`, virtual alias
//! via `resolve.c:513`):
//!
//! `NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <nouser@example.test>:
//! Recipient address rejected: User unknown in local recipient table;
//! from=<a@b.example> to=<nouser@example.test> proto=ESMTP helo=<client.example>`
//!
//! (`reject_warning` instead of `reject` refuses nothing and is not counted.)
//! AUTH: `warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: ...`
//! (`smtpd_sasl_glue.c:347`).
//!
//! postscreen writes clients as `[addr]:port` (`postscreen_endpt.c:123`):
//! `PREGREET 11 after 0.21 from [192.0.2.7]:52311: EHLO x\r\n`
//! (`postscreen_early.c:246`), `NON-SMTP COMMAND from [192.0.2.7]:52311 after
//! CONNECT: GET ...` (`postscreen_smtpd.c:1017`), `BARE NEWLINE from
//! [192.0.2.7]:52311 after ...` (`:884`).

use crate::{Event, Kind, Line, ip};

pub fn is_postfix(program: &str) -> bool {
    // `postfix/smtpd`, and `postfix-out/smtpd` for a second instance.
    program.starts_with("postfix")
        && (program.ends_with("/smtpd") || program.ends_with("/postscreen"))
}

/// Reads one line of smtpd or postscreen; whether it gave an event.
pub fn line(l: &Line<'_>, out: &mut Vec<Event>) -> bool {
    let m = l.message;
    if l.program.ends_with("/postscreen") {
        return postscreen(l, m, out);
    }
    if let Some(rest) = m.strip_prefix("warning: ")
        && let Some((client, what)) = rest.split_once(": SASL ")
        && what.contains(" authentication failed")
    {
        return push(out, l, Kind::AuthFailure, client, None, "auth");
    }
    // `<queue id or NOQUEUE>: reject: RCPT from <client>: <reply>; from=...`
    let Some((qid, rest)) = m.split_once(": reject: RCPT from ") else {
        return false;
    };
    let Some((client, reply)) = rest.split_once(": ") else {
        return false;
    };
    if !reply.contains("rejected: User unknown") {
        return false;
    }
    let rcpt = reply
        .split_once('<')
        .and_then(|(_, r)| r.split_once(">:"))
        .map(|(r, _)| r.to_string());
    let id_tail = format!("{qid}:{}", rcpt.as_deref().unwrap_or(""));
    push(out, l, Kind::UnknownRecipient, client, rcpt, &id_tail)
}

fn postscreen(l: &Line<'_>, m: &str, out: &mut Vec<Event>) -> bool {
    let kind = if m.starts_with("PREGREET ") {
        Kind::Pregreet
    } else if m.starts_with("NON-SMTP COMMAND from ") || m.starts_with("BARE NEWLINE from ") {
        Kind::ProtocolError
    } else {
        return false;
    };
    let Some((_, client)) = m.split_once(" from ") else {
        return false;
    };
    push(out, l, kind, client, None, kind.as_str())
}

/// `name[addr]`, `name[addr]:port` (smtpd checks that a name is a valid host name: no
/// brackets), `[addr]:port ...`: the first bracket.
fn push(
    out: &mut Vec<Event>,
    l: &Line<'_>,
    kind: Kind,
    client: &str,
    recipient: Option<String>,
    tail: &str,
) -> bool {
    let addr = ip::first_bracketed(client);
    crate::push(out, "postfix", l, kind, addr, recipient, tail)
}

#[cfg(test)]
mod tests {
    use crate::{Kind, Reader};

    fn kinds(lines: &[&str]) -> Vec<(Kind, String, Option<String>)> {
        let mut r = Reader::new();
        let mut out = Vec::new();
        for l in lines {
            r.line(l, &mut out);
        }
        out.into_iter()
            .map(|e| (e.kind, e.ip.to_string(), e.recipient))
            .collect()
    }

    #[test]
    fn unknown_recipients_of_every_table_count_and_other_refusals_do_not() {
        let got = kinds(&[
            "Jun  3 10:00:01 mx postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <nouser@example.test>: Recipient address rejected: User unknown in local recipient table; from=<a@b.example> to=<nouser@example.test> proto=ESMTP helo=<client.example>",
            "Jun 03 10:00:02 mx postfix/smtpd[1234]: 4XyZ1234: reject: RCPT from mail.example[2001:db8::7]:52311: 550 5.1.1 <v@mx.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<> to=<v@mx.test> proto=ESMTP helo=<x>",
            "Jun  3 10:00:03 mx postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[192.0.2.8]: 554 5.7.1 <r@other.example>: Relay access denied; from=<a@b> to=<r@other.example> proto=SMTP",
            "Jun  3 10:00:04 mx postfix/smtpd[1234]: NOQUEUE: reject_warning: RCPT from unknown[192.0.2.9]: 550 5.1.1 <w@example.test>: Recipient address rejected: User unknown in local recipient table; from=<> to=<w@example.test> proto=ESMTP",
        ]);
        assert_eq!(
            got,
            [
                (
                    Kind::UnknownRecipient,
                    "192.0.2.7".into(),
                    Some("nouser@example.test".into())
                ),
                (
                    Kind::UnknownRecipient,
                    "2001:db8::7".into(),
                    Some("v@mx.test".into())
                ),
            ]
        );
    }

    #[test]
    fn postscreen_offences_and_sasl_failures() {
        let got = kinds(&[
            "Jun  3 10:00:01 mx postfix/postscreen[77]: CONNECT from [192.0.2.7]:52311 to [198.51.100.1]:25",
            "Jun  3 10:00:01 mx postfix/postscreen[77]: PREGREET 11 after 0.21 from [192.0.2.7]:52311: EHLO x\\r\\n",
            "Jun  3 10:00:02 mx postfix/postscreen[77]: NON-SMTP COMMAND from [2001:db8::9]:4000 after CONNECT: GET GET / HTTP/1.1",
            "Jun  3 10:00:03 mx postfix/postscreen[77]: BARE NEWLINE from [192.0.2.10]:4001 after DATA",
            "Jun  3 10:00:04 mx postfix/postscreen[77]: HANGUP after 0.5 from [192.0.2.11]:4002 in tests before SMTP handshake",
            "Jun  3 10:00:05 mx postfix/smtpd[8]: warning: unknown[192.0.2.12]: SASL LOGIN authentication failed: authentication failure, sasl_username=bob",
        ]);
        let got: Vec<_> = got.into_iter().map(|(k, ip, _)| (k, ip)).collect();
        assert_eq!(
            got,
            [
                (Kind::Pregreet, "192.0.2.7".to_string()),
                (Kind::ProtocolError, "2001:db8::9".to_string()),
                (Kind::ProtocolError, "192.0.2.10".to_string()),
                (Kind::AuthFailure, "192.0.2.12".to_string()),
            ]
        );
    }

    /// As Debian's Postfix 3.7.11 wrote them to its maillog_file in a run of
    /// e2e/tests/logs.rs: a pregreet counts once, the HANGUP after it not at all.
    #[test]
    fn a_real_postscreen_s_pregreet_and_the_hangup_after_it() {
        let got = kinds(&[
            "Dec 03 16:59:54 early1 postfix/postscreen[8811]: CONNECT from [127.0.74.1]:59421 to [127.0.0.1]:41853",
            "Dec 03 16:59:54 early1 postfix/postscreen[8811]: PREGREET 20 after 0 from [127.0.74.1]:59421: EHLO early.example\\r\\n",
            "Dec 03 16:59:54 early1 postfix/postscreen[8811]: HANGUP after 0 from [127.0.74.1]:59421 in tests after SMTP handshake",
            "Dec 03 16:59:54 early1 postfix/postscreen[8811]: DISCONNECT [127.0.74.1]:59421",
            "Dec 03 16:59:56 early1 postfix/postscreen[8811]: PASS NEW [127.0.74.1]:59333",
        ]);
        assert_eq!(got, [(Kind::Pregreet, "127.0.74.1".to_string(), None)]);
    }
}
