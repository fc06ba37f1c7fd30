//! The top list as an access table, ready for the MTA: sendmail's access map
//! (`Connect:206.81.85<TAB>REJECT`) or a Postfix cidr table (`206.81.85.0/24 REJECT`).

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// sendmail matches `Connect:` keys on whole octets (IPv4) or whole `:` groups
/// (IPv6), so a network is written as the prefixes of its length rounded up; a
/// network between boundaries becomes several entries. IPv6 keys are written as
/// sendmail prints a client's address by default (`UseCompressedIPv6Addresses` off):
/// every group, without zero compression, so `::1` is `IPv6:0:0:0:0:0:0:0:1`.
pub fn sendmail_keys(source: &str) -> Result<Vec<String>, String> {
    let net = parse(source)?;
    Ok(match net {
        IpNet::V4(n) => {
            let len = n.prefix_len().div_ceil(8) * 8;
            n.subnets(len)
                .map_err(|e| e.to_string())?
                .map(|s| {
                    let o = s.network().octets();
                    let parts = (len / 8) as usize;
                    let text: Vec<String> = o[..parts].iter().map(u8::to_string).collect();
                    format!("Connect:{}", text.join("."))
                })
                .collect()
        }
        IpNet::V6(n) => {
            let len = n.prefix_len().div_ceil(16) * 16;
            n.subnets(len)
                .map_err(|e| e.to_string())?
                .map(|s| {
                    let groups = (len / 16) as usize;
                    let text: Vec<String> = s.network().segments()[..groups]
                        .iter()
                        .map(|g| format!("{g:x}"))
                        .collect();
                    format!("Connect:IPv6:{}", text.join(":"))
                })
                .collect()
        }
    })
}

/// A Postfix cidr table key: `206.81.85.0/24`, or an address alone.
pub fn postfix_key(source: &str) -> Result<String, String> {
    let net = parse(source)?;
    Ok(if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    })
}

fn parse(source: &str) -> Result<IpNet, String> {
    if let Ok(ip) = source.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    source
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("the limiter sent {source:?}, which is not an address or network"))
}

/// The whole file: a header, then one line per key. sendmail separates key and
/// value with a tab, Postfix with a space.
pub fn table(
    sources: &[String],
    sendmail: bool,
    action: &str,
    header: &str,
) -> Result<String, String> {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for s in sources {
        if sendmail {
            for key in sendmail_keys(s)? {
                let _ = writeln!(out, "{key}\t{action}");
            }
        } else {
            let _ = writeln!(out, "{} {action}", postfix_key(s)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmail_keys_follow_octets_and_groups() {
        assert_eq!(
            sendmail_keys("206.81.85.0/24").unwrap(),
            ["Connect:206.81.85"]
        );
        assert_eq!(
            sendmail_keys("206.81.85.7").unwrap(),
            ["Connect:206.81.85.7"]
        );
        assert_eq!(sendmail_keys("10.1.0.0/16").unwrap(), ["Connect:10.1"]);
        assert_eq!(
            sendmail_keys("192.0.2.0/23").unwrap(),
            ["Connect:192.0.2", "Connect:192.0.3"]
        );
        assert_eq!(
            sendmail_keys("2001:db8:1:2::/64").unwrap(),
            ["Connect:IPv6:2001:db8:1:2"]
        );
        assert_eq!(
            sendmail_keys("2001:db8::5").unwrap(),
            ["Connect:IPv6:2001:db8:0:0:0:0:0:5"]
        );
        assert!(sendmail_keys("nonsense").is_err());
    }

    #[test]
    fn postfix_keys_are_cidr_or_addresses() {
        assert_eq!(postfix_key("206.81.85.0/24").unwrap(), "206.81.85.0/24");
        assert_eq!(postfix_key("206.81.85.7").unwrap(), "206.81.85.7");
        assert_eq!(
            postfix_key("2001:db8:1:2::/64").unwrap(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn tables_have_a_header_and_one_line_per_key() {
        let t = table(&["206.81.85.0/24".into()], true, "REJECT", "top 1").unwrap();
        assert_eq!(t, "# top 1\nConnect:206.81.85\tREJECT\n");
        let t = table(&["206.81.85.0/24".into()], false, "REJECT", "top 1").unwrap();
        assert_eq!(t, "# top 1\n206.81.85.0/24 REJECT\n");
    }
}
