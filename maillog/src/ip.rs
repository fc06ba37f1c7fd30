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

/// The address in the last `[...]` of `text`: `host.example [192.0.2.7]`,
/// `[IPv6:2001:db8::1] (may be forged)`.
pub fn last_bracketed(text: &str) -> Option<IpAddr> {
    let close = text.rfind(']')?;
    let open = text[..close].rfind('[')?;
    parse(&text[open + 1..close])
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
            last_bracketed("host.example [192.0.2.7] (may be forged)"),
            parse("192.0.2.7")
        );
        assert_eq!(first_bracketed("[2001:db8::1]:52311 to [::1]:25"), Some(v6));
        for bad in ["", "IPv6:", "[", "]", "999.1.1.1", "ipv6"] {
            assert_eq!(parse(bad), None, "{bad}");
            assert_eq!(last_bracketed(bad), None, "{bad}");
        }
    }
}
