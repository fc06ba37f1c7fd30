//! The sendmail access file, read as is: `Tag:key<whitespace>value` per line.
//!
//! Keys are an address (`206.81.85.12`), a dotted prefix (`206.81.85`), a CIDR block
//! (`206.81.85.0/26`, an mxlimit extension), an IPv6 address or prefix (`IPv6:2001:db8`),
//! a host or domain name (`customerdomain.com`, also matching its subdomains), or empty
//! (the wildcard: `ClientRate:` alone). Tags mxlimit does not use (`From:`, `To:`,
//! `Spam:` ...) are skipped and counted; untagged entries apply to connections, as
//! sendmail's `Connect` lookups fall back to them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::source::strip_prefix_ci;

/// The tags mxlimit acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tag {
    Connect,
    ClientRate,
    ClientConn,
    GreetPause,
    /// mxlimit: connections per network per window.
    NetRate,
    /// mxlimit: concurrent sessions per network.
    NetConn,
}

impl Tag {
    pub const ALL: [Tag; 6] = [
        Tag::Connect,
        Tag::ClientRate,
        Tag::ClientConn,
        Tag::GreetPause,
        Tag::NetRate,
        Tag::NetConn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Connect => "Connect",
            Tag::ClientRate => "ClientRate",
            Tag::ClientConn => "ClientConn",
            Tag::GreetPause => "GreetPause",
            Tag::NetRate => "NetRate",
            Tag::NetConn => "NetConn",
        }
    }

    fn parse(word: &str) -> Option<Tag> {
        Tag::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(word))
    }
}

/// Tags of sendmail's access map that do not concern connections; skipped.
const OTHER_SENDMAIL_TAGS: &[&str] = &[
    "From",
    "To",
    "Spam",
    "Srv_Features",
    "Try_TLS",
    "TLS_Clt",
    "TLS_Srv",
    "TLS_Rcpt",
    "TLS_Srv_Features",
    "Auth",
    "Mail",
    "Rcpt",
    "Cert",
    "CERTISSUER",
    "CERTSUBJECT",
    "ClientRateX",
    "MaxRcpts",
    "QGRP",
    "Shared",
    "Dnsbl",
    "Discard",
];

/// What an entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The empty key: every source.
    Any,
    /// An address or network.
    Net(IpNet),
    /// A host name or domain (lower case, no trailing dot); matches its subdomains.
    Name(String),
}

/// A `Connect:` (or untagged) right-hand side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAction {
    /// `OK` or `RELAY`: accepted without limits, bans or counting.
    Exempt,
    /// `REJECT`, `DISCARD` or `ERROR:...`: refused with this reply.
    Refuse {
        code: u16,
        enhanced: String,
        text: String,
    },
    /// `SKIP`: stop looking; the defaults apply.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Connect(ConnectAction),
    /// A limit (0 = unlimited) or, for `GreetPause`, milliseconds.
    Number(u32),
}

/// Where an entry was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One access entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub tag: Tag,
    pub key: Key,
    pub value: Value,
    /// The left-hand side as written, e.g. `ClientRate:67.92.16`: the `rule` of verdicts.
    pub rule: String,
    /// Untagged entries yield to a tagged entry of the same key.
    pub untagged: bool,
    pub origin: Origin,
}

/// An access file, parsed.
#[derive(Debug, Default)]
pub struct AccessFile {
    pub entries: Vec<Entry>,
    /// Entries skipped because their tag concerns something else, by tag.
    pub skipped: BTreeMap<String, usize>,
    /// Things that load but deserve the operator's eye.
    pub warnings: Vec<String>,
}

/// One broken line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub origin: Origin,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.reason)
    }
}

/// Parses one access file. Every broken line is reported, not only the first.
pub fn parse(text: &str, file: &Path) -> Result<AccessFile, Vec<LineError>> {
    parse_bytes(text.as_bytes(), file)
}

/// Parses one access file as sendmail reads it: bytes, not necessarily UTF-8 (access
/// files are often Latin-1). A line that is not UTF-8 is read as Latin-1: in a comment
/// that is nothing, in a name key it makes a key no host name matches (skipped, with a
/// warning), and in a value it is an error that names the line.
pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<AccessFile, Vec<LineError>> {
    let mut out = AccessFile::default();
    let mut errors = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            line: i + 1,
        };
        let (text, utf8) = match std::str::from_utf8(raw) {
            Ok(t) => (std::borrow::Cow::Borrowed(t), true),
            Err(_) => (raw.iter().map(|&b| b as char).collect(), false),
        };
        let line = text.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key_text = line.split(char::is_whitespace).next().unwrap_or("");
        if !key_text.is_ascii() {
            out.warnings.push(format!(
                "{origin}: key {} is not ASCII{}: no host name matches it (names are \
                 matched in their ASCII form, xn-- for international ones); skipped",
                shown(key_text),
                if utf8 {
                    ""
                } else {
                    " (and not UTF-8: read as Latin-1)"
                }
            ));
            continue;
        }
        if !utf8 {
            let at = raw.iter().position(|b| !b.is_ascii()).unwrap_or(0);
            errors.push(LineError {
                origin,
                reason: format!(
                    "byte 0x{:02X} at column {} is not UTF-8 (save the file as UTF-8, or \
                     keep such bytes to comments)",
                    raw[at],
                    at + 1
                ),
            });
            continue;
        }
        match parse_line(line, &origin) {
            Ok(Parsed::Entry(e)) => {
                if let Value::Connect(ConnectAction::Refuse { .. }) = &e.value
                    && line_value(line).eq_ignore_ascii_case("DISCARD")
                {
                    out.warnings.push(format!(
                        "{origin}: DISCARD cannot discard mail before it exists; \
                         mxlimit refuses the connection as with REJECT"
                    ));
                }
                out.entries.push(e)
            }
            Ok(Parsed::Skipped(tag)) => {
                let known = tag.starts_with('(')
                    || OTHER_SENDMAIL_TAGS
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&tag));
                if !known && !out.skipped.contains_key(&tag) {
                    out.warnings.push(format!(
                        "{origin}: unknown tag {tag:?}: its entries are skipped (a typo of {}?)",
                        Tag::ALL.map(Tag::as_str).join(", ")
                    ));
                }
                *out.skipped.entry(tag).or_default() += 1
            }
            Err(reason) => errors.push(LineError { origin, reason }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A value as a message quotes it: at most 40 characters.
fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

enum Parsed {
    Entry(Entry),
    Skipped(String),
}

fn line_value(line: &str) -> &str {
    line.split_once(|c: char| c.is_whitespace())
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

fn parse_line(line: &str, origin: &Origin) -> Result<Parsed, String> {
    let (lhs, value) = match line.split_once(|c: char| c.is_whitespace()) {
        Some((l, v)) => (l, v.trim()),
        None => return Err(format!("{line:?} has a key but no value")),
    };
    let (tag, key_text, untagged) = match split_tag(lhs) {
        TagSplit::Tagged(tag, key) => (tag, key, false),
        TagSplit::Other(word) => return Ok(Parsed::Skipped(word.to_string())),
        TagSplit::Untagged(key) => {
            // Untagged sender/recipient entries (`user@`, `a@b.c`) are not sources.
            if key.contains('@') {
                return Ok(Parsed::Skipped("(untagged address)".into()));
            }
            (Tag::Connect, key, true)
        }
    };
    let key = parse_key(key_text).map_err(|e| format!("key {key_text:?}: {e}"))?;
    if untagged && key == Key::Any {
        return Err("an untagged entry needs a key".into());
    }
    let value = parse_value(tag, value)?;
    let rule = if untagged {
        key_text.to_string()
    } else {
        format!("{}:{}", tag.as_str(), key_text)
    };
    Ok(Parsed::Entry(Entry {
        tag,
        key,
        value,
        rule,
        untagged,
        origin: origin.clone(),
    }))
}

enum TagSplit<'a> {
    Tagged(Tag, &'a str),
    Other(&'a str),
    Untagged(&'a str),
}

fn split_tag(lhs: &str) -> TagSplit<'_> {
    if strip_prefix_ci(lhs, "ipv6:").is_some() {
        return TagSplit::Untagged(lhs);
    }
    let Some((word, rest)) = lhs.split_once(':') else {
        return TagSplit::Untagged(lhs);
    };
    if let Some(tag) = Tag::parse(word) {
        return TagSplit::Tagged(tag, rest);
    }
    // A bare IPv6 address such as `dead:beef::1` looks like a tag; it is a key.
    if parse_key(lhs).is_ok_and(|k| matches!(k, Key::Net(_))) {
        return TagSplit::Untagged(lhs);
    }
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return TagSplit::Other(word);
    }
    TagSplit::Untagged(lhs)
}

/// Parses the key part of an entry.
pub fn parse_key(text: &str) -> Result<Key, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Key::Any);
    }
    let t = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(t);
    if let Some(v6) = strip_prefix_ci(t, "ipv6:") {
        return parse_ipv6_key(v6).map(Key::Net);
    }
    if t.contains('/') {
        let net: IpNet = t
            .parse()
            .map_err(|_| format!("{t:?} is not a CIDR block"))?;
        if net.trunc() != net {
            return Err(format!(
                "{t:?} has host bits set; the block is {}",
                net.trunc()
            ));
        }
        return Ok(Key::Net(net));
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_dotted_ipv4(t).map(Key::Net);
    }
    if t.contains(':') {
        return parse_ipv6_key(t).map(Key::Net);
    }
    parse_name(t).map(Key::Name)
}

/// `206.81.85` is 206.81.85.0/24, as sendmail matches whole octets.
fn parse_dotted_ipv4(t: &str) -> Result<IpNet, String> {
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{t:?} is not an IPv4 address or dotted prefix"));
    }
    let mut octets = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        octets[i] = p
            .parse()
            .map_err(|_| format!("{t:?}: {p:?} is not an octet (0-255)"))?;
    }
    let len = 8 * parts.len() as u8;
    Ok(IpNet::new_assert(IpAddr::V4(Ipv4Addr::from(octets)), len))
}

/// A full IPv6 address, a CIDR block, or 1-7 leading 16-bit groups without `::`
/// (`2001:db8` = 2001:db8::/32), which is how sendmail strips IPv6 keys.
fn parse_ipv6_key(t: &str) -> Result<IpNet, String> {
    if t.contains('/') {
        let net: IpNet = t
            .parse()
            .map_err(|_| format!("{t:?} is not an IPv6 CIDR block"))?;
        return Ok(net.trunc());
    }
    if let Ok(a) = t.parse::<Ipv6Addr>() {
        return Ok(IpNet::new_assert(IpAddr::V6(a), 128));
    }
    let groups: Vec<&str> = t.split(':').collect();
    if t.contains("::") || groups.len() >= 8 {
        return Err(format!("{t:?} is not an IPv6 address or prefix"));
    }
    let mut seg = [0u16; 8];
    for (i, g) in groups.iter().enumerate() {
        if g.is_empty() || g.len() > 4 {
            return Err(format!("{t:?}: {g:?} is not a 16-bit group"));
        }
        seg[i] = u16::from_str_radix(g, 16).map_err(|_| format!("{t:?}: {g:?} is not hex"))?;
    }
    let addr = Ipv6Addr::from(seg);
    Ok(IpNet::new_assert(IpAddr::V6(addr), 16 * groups.len() as u8))
}

/// A host or domain name, normalised to lower case without a leading or trailing dot.
pub fn parse_name(t: &str) -> Result<String, String> {
    let n = t.trim_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{t:?} is not a host or domain name"));
    }
    for label in n.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("{t:?} is not a host or domain name"));
        }
    }
    Ok(n)
}

fn parse_value(tag: Tag, v: &str) -> Result<Value, String> {
    match tag {
        Tag::Connect => parse_connect_value(v).map(Value::Connect),
        Tag::GreetPause => v
            .parse::<u32>()
            .map(Value::Number)
            .map_err(|_| format!("GreetPause value {v:?} is not a number of milliseconds")),
        Tag::ClientRate | Tag::ClientConn | Tag::NetRate | Tag::NetConn => {
            v.parse::<u32>().map(Value::Number).map_err(|_| {
                format!(
                    "{} value {v:?} is not a whole number (0 = unlimited)",
                    tag.as_str()
                )
            })
        }
    }
}

fn parse_connect_value(v: &str) -> Result<ConnectAction, String> {
    let upper = v.to_ascii_uppercase();
    match upper.as_str() {
        "OK" | "RELAY" => return Ok(ConnectAction::Exempt),
        "REJECT" | "DISCARD" => {
            return Ok(ConnectAction::Refuse {
                code: 550,
                enhanced: "5.7.1".into(),
                text: "Access denied".into(),
            });
        }
        "SKIP" => return Ok(ConnectAction::Skip),
        _ => {}
    }
    if let Some(rest) = strip_prefix_ci(v, "ERROR:") {
        return parse_error_value(rest).map_err(|e| format!("{v:?}: {e}"));
    }
    if strip_prefix_ci(v, "QUARANTINE:").is_some() {
        return Err(format!(
            "{v:?}: QUARANTINE is not supported at connect; use REJECT or remove it"
        ));
    }
    Err(format!(
        "{v:?} is not a connect action (OK, RELAY, REJECT, DISCARD, SKIP, ERROR:...)"
    ))
}

/// `ERROR:550 text`, `ERROR:5.7.1:550 text`, optionally in double quotes.
fn parse_error_value(rest: &str) -> Result<ConnectAction, String> {
    let r = rest.trim();
    let r = r
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(r);
    let (enhanced, r) = match r.split_once(':') {
        Some((dsn, tail)) if is_enhanced_code(dsn) => (Some(dsn.to_string()), tail),
        _ => (None, r),
    };
    let code_text = r.get(..3).ok_or("no reply code")?;
    let code: u16 = code_text
        .parse()
        .map_err(|_| format!("{code_text:?} is not a reply code"))?;
    if !(400..600).contains(&code) {
        return Err(format!("reply code {code} is not 4xx or 5xx"));
    }
    let mut text = r[3..].trim_start_matches(['-', ' ']).trim().to_string();
    let mut enhanced = enhanced;
    // `ERROR:550 5.7.1 text` carries the enhanced code inside the text.
    if enhanced.is_none()
        && let Some((first, tail)) = text.split_once(' ')
        && is_enhanced_code(first)
    {
        enhanced = Some(first.to_string());
        text = tail.trim().to_string();
    }
    let enhanced = match enhanced {
        Some(e) => {
            if e.as_bytes()[0] != code_text.as_bytes()[0] {
                return Err(format!(
                    "enhanced code {e} does not match reply code {code}"
                ));
            }
            e
        }
        None if code >= 500 => "5.7.1".into(),
        None => "4.7.1".into(),
    };
    if text.is_empty() {
        text = "Access denied".into();
    }
    Ok(ConnectAction::Refuse {
        code,
        enhanced,
        text,
    })
}

fn is_enhanced_code(s: &str) -> bool {
    let p: Vec<&str> = s.split('.').collect();
    p.len() == 3
        && matches!(p[0], "2" | "4" | "5")
        && p[1..]
            .iter()
            .all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Entry {
        let f = parse(line, Path::new("access")).unwrap();
        assert_eq!(f.entries.len(), 1, "{line}");
        f.entries.into_iter().next().unwrap()
    }

    fn net(s: &str) -> Key {
        Key::Net(s.parse().unwrap())
    }

    #[test]
    fn the_sendmail_users_file_loads_as_is() {
        let text = "Connect:206.81.85\tREJECT\nClientRate:67.92.16\t2\nClientConn:61.191.231\t2\n\
                    ClientRate:\t10\nClientConn:\t5\nClientRate:customerdomain.com\t0\n\
                    GreetPause:okslammer.com\t0\nGreetPause:127.0.0.1\t0\n";
        let f = parse(text, Path::new("access")).unwrap();
        let got: Vec<(Tag, Key, Value, &str)> = f
            .entries
            .iter()
            .map(|e| (e.tag, e.key.clone(), e.value.clone(), e.rule.as_str()))
            .collect();
        let refuse = Value::Connect(ConnectAction::Refuse {
            code: 550,
            enhanced: "5.7.1".into(),
            text: "Access denied".into(),
        });
        assert_eq!(
            got,
            vec![
                (
                    Tag::Connect,
                    net("206.81.85.0/24"),
                    refuse,
                    "Connect:206.81.85"
                ),
                (
                    Tag::ClientRate,
                    net("67.92.16.0/24"),
                    Value::Number(2),
                    "ClientRate:67.92.16"
                ),
                (
                    Tag::ClientConn,
                    net("61.191.231.0/24"),
                    Value::Number(2),
                    "ClientConn:61.191.231"
                ),
                (Tag::ClientRate, Key::Any, Value::Number(10), "ClientRate:"),
                (Tag::ClientConn, Key::Any, Value::Number(5), "ClientConn:"),
                (
                    Tag::ClientRate,
                    Key::Name("customerdomain.com".into()),
                    Value::Number(0),
                    "ClientRate:customerdomain.com"
                ),
                (
                    Tag::GreetPause,
                    Key::Name("okslammer.com".into()),
                    Value::Number(0),
                    "GreetPause:okslammer.com"
                ),
                (
                    Tag::GreetPause,
                    net("127.0.0.1/32"),
                    Value::Number(0),
                    "GreetPause:127.0.0.1"
                ),
            ]
        );
    }

    #[test]
    fn keys_of_every_form() {
        assert_eq!(parse_key("10").unwrap(), net("10.0.0.0/8"));
        assert_eq!(parse_key("10.1.2.3").unwrap(), net("10.1.2.3/32"));
        assert_eq!(parse_key("10.1.2.64/26").unwrap(), net("10.1.2.64/26"));
        assert_eq!(parse_key("IPv6:2001:db8").unwrap(), net("2001:db8::/32"));
        assert_eq!(
            parse_key("IPv6:2001:db8::1").unwrap(),
            net("2001:db8::1/128")
        );
        assert_eq!(parse_key("2001:db8::/48").unwrap(), net("2001:db8::/48"));
        assert_eq!(parse_key("[1.2.3.4]").unwrap(), net("1.2.3.4/32"));
        assert_eq!(
            parse_key("Mail.Example.COM.").unwrap(),
            Key::Name("mail.example.com".into())
        );
        assert_eq!(parse_key("").unwrap(), Key::Any);
        assert!(parse_key("1.2.3.4/24").unwrap_err().contains("host bits"));
        assert!(parse_key("1.2.3.256").is_err());
        assert!(parse_key("bad host!").is_err());
    }

    #[test]
    fn tags_are_case_insensitive_and_bare_ipv6_is_a_key() {
        assert_eq!(one("clientrate:1.2.3 4").tag, Tag::ClientRate);
        let e = one("dead:beef::1 REJECT");
        assert!(e.untagged);
        assert_eq!(e.key, net("dead:beef::1/128"));
        let e = one("Connect:IPv6:2001:db8:66 REJECT");
        assert_eq!(e.key, net("2001:db8:66::/48"));
    }

    #[test]
    fn connect_values() {
        assert_eq!(
            one("Connect:1.2.3.4 OK").value,
            Value::Connect(ConnectAction::Exempt)
        );
        assert_eq!(
            one("Connect:1.2.3.4 RELAY").value,
            Value::Connect(ConnectAction::Exempt)
        );
        assert_eq!(
            one("Connect:1.2.3.4 SKIP").value,
            Value::Connect(ConnectAction::Skip)
        );
        assert_eq!(
            one("Connect:spam.example ERROR:\"421 4.7.0 Come back later\"").value,
            Value::Connect(ConnectAction::Refuse {
                code: 421,
                enhanced: "4.7.0".into(),
                text: "Come back later".into()
            })
        );
        assert_eq!(
            one("Connect:spam.example ERROR:5.7.1:554 Go away").value,
            Value::Connect(ConnectAction::Refuse {
                code: 554,
                enhanced: "5.7.1".into(),
                text: "Go away".into()
            })
        );
    }

    #[test]
    fn other_tags_and_untagged_addresses_are_skipped_and_counted() {
        let f = parse(
            "From:spammer@example.com REJECT\nTo:friend.example RELAY\nSpam:abuse@ FRIEND\n\
             user@example.com REJECT\n",
            Path::new("access"),
        )
        .unwrap();
        assert!(f.entries.is_empty());
        assert_eq!(f.skipped.get("From"), Some(&1));
        assert_eq!(f.skipped.get("To"), Some(&1));
        assert_eq!(f.skipped.get("Spam"), Some(&1));
        assert_eq!(f.skipped.get("(untagged address)"), Some(&1));
    }

    #[test]
    fn untagged_sources_are_connect_rules() {
        let e = one("cyberspammer.com REJECT");
        assert_eq!(e.tag, Tag::Connect);
        assert!(e.untagged);
        assert_eq!(e.rule, "cyberspammer.com");
    }

    #[test]
    fn every_broken_line_is_reported_with_its_line() {
        let errs = parse(
            "# comment\nClientRate:1.2.3 lots\n\nConnect:1.2.3.4 MAYBE\nClientConn:1.2.3\n\
             GreetPause:1.2.3.4 5s\nConnect:1.2.3.999 REJECT\nConnect:x ERROR:250 fine\n",
            Path::new("/etc/mail/access"),
        )
        .unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.origin.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 6, 7, 8]);
        assert_eq!(
            errs[0].to_string(),
            "/etc/mail/access:2: ClientRate value \"lots\" is not a whole number (0 = unlimited)"
        );
        assert!(
            errs[1].reason.contains("not a connect action"),
            "{}",
            errs[1]
        );
        assert!(errs[2].reason.contains("no value"), "{}", errs[2]);
        assert!(errs[5].reason.contains("not 4xx or 5xx"), "{}", errs[5]);
    }

    #[test]
    fn unknown_tags_are_skipped_with_a_warning() {
        let f = parse("ClientRates:1.2.3 2\nClientRates:1.2.4 2\n", Path::new("a")).unwrap();
        assert!(f.entries.is_empty());
        assert_eq!(f.skipped.get("ClientRates"), Some(&2));
        assert_eq!(f.warnings.len(), 1);
        assert!(
            f.warnings[0].contains("unknown tag \"ClientRates\""),
            "{}",
            f.warnings[0]
        );
    }

    #[test]
    fn discard_is_refused_with_a_warning() {
        let f = parse("Connect:1.2.3.4 DISCARD\n", Path::new("a")).unwrap();
        assert_eq!(f.warnings.len(), 1);
        assert!(matches!(
            f.entries[0].value,
            Value::Connect(ConnectAction::Refuse { code: 550, .. })
        ));
    }

    #[test]
    fn latin1_bytes_are_read_as_sendmail_reads_them() {
        // "# Zugriff für Spammer verweigert" in Latin-1, a Latin-1 host name, and good lines.
        let mut file = b"# Zugriff f\xfcr Spammer verweigert\n".to_vec();
        file.extend_from_slice(b"Connect:m\xfcller.example REJECT\n");
        file.extend_from_slice(b"Connect:192.0.2.1 REJECT\r\n");
        file.extend_from_slice("Connect:bücher.example OK\n".as_bytes());
        let f = parse_bytes(&file, Path::new("access")).unwrap();
        assert_eq!(f.entries.len(), 1, "only the address entry stands");
        assert_eq!(f.entries[0].origin.line, 3);
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        assert!(
            f.warnings[0].starts_with("access:2: key "),
            "{}",
            f.warnings[0]
        );
        assert!(
            f.warnings[0].contains("not UTF-8: read as Latin-1"),
            "{}",
            f.warnings[0]
        );
        assert!(f.warnings[1].starts_with("access:4: key \"Connect:bücher.example\""));

        // In a value the byte is an error that names the line and the column.
        let e = parse_bytes(
            b"Connect:192.0.2.9 ERROR:550 Zugriff verweigert f\xfcr Sie\n",
            Path::new("access"),
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string(),
            "access:1: byte 0xFC at column 49 is not UTF-8 (save the file as UTF-8, or keep \
             such bytes to comments)"
        );
    }
}
