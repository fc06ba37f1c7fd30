//! Scenarios: who connects, from which addresses, to which MX node, how fast, with
//! which recipients. A scenario's schedule is fixed in advance (no randomness between
//! runs), so cluster-wide and per-host counting see exactly the same traffic.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Attacker,
    Legitimate,
}

/// One party of the cast.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    /// Addresses are taken from the start of this network.
    pub network: IpNet,
    pub addresses: u32,
    /// Connections per second, spread round-robin over the MX nodes.
    pub rate: f64,
    /// Recipients per session; `bad`: made-up users the MTA rejects.
    pub rcpts: u32,
    pub bad: bool,
    /// When the actor starts and stops, from the start of the run.
    #[serde(with = "millis")]
    pub start: Duration,
    #[serde(with = "millis")]
    pub stop: Duration,
}

/// One connection attempt of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub at: Duration,
    pub actor: usize,
    pub seq: u64,
    pub ip: IpAddr,
    pub node: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub nodes: usize,
    pub actors: Vec<Actor>,
}

impl Scenario {
    /// Every attempt, in time order.
    pub fn schedule(&self) -> Vec<Attempt> {
        let mut out = Vec::new();
        for (a, actor) in self.actors.iter().enumerate() {
            if actor.rate <= 0.0 || actor.addresses == 0 {
                continue;
            }
            let every = 1.0 / actor.rate;
            let span = actor.stop.saturating_sub(actor.start).as_secs_f64();
            let n = (span / every).floor() as u64;
            for seq in 0..n {
                out.push(Attempt {
                    at: actor.start + Duration::from_secs_f64(seq as f64 * every),
                    actor: a,
                    seq,
                    ip: nth_address(actor.network, (seq % u64::from(actor.addresses)) as u32),
                    // Each actor starts on a different node, then goes round.
                    node: ((seq as usize) + a) % self.nodes.max(1),
                });
            }
        }
        out.sort_by_key(|x| (x.at, x.actor, x.seq));
        out
    }

    pub fn duration(&self) -> Duration {
        self.actors.iter().map(|a| a.stop).max().unwrap_or_default()
    }
}

/// The `n`-th host address of a network (skipping the network address itself).
pub fn nth_address(net: IpNet, n: u32) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4.network()).wrapping_add(1 + n),
        )),
        IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6.network()).wrapping_add(1 + u128::from(n)),
        )),
    }
}

// Long on purpose: a table of the built-in scenarios, one arm each.
/// The built-in scenarios. `networks` supplies the networks in order (attackers first),
/// so that SMTP runs can use loopback networks.
pub fn preset(
    name: &str,
    nodes: usize,
    duration: Duration,
    networks: &[IpNet],
) -> Option<Scenario> {
    let net = |i: usize| networks[i % networks.len()];
    let secs = duration;
    let legit = |i: usize| Actor {
        name: "legitimate sender".into(),
        role: Role::Legitimate,
        network: net(i),
        addresses: 2,
        rate: 4.0,
        rcpts: 1,
        bad: false,
        start: Duration::ZERO,
        stop: secs,
    };
    let actors = match name {
        // Made-up users from 50 addresses of one network, over every MX node.
        "dictionary" => vec![
            Actor {
                name: "dictionary attack".into(),
                role: Role::Attacker,
                network: net(0),
                addresses: 50,
                rate: 100.0,
                rcpts: 1,
                bad: true,
                start: Duration::ZERO,
                stop: secs,
            },
            legit(3),
        ],
        // Many connections from a few addresses, no recipients.
        "flood" => vec![
            Actor {
                name: "connection flood".into(),
                role: Role::Attacker,
                network: net(1),
                addresses: 10,
                rate: 200.0,
                rcpts: 0,
                bad: false,
                start: Duration::ZERO,
                stop: secs,
            },
            legit(3),
        ],
        // Slow enough that no single MX sees enough to act.
        "slow-drip" => vec![
            Actor {
                name: "slow drip".into(),
                role: Role::Attacker,
                network: net(2),
                addresses: 20,
                rate: 20.0,
                rcpts: 1,
                bad: true,
                start: Duration::ZERO,
                stop: secs,
            },
            legit(3),
        ],
        "mixed" => {
            let mut v = preset("dictionary", nodes, duration, networks)?.actors;
            v.truncate(1);
            v.extend(
                preset("flood", nodes, duration, networks)?
                    .actors
                    .into_iter()
                    .take(1),
            );
            v.extend(
                preset("slow-drip", nodes, duration, networks)?
                    .actors
                    .into_iter()
                    .take(1),
            );
            v.push(legit(3));
            v
        }
        _ => return None,
    };
    Some(Scenario {
        name: name.into(),
        nodes,
        actors,
    })
}

pub const PRESETS: [&str; 4] = ["dictionary", "flood", "slow-drip", "mixed"];

/// A built-in scenario by name, every actor's rate multiplied by `scale`.
pub fn named(
    name: &str,
    nodes: usize,
    duration: Duration,
    networks: &[IpNet],
    scale: f64,
) -> anyhow::Result<Scenario> {
    let mut s = preset(name, nodes, duration, networks)
        .ok_or_else(|| anyhow::anyhow!("no scenario {name:?}; there are {}", PRESETS.join(", ")))?;
    for a in &mut s.actors {
        a.rate *= scale;
    }
    let attempts: f64 = s
        .actors
        .iter()
        .map(|a| a.rate * a.stop.saturating_sub(a.start).as_secs_f64())
        .sum();
    anyhow::ensure!(
        attempts <= MAX_ATTEMPTS,
        "{name} at this scale and duration would schedule {attempts:.0} connections; at most {MAX_ATTEMPTS} fit in one run"
    );
    Ok(s)
}

/// The most connections one run schedules (each is remembered until the report).
const MAX_ATTEMPTS: f64 = 10_000_000.0;

/// What `loadtest demo` plays: every actor at once, over 4 nodes, for 3 s.
pub fn demo() -> Scenario {
    preset("mixed", 4, Duration::from_secs(3), &grpc_networks()).expect("a built-in scenario")
}

/// The networks scenarios use over gRPC (documentation ranges) and over SMTP (loopback).
pub fn grpc_networks() -> Vec<IpNet> {
    [
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8:66::/64",
        "192.0.2.0/24",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

pub fn loopback_networks() -> Vec<IpNet> {
    [
        "127.66.0.0/24",
        "127.67.0.0/24",
        "127.70.0.0/24",
        "127.68.0.0/24",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

/// The policy the built-in scenarios are measured against: short windows, so that a
/// run of a few seconds shows everything; limits low enough for attacks to meet them.
pub const DEMO_POLICY: &str = r#"
[client_rate]
window = "10s"
address = 20
network = 60
[client_conn]
address = 0
network = 0
lease_ttl = "30s"
[bad_rcpt]
window = "1h"
tarpit_after = 100
block_after = 100
network_tarpit_after = 10
network_block_after = 30
tarpit_delay = "1ms"
block_for = "1h"
[envelope]
bad_rcpt_throttle = 0
"#;

mod millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_fixed_and_spread_over_nodes() {
        let s = preset("dictionary", 4, Duration::from_secs(1), &grpc_networks()).unwrap();
        let a = s.schedule();
        assert_eq!(a, s.schedule(), "the same schedule every time");
        let attack: Vec<&Attempt> = a.iter().filter(|x| x.actor == 0).collect();
        assert_eq!(attack.len(), 100);
        let per_node: Vec<usize> = (0..4)
            .map(|n| attack.iter().filter(|x| x.node == n).count())
            .collect();
        assert_eq!(per_node, [25, 25, 25, 25]);
        assert_eq!(attack[0].ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(attack[50].ip, attack[0].ip, "50 addresses, used in turn");
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn ipv6_addresses_come_from_the_network() {
        let n: IpNet = "2001:db8:66::/64".parse().unwrap();
        assert_eq!(
            nth_address(n, 0),
            "2001:db8:66::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            nth_address(n, 255),
            "2001:db8:66::100".parse::<IpAddr>().unwrap()
        );
    }
}
