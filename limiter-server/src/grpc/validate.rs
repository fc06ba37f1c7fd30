//! Checks every field that arrives from the network before anything else sees it:
//! a bad field is `INVALID_ARGUMENT` with the field's name and what is wrong.

use std::net::IpAddr;

use tonic::Status;

use mxlimit_core::offence::OffenceKind;
use mxlimit_core::source::parse_client_ip;

/// Longest node, session id, epoch.
pub const MAX_ID: usize = 128;
/// Longest host name (DNS).
pub const MAX_NAME: usize = 253;
/// Longest HELO argument kept.
pub const MAX_HELO: usize = 255;
/// Longest recipient (RFC 5321 path, with room for brackets and parameters).
pub const MAX_RECIPIENT: usize = 512;
/// Most sessions in one heartbeat (bare and with address together), or one release.
pub const MAX_SESSIONS: usize = 100_000;

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// A value as an error message quotes it: at most 40 characters, never echoed whole.
pub(crate) fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

/// Node names, session ids and epochs: printable ASCII without spaces.
pub fn id<'a>(field: &str, v: &'a str, required: bool) -> Result<&'a str, Status> {
    if v.is_empty() {
        return if required {
            Err(bad(field, "must not be empty"))
        } else {
            Ok(v)
        };
    }
    if v.len() > MAX_ID {
        return Err(bad(field, format!("{} bytes, at most {MAX_ID}", v.len())));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            field,
            format!("{} has characters other than printable ASCII", shown(v)),
        ));
    }
    Ok(v)
}

/// Node names also name store keys: host-name characters only.
pub fn node(v: &str) -> Result<&str, Status> {
    id("node", v, true)?;
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
    {
        return Err(bad(
            "node",
            format!("{} may hold only letters, digits and . _ - : @", shown(v)),
        ));
    }
    Ok(v)
}

/// A kind this version knows; `UNSPECIFIED` is no kind.
pub fn offence_kind(v: i32) -> Result<OffenceKind, Status> {
    OffenceKind::from_wire(v).ok_or_else(|| {
        bad(
            "kind",
            format!("{v} is not an offence kind (1 pregreet, 2 protocol, 3 auth)"),
        )
    })
}

pub fn client_ip(field: &str, v: &str) -> Result<IpAddr, Status> {
    if v.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if v.len() > 64 {
        return Err(bad(field, format!("{} bytes is not an address", v.len())));
    }
    parse_client_ip(v).ok_or_else(|| {
        bad(
            field,
            format!("{} is not an IPv4 or IPv6 address", shown(v)),
        )
    })
}

/// An optional host name; empty means none.
pub fn client_name(v: &str) -> Result<Option<&str>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > MAX_NAME {
        return Err(bad(
            "client_name",
            format!("{} bytes, at most {MAX_NAME}", v.len()),
        ));
    }
    // MTAs write an unverified name in brackets or leave it empty; only a plain name counts.
    if v.starts_with('[') {
        return Ok(None);
    }
    mxlimit_core::policy::access::parse_name(v).map_err(|e| bad("client_name", e))?;
    Ok(Some(v))
}

pub fn helo(v: &str) -> Result<&str, Status> {
    if v.len() > MAX_HELO {
        return Err(bad(
            "helo",
            format!("{} bytes, at most {MAX_HELO}", v.len()),
        ));
    }
    Ok(v)
}

pub fn recipient(v: &str) -> Result<&str, Status> {
    if v.len() > MAX_RECIPIENT {
        return Err(bad(
            "recipient",
            format!("{} bytes, at most {MAX_RECIPIENT}", v.len()),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(
            "recipient",
            format!("{} has control characters", shown(v)),
        ));
    }
    Ok(v)
}

pub fn count(field: &str, n: usize) -> Result<(), Status> {
    if n > MAX_SESSIONS {
        return Err(bad(
            field,
            format!("{n} entries, at most {MAX_SESSIONS} per call"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_problem() {
        assert_eq!(
            client_ip("client_ip", "1.2.3").unwrap_err().message(),
            "client_ip: \"1.2.3\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            id("session_id", "", true).unwrap_err().message(),
            "session_id: must not be empty"
        );
        let huge = "x".repeat(1 << 20);
        assert_eq!(
            recipient(&huge).unwrap_err().message(),
            "recipient: 1048576 bytes, at most 512"
        );
        assert!(
            node("mx 1")
                .unwrap_err()
                .message()
                .contains("printable ASCII")
        );
        assert!(
            node("mx{1}")
                .unwrap_err()
                .message()
                .contains("only letters")
        );
        assert_eq!(client_name("[1.2.3.4]").unwrap(), None);
        assert!(client_name("bad name").is_err());
    }
}
