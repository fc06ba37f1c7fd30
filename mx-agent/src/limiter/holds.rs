//! Refusals the limiter said hold (`Verdict.hold_ms`, a ban or ClientRate): the agent
//! refuses that source itself until then, so that an attacker's reconnects cost no
//! limiter call. Never longer than the agent's own bound, so that an operator's unblock
//! (which the limiters honour at once) reaches this MX within it. An address's hold
//! applies only to sessions with the client name the refused one had (name rules can
//! treat them apart); a network's is promised by the limiter only where no rule does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use mxlimit_proto::v1::{SessionPolicy, Verdict};

/// Sources held at most; past it, expired holds go, and then new ones are not kept.
const MAX_HOLDS: usize = 10_000;

struct Hold {
    until: Instant,
    verdict: Verdict,
    policy: SessionPolicy,
    /// For an address's hold: the client name of the refused session.
    name: Option<Box<str>>,
}

#[derive(Default)]
struct Table {
    holds: HashMap<IpNet, Hold>,
    /// The prefix lengths held, per family, so that a lookup tries only those.
    v4: Vec<u8>,
    v6: Vec<u8>,
    /// When a full table was last searched for expired holds (at most once a second).
    searched_full: Option<Instant>,
}

/// The refusals this agent holds.
pub struct Holds {
    bound: Duration,
    table: Mutex<Table>,
}

impl Holds {
    /// `bound`: the longest any refusal is held here (0: none is).
    pub fn new(bound: Duration) -> Holds {
        Holds {
            bound,
            table: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal held for `ip` (whose session has client `name`) now, if any, with
    /// the time it has left.
    pub fn check(&self, ip: IpAddr, name: Option<&str>) -> Option<(Verdict, SessionPolicy)> {
        if self.bound.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut t = self.lock();
        if t.holds.is_empty() {
            return None;
        }
        let count = match ip {
            IpAddr::V4(_) => t.v4.len(),
            IpAddr::V6(_) => t.v6.len(),
        };
        for i in 0..count {
            let len = match ip {
                IpAddr::V4(_) => t.v4[i],
                IpAddr::V6(_) => t.v6[i],
            };
            let Ok(net) = IpNet::new(ip, len).map(|n| n.trunc()) else {
                continue;
            };
            match t.holds.get(&net) {
                Some(h) if h.until > now && h.name.as_deref() != name && is_address(&net) => {}
                Some(h) if h.until > now => {
                    let mut v = h.verdict.clone();
                    v.hold_ms = u32::try_from((h.until - now).as_millis()).unwrap_or(u32::MAX);
                    return Some((v, h.policy));
                }
                Some(_) => {
                    t.holds.remove(&net);
                }
                None => {}
            }
        }
        None
    }

    /// Holds a refusal the limiter answered to a call (for a client named `name`) sent
    /// at `sent`, if its verdict says it holds. Returns whether it is held.
    pub fn remember(
        &self,
        v: &Verdict,
        policy: &SessionPolicy,
        name: Option<&str>,
        sent: Instant,
    ) -> bool {
        if self.bound.is_zero() || v.hold_ms == 0 {
            return false;
        }
        let Some(net) = parse_source(&v.hold_source) else {
            return false;
        };
        let hold = Duration::from_millis(v.hold_ms.into()).min(self.bound);
        let until = sent + hold;
        let now = Instant::now();
        if until <= now {
            return false;
        }
        let mut t = self.lock();
        if t.holds.len() >= MAX_HOLDS && !t.holds.contains_key(&net) {
            if t.searched_full
                .is_none_or(|at| now - at >= Duration::from_secs(1))
            {
                t.searched_full = Some(now);
                t.holds.retain(|_, h| h.until > now);
            }
            if t.holds.len() >= MAX_HOLDS {
                return false;
            }
        }
        let lens = match net {
            IpNet::V4(_) => &mut t.v4,
            IpNet::V6(_) => &mut t.v6,
        };
        if !lens.contains(&net.prefix_len()) {
            lens.push(net.prefix_len());
            // Longest first: an address's own refusal before its network's.
            lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        t.holds.insert(
            net,
            Hold {
                until,
                verdict: v.clone(),
                policy: *policy,
                name: is_address(&net).then(|| name.map(Into::into)).flatten(),
            },
        );
        true
    }

    pub fn len(&self) -> usize {
        self.lock().holds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_address(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// An address or a network in CIDR form, as `Verdict.hold_source` names it.
fn parse_source(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxlimit_core::decision::verdict;

    fn refusal(hold_ms: u32, source: &str) -> Verdict {
        let mut v = verdict::client_rate("ClientRate:192.0.2");
        v.hold_ms = hold_ms;
        v.hold_source = source.into();
        v
    }

    #[test]
    fn an_address_or_a_network_is_held_for_at_most_the_bound() {
        let h = Holds::new(Duration::from_secs(10));
        let sent = Instant::now();
        assert!(h.remember(
            &refusal(3_600_000, "192.0.2.7"),
            &Default::default(),
            None,
            sent
        ));
        let (v, _) = h.check("192.0.2.7".parse().unwrap(), None).unwrap();
        assert!(v.hold_ms <= 10_000, "bounded: {v:?}");
        assert_eq!(v.reason, "client_rate");
        assert!(h.check("192.0.2.8".parse().unwrap(), None).is_none());
        assert!(h.remember(
            &refusal(60_000, "2001:db8:1:2::/64"),
            &Default::default(),
            None,
            sent
        ));
        assert!(h.check("2001:db8:1:2::99".parse().unwrap(), None).is_some());
        assert!(h.check("2001:db8:1:3::99".parse().unwrap(), None).is_none());
        assert!(
            h.check("192.0.2.8".parse().unwrap(), None).is_none(),
            "families apart"
        );
    }

    #[test]
    fn an_addresss_hold_applies_to_sessions_with_the_same_client_name_only() {
        let h = Holds::new(Duration::from_secs(10));
        let (sent, p) = (Instant::now(), Default::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(h.remember(&refusal(60_000, "192.0.2.7"), &p, None, sent));
        assert!(h.check(ip, None).is_some());
        assert!(
            h.check(ip, Some("mx.friendly.example")).is_none(),
            "a name rule may exempt it"
        );
        assert!(h.remember(
            &refusal(60_000, "192.0.2.0/24"),
            &p,
            Some("x.example"),
            sent
        ));
        assert!(
            h.check(ip, Some("mx.friendly.example")).is_some(),
            "the network's holds for all"
        );
    }

    #[test]
    fn nothing_is_held_without_a_promise_a_source_or_a_bound() {
        let h = Holds::new(Duration::from_secs(10));
        let sent = Instant::now();
        assert!(!h.remember(&refusal(0, "192.0.2.7"), &Default::default(), None, sent));
        assert!(!h.remember(
            &refusal(1000, "not an address"),
            &Default::default(),
            None,
            sent
        ));
        let off = Holds::new(Duration::ZERO);
        assert!(!off.remember(&refusal(1000, "192.0.2.7"), &Default::default(), None, sent));
        assert!(h.is_empty() && off.is_empty());
    }

    #[test]
    fn an_expired_hold_refuses_nothing() {
        let h = Holds::new(Duration::from_secs(10));
        let long_ago = Instant::now() - Duration::from_secs(5);
        assert!(!h.remember(
            &refusal(1000, "192.0.2.7"),
            &Default::default(),
            None,
            long_ago
        ));
        assert!(h.remember(
            &refusal(6000, "192.0.2.7"),
            &Default::default(),
            None,
            long_ago
        ));
        assert!(h.check("192.0.2.7".parse().unwrap(), None).is_some());
    }
}
