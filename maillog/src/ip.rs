//! Client addresses as the MTAs write them.

use std::net::IpAddr;

/// `192.0.2.7`, `2001:db8::1`, sendmail's `IPv6:2001:db8:0:0:0:0:0:1`, an
/// IPv4-mapped address: the canonical address.
pub fn parse(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    let t = match t.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => &t[5..],
        _ => t,
    };
    let ip: IpAddr = t.parse().ok()?;
    Some(ip.to_canonical())
}

/// The address of a client the MTA wrote as `name [addr]`, `[addr]`, maybe followed
/// by ` (may be forged)`, and nothing else after: a reverse name is the client's to
/// choose and may hold brackets of its own, and a field cut to its maximum length
/// (sendmail's `relay=%.100s`) may have lost the real address.
pub fn trailing_bracketed(text: &str) -> Option<IpAddr> {
    let t = text.trim_end();
    let t = t.strip_suffix(" (may be forged)").unwrap_or(t);
    let inner = t.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    parse(&inner[open + 1..])
}

/// The address in the first `[...]` of `text`.
pub fn first_bracketed(text: &str) -> Option<IpAddr> {
    let open = text.find('[')?;
    let close = open + text[open..].find(']')?;
    parse(&text[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_one_address() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse("IPv6:2001:db8:0:0:0:0:0:1"), Some(v6));
        assert_eq!(parse("ipv6:2001:db8::1"), Some(v6));
        assert_eq!(parse("::ffff:192.0.2.7"), parse("192.0.2.7"));
        assert_eq!(
            trailing_bracketed("host.example [192.0.2.7] (may be forged)"),
            parse("192.0.2.7")
        );
        assert_eq!(first_bracketed("[2001:db8::1]:52311 to [::1]:25"), Some(v6));
        assert_eq!(
            trailing_bracketed("[198.51.100.1].x [192.0.2.7] (may be forged)"),
            parse("192.0.2.7")
        );
        assert_eq!(trailing_bracketed("x [198.51.100.1] cut her"), None);
        for bad in ["", "IPv6:", "[", "]", "999.1.1.1", "ipv6"] {
            assert_eq!(parse(bad), None, "{bad}");
            assert_eq!(trailing_bracketed(bad), None, "{bad}");
        }
    }
}
