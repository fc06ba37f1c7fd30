//! The order in which a `Connect` is checked, written once: bans, then ClientRate,
//! then ClientConn, and at each step the address before its network. The first limit
//! that refuses is the answer.
//!
//! The memory store decides with [`refusal`] and Explain predicts with it.
//! `connect.lua` restates it in Lua, because one round trip per decision needs the
//! decision inside the script; the behaviour suite holds the two together by asserting,
//! on memory, Redis and Redis Cluster, that Explain's verdict is the next Connect's.

use super::{PerLevel, Refusal};
use crate::source::Level;

/// What a store counts for a source when a `Connect` comes, before admitting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectCounts {
    /// Milliseconds left of the ban in force, if any.
    pub ban_ms: PerLevel<Option<u64>>,
    /// Connections admitted within the ClientRate window.
    pub admitted: PerLevel<u32>,
    /// Live sessions (leases).
    pub sessions: PerLevel<u32>,
}

/// The limits of one `Connect`; 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectLimits {
    /// Connections admitted per ClientRate window.
    pub rate: PerLevel<u32>,
    /// Concurrent sessions.
    pub conn: PerLevel<u32>,
}

const LEVELS: [Level; 2] = [Level::Address, Level::Network];

/// Why `counts` refuse a new connection under `limits`, if they do.
pub fn refusal(counts: &ConnectCounts, limits: &ConnectLimits) -> Option<Refusal> {
    let over = |count: u32, limit: u32| limit > 0 && count >= limit;
    if let Some((level, remaining_ms)) = LEVELS
        .into_iter()
        .find_map(|l| counts.ban_ms.at(l).map(|ms| (l, ms)))
    {
        return Some(Refusal::Banned {
            level,
            remaining_ms,
        });
    }
    if let Some(level) = LEVELS
        .into_iter()
        .find(|&l| over(counts.admitted.at(l), limits.rate.at(l)))
    {
        let count = counts.admitted.at(level);
        return Some(Refusal::Rate { level, count });
    }
    LEVELS
        .into_iter()
        .find(|&l| over(counts.sessions.at(l), limits.conn.at(l)))
        .map(|level| Refusal::Conn {
            level,
            count: counts.sessions.at(level),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both<T: Copy>(address: T, network: T) -> PerLevel<T> {
        PerLevel { address, network }
    }

    #[test]
    fn bans_come_first_then_rate_then_conn_each_address_before_network() {
        let limits = ConnectLimits {
            rate: both(2, 5),
            conn: both(1, 3),
        };
        let all_over = ConnectCounts {
            ban_ms: both(Some(10), Some(20)),
            admitted: both(2, 5),
            sessions: both(1, 3),
        };
        let mut c = all_over;
        let mut seen = Vec::new();
        // Take each refusal away in turn: the next one in the order answers.
        while let Some(r) = refusal(&c, &limits) {
            seen.push(r);
            match r {
                Refusal::Banned { level, .. } => match level {
                    Level::Address => c.ban_ms.address = None,
                    Level::Network => c.ban_ms.network = None,
                },
                Refusal::Rate { level, .. } => match level {
                    Level::Address => c.admitted.address = 0,
                    Level::Network => c.admitted.network = 0,
                },
                Refusal::Conn { level, .. } => match level {
                    Level::Address => c.sessions.address = 0,
                    Level::Network => c.sessions.network = 0,
                },
            }
        }
        use Level::{Address as A, Network as N};
        assert_eq!(
            seen,
            [
                Refusal::Banned {
                    level: A,
                    remaining_ms: 10
                },
                Refusal::Banned {
                    level: N,
                    remaining_ms: 20
                },
                Refusal::Rate { level: A, count: 2 },
                Refusal::Rate { level: N, count: 5 },
                Refusal::Conn { level: A, count: 1 },
                Refusal::Conn { level: N, count: 3 },
            ]
        );
    }

    #[test]
    fn a_zero_limit_is_unlimited_and_a_count_under_its_limit_passes() {
        let counts = ConnectCounts {
            ban_ms: both(None, None),
            admitted: both(1_000, 1_000),
            sessions: both(4, 9),
        };
        let unlimited = ConnectLimits::default();
        assert_eq!(refusal(&counts, &unlimited), None);
        let roomy = ConnectLimits {
            rate: both(0, 1_001),
            conn: both(5, 10),
        };
        assert_eq!(refusal(&counts, &roomy), None);
    }
}
