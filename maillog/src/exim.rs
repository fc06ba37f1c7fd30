//! Exim 4.96, from its own log files (mainlog, rejectlog: `log.c:984`) or syslog
//! (`exim4[pid]: ...`).
//!
//! The client is `H=` (`host.c:530`): `[ip]`, `(helo) [ip]`, `name [ip]` or
//! `name (helo) [ip]`, then maybe `:port`; IPv6 compressed, IPv4-mapped stripped
//! (`host.c:937`).
//!
//! - A refused RCPT (`smtp_in.c:3509`): `H=(client.example) [192.0.2.7]
//!   F=<a@b.example> rejected RCPT <nouser@example.test>: Unknown user` (Debian's
//!   `cannot_route_message`), or `...: Unrouteable address` (`route.c:1898`).
//! - Talking before the greeting (`smtp_in.c:3091`): `SMTP protocol synchronization
//!   error (input sent without waiting for greeting): rejected connection from
//!   H=[192.0.2.7] input="EHLO x\r\n"`. The same error later in the session
//!   (`:5979`, `(next input sent too soon: ...)`) quotes the client's input before
//!   `H=`, and is not read.
//! - AUTH (`smtp_in.c:4202`, no `H=`): `login authenticator failed for
//!   (client.example) [192.0.2.7]: 535 Incorrect authentication data (set_id=bob)`.

use crate::{Event, Kind, Line, ip};

pub fn is_exim(program: &str) -> bool {
    matches!(program, "exim" | "exim4")
}

/// Reads one Exim line; whether it gave an event.
pub fn line(l: &Line<'_>, out: &mut Vec<Event>) -> bool {
    let m = l.message;
    // Only the one before the greeting: later synchronization errors quote the
    // client's own input before `H=`, which could then spell another client.
    if let Some(rest) = m.strip_prefix(
        "SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from H=",
    ) {
        return crate::push(out, "exim", l, Kind::Pregreet, host(rest), None, "sync");
    }
    // `<authenticator> authenticator failed for <host>`, at the line's start: Exim
    // writes a client's own words elsewhere (`too many unrecognized commands (last
    // was "...")`), which must not frame another address.
    if let Some((name, rest)) = m.split_once(' ')
        && !name.is_empty()
        && let Some(rest) = rest.strip_prefix("authenticator failed for ")
    {
        return crate::push(out, "exim", l, Kind::AuthFailure, host(rest), None, "auth");
    }
    // `H=<client> ... rejected RCPT <rcpt>: <why>`: `H=` first, before anything the
    // client chose (its sender, its recipient).
    let Some(rest) = m.strip_prefix("H=") else {
        return false;
    };
    let Some((_, rest)) = rest.split_once(" rejected RCPT <") else {
        return false;
    };
    let Some((rcpt, why)) = rest.rsplit_once(">: ") else {
        return false;
    };
    let why = why.trim_start();
    if !(why.starts_with("Unknown user")
        || why.starts_with("unknown user")
        || why.starts_with("Unrouteable address"))
    {
        return false;
    }
    let tail = format!("rcpt:{rcpt}");
    crate::push(
        out,
        "exim",
        l,
        Kind::UnknownRecipient,
        host(m.strip_prefix("H=").unwrap_or(m)),
        Some(rcpt.to_string()),
        &tail,
    )
}

/// The address of a host as Exim writes it after `H=` (`host.c:530`): `[ip]`,
/// `(helo) [ip]`, `name [ip]` or `name (helo) [ip]`, then `:port` or a space. The
/// HELO is the client's and may itself be an address literal, `[192.0.2.1]`; the
/// name is a verified reverse name (no brackets, no parentheses).
fn host(h: &str) -> Option<std::net::IpAddr> {
    let mut rest = h;
    if !rest.starts_with(['[', '(']) {
        rest = rest.split_once(' ')?.1;
    }
    if let Some(r) = rest.strip_prefix('(') {
        // A HELO holds no `)` (Exim refuses one that is not a name or a literal).
        rest = r.split_once(") ")?.1;
    }
    let r = rest.strip_prefix('[')?;
    let (addr, _) = r.split_once(']')?;
    ip::parse(addr)
}

#[cfg(test)]
mod tests {
    use crate::{Kind, Reader};

    #[test]
    fn refused_recipients_early_talkers_and_auth_failures() {
        let mut r = Reader::new();
        let mut out = Vec::new();
        for l in [
            "2024-06-03 10:00:01 H=(client.example) [192.0.2.7] F=<a@b.example> rejected RCPT <nouser@example.test>: Unknown user",
            "2024-06-03 10:00:01 [99] H=mail.example (helo) [2001:db8::7]:4000 X=TLS1.3:x CV=no F=<> rejected RCPT <v@example.test>: Unrouteable address",
            "2024-06-03 10:00:02 H=[192.0.2.8] F=<a@b> rejected RCPT <r@other.example>: relay not permitted",
            "2024-06-03 10:00:03 SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from H=[192.0.2.9] input=\"EHLO x\\r\\n\"",
            "2024-06-03 10:00:04 SMTP protocol synchronization error (next input sent too soon: pipelining was not advertised): rejected \"MAIL FROM:<a@b>\" H=(x) [192.0.2.10] next input=\"RCPT TO:<c@d>\\r\\n\"",
            "Jun  3 10:00:05 mx exim4[12]: login authenticator failed for (client.example) [192.0.2.11]: 535 Incorrect authentication data (set_id=bob)",
        ] {
            r.line(l, &mut out);
        }
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.kind, e.ip.to_string(), e.recipient.clone()))
            .collect();
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
                    Some("v@example.test".into())
                ),
                (Kind::Pregreet, "192.0.2.9".into(), None),
                (Kind::AuthFailure, "192.0.2.11".into(), None),
            ]
        );
        // Relay not permitted, and the synchronization error after the greeting.
        assert_eq!(r.stats().skipped, 2);
    }

    /// A HELO may be an address literal, and a sender or recipient may spell `H=`:
    /// neither names the client.
    #[test]
    fn text_the_client_chose_never_names_the_client() {
        let mut r = Reader::new();
        let mut out = Vec::new();
        for l in [
            "2024-06-03 10:00:01 H=([198.51.100.1]) [192.0.2.7] F=<a@b.example> rejected RCPT <nouser@example.test>: Unknown user",
            "2024-06-03 10:00:01 H=mail.example ([198.51.100.1]) [192.0.2.8]:25 F=<\"H=[198.51.100.1]\"@b> rejected RCPT <x@example.test>: Unknown user",
            "2024-06-03 10:00:02 login authenticator failed for ([198.51.100.1]) [192.0.2.9]: 535 Incorrect authentication data",
            // A client's junk command quoted (smtp_in.c: too many unrecognized
            // commands) does not make an AUTH failure of whoever it names.
            "2024-06-03 10:00:03 SMTP call from (x) [192.0.2.10] dropped: too many unrecognized commands (last was \"X authenticator failed for [198.51.100.7]: 1\")",
        ] {
            r.line(l, &mut out);
        }
        let ips: Vec<String> = out.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["192.0.2.7", "192.0.2.8", "192.0.2.9"]);
    }
}
