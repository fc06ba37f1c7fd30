//! A client source: the address itself and the network it is aggregated into.
//!
//! Every limit exists at both levels. The network's hash tag (`n4:206.81.85.0/24`) names
//! all store keys of that network, so one store operation sees both levels at once.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The level a limit or a ban applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Address,
    Network,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Address => "address",
            Level::Network => "network",
        }
    }
}

/// How addresses are grouped into networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregation {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation {
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        }
    }
}

/// A parsed client address with its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    pub net: IpNet,
    /// The network's name in store keys and top lists, e.g. `n4:206.81.85.0/24`: all
    /// of a network's keys share it (on Redis Cluster, their slot).
    pub tag: String,
    /// The canonical text of the address, as used in store keys.
    pub ip_text: String,
}

impl Source {
    pub fn new(ip: IpAddr, agg: Aggregation) -> Source {
        let ip = canonical(ip);
        let (net, family) = match ip {
            IpAddr::V4(_) => (IpNet::new_assert(ip, agg.ipv4_prefix), '4'),
            IpAddr::V6(_) => (IpNet::new_assert(ip, agg.ipv6_prefix), '6'),
        };
        let net = net.trunc();
        Source {
            ip,
            net,
            tag: format!("n{family}:{net}"),
            ip_text: ip.to_string(),
        }
    }

    /// The source at one level, as text: the address, or the network in CIDR form.
    pub fn at(&self, level: Level) -> String {
        match level {
            Level::Address => self.ip_text.clone(),
            Level::Network => self.net.to_string(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ip_text)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as dual-stack sockets report IPv4
/// clients) are the IPv4 client they stand for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses a client address as MTAs write it: `1.2.3.4`, `2001:db8::1`, sendmail's
/// `IPv6:2001:db8::1`, or either in brackets.
pub fn parse_client_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(t);
    let t = strip_prefix_ci(t, "ipv6:").unwrap_or(t);
    t.parse::<IpAddr>().ok().map(canonical)
}

/// `s` without `prefix`, compared without case (`IPv6:`, `Connect:`).
pub fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_aggregates_to_slash_24() {
        let s = Source::new("206.81.85.12".parse().unwrap(), Aggregation::default());
        assert_eq!(s.net.to_string(), "206.81.85.0/24");
        assert_eq!(s.tag, "n4:206.81.85.0/24");
        assert_eq!(s.at(Level::Address), "206.81.85.12");
    }

    #[test]
    fn ipv6_aggregates_to_slash_64_and_mapped_ipv4_is_ipv4() {
        let agg = Aggregation::default();
        let s = Source::new("2001:db8:1:2:3:4:5:6".parse().unwrap(), agg);
        assert_eq!(s.tag, "n6:2001:db8:1:2::/64");
        let m = Source::new("::ffff:10.1.2.3".parse().unwrap(), agg);
        assert_eq!(m.ip_text, "10.1.2.3");
        assert_eq!(m.tag, "n4:10.1.2.0/24");
    }

    #[test]
    fn aggregation_is_configurable() {
        let agg = Aggregation {
            ipv4_prefix: 16,
            ipv6_prefix: 48,
        };
        assert_eq!(
            Source::new("10.9.8.7".parse().unwrap(), agg).tag,
            "n4:10.9.0.0/16"
        );
        assert_eq!(
            Source::new("2001:db8:1:2::1".parse().unwrap(), agg).tag,
            "n6:2001:db8:1::/48"
        );
    }

    #[test]
    fn parses_the_forms_mtas_send() {
        assert_eq!(parse_client_ip("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            parse_client_ip("[1.2.3.4]"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            parse_client_ip("IPv6:2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_client_ip("1.2.3"), None);
        assert_eq!(parse_client_ip("not-an-ip"), None);
        assert_eq!(parse_client_ip(""), None);
    }
}
