//! The TOML policy file: global limits, thresholds and defaults.
//!
//! Every field has a default a new operator can run with (see `examples/policy.toml`
//! and the README); unknown keys are refused so that a typo never silently disables a
//! limit.

use std::path::PathBuf;

use serde::Deserialize;

use super::duration::Span;
use crate::offence::OffenceKind;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Report would-be blocks (`shadow = true` in the verdict) but accept everything.
    pub shadow: bool,
    /// Access files in sendmail syntax, read in order after those given on the command
    /// line. Relative paths are relative to the policy file.
    pub access_files: Vec<PathBuf>,
    pub network: NetworkSettings,
    pub client_rate: RateSettings,
    pub client_conn: ConnSettings,
    pub bad_rcpt: BadRcptSettings,
    pub offences: OffenceSettings,
    pub envelope: EnvelopeSettings,
    pub dns: DnsSettings,
}

/// How addresses aggregate into networks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    pub ipv4_prefix: Prefix<8, 32>,
    pub ipv6_prefix: Prefix<16, 128>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            ipv4_prefix: Prefix(24),
            ipv6_prefix: Prefix(64),
        }
    }
}

/// ClientRate: connections admitted per source in any window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateSettings {
    pub window: Span,
    /// Per address, unless an access entry (`ClientRate:`) says otherwise. 0 = unlimited.
    pub address: u32,
    /// Per network, unless a `NetRate:` entry says otherwise. 0 = unlimited.
    pub network: u32,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            window: Span::secs(60),
            address: 60,
            network: 300,
        }
    }
}

/// ClientConn: concurrent sessions per source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnSettings {
    /// Per address, unless an access entry (`ClientConn:`) says otherwise. 0 = unlimited.
    pub address: u32,
    /// Per network, unless a `NetConn:` entry says otherwise. 0 = unlimited.
    pub network: u32,
    /// How long a session's lease lives without a heartbeat.
    pub lease_ttl: Span,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            address: 10,
            network: 50,
            lease_ttl: Span::secs(30),
        }
    }
}

/// What a ban answers at `Connect`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BanReply {
    /// `421 4.7.1`: the sender retries later; a mistaken ban only delays mail.
    Tempfail,
    /// `554 5.7.1`: the sender gives up.
    Reject,
}

/// Cluster-wide counting of rejected recipients.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BadRcptSettings {
    /// The sliding window bad recipients are counted in.
    pub window: Span,
    /// Past this many bad recipients in the window, each further RCPT of the address is
    /// delayed by `tarpit_delay`. 0 = off.
    pub tarpit_after: u32,
    /// Past this many, the address is banned on every MX. 0 = off.
    pub block_after: u32,
    /// The same thresholds for the whole network.
    pub network_tarpit_after: u32,
    pub network_block_after: u32,
    pub tarpit_delay: Span,
    /// The first ban's length; each repeat offence multiplies it by `escalation`.
    pub block_for: Span,
    pub escalation: f64,
    pub max_block: Span,
    /// How long offences are remembered for escalation.
    pub remember: Span,
    pub ban_reply: BanReply,
}

impl Default for BadRcptSettings {
    fn default() -> Self {
        BadRcptSettings {
            window: Span::secs(3600),
            tarpit_after: 5,
            block_after: 20,
            network_tarpit_after: 20,
            network_block_after: 50,
            tarpit_delay: Span::secs(2),
            block_for: Span::secs(1800),
            escalation: 2.0,
            max_block: Span::secs(86_400),
            remember: Span::secs(7 * 86_400),
            ban_reply: BanReply::Tempfail,
        }
    }
}

/// Offences other than bad recipients (see [`crate::offence`]), each kind in a table of
/// its own: `[offences.pregreet]`, `[offences.protocol]`, `[offences.auth]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OffenceSettings {
    pub pregreet: OffenceTable,
    pub protocol: OffenceTable,
    pub auth: OffenceTable,
}

/// One kind's table as written: a key left out takes the kind's default, so that
/// `[offences.auth]` with only `ban_at = 10` keeps auth's own window and ban length.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OffenceTable {
    pub window: Option<Span>,
    pub ban_at: Option<u32>,
    pub network_ban_at: Option<u32>,
    pub block_for: Option<Span>,
}

/// One kind's thresholds, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffenceLimits {
    /// The sliding window offences are counted in.
    pub window: Span,
    /// At this many offences of the address in the window, the address is banned on
    /// every MX. 0 = off.
    pub ban_at: u32,
    /// At this many distinct offending addresses of one network in the window, the
    /// network is banned. 0 = off.
    pub network_ban_at: u32,
    /// The first ban's length; repeat bans escalate as `[bad_rcpt]` says (escalation,
    /// max_block, remember), whatever caused them.
    pub block_for: Span,
}

/// The highest offence threshold: logs hold up to this many entries per source.
pub const MAX_OFFENCES: u32 = 1000;

impl OffenceLimits {
    /// The defaults of each kind. One pregreet bans the address: SMTP clients wait for
    /// the banner, and a ban answers 421 by default, which a real MTA retries. Other
    /// protocol errors need three. AUTH failures are off: a mail host whose users
    /// authenticate elsewhere never sees them, and one that does should choose.
    pub fn default_for(kind: OffenceKind) -> OffenceLimits {
        let (ban_at, network_ban_at) = match kind {
            OffenceKind::Pregreet => (1, 3),
            OffenceKind::Protocol => (3, 5),
            OffenceKind::Auth => (0, 0),
        };
        OffenceLimits {
            window: Span::secs(3600),
            ban_at,
            network_ban_at,
            block_for: Span::secs(1800),
        }
    }

    pub fn is_off(&self) -> bool {
        self.ban_at == 0 && self.network_ban_at == 0
    }
}

impl OffenceSettings {
    pub fn table(&self, kind: OffenceKind) -> &OffenceTable {
        match kind {
            OffenceKind::Pregreet => &self.pregreet,
            OffenceKind::Protocol => &self.protocol,
            OffenceKind::Auth => &self.auth,
        }
    }

    /// A kind's thresholds: its table over its defaults.
    pub fn limits(&self, kind: OffenceKind) -> OffenceLimits {
        let t = self.table(kind);
        let d = OffenceLimits::default_for(kind);
        OffenceLimits {
            window: t.window.unwrap_or(d.window),
            ban_at: t.ban_at.unwrap_or(d.ban_at),
            network_ban_at: t.network_ban_at.unwrap_or(d.network_ban_at),
            block_for: t.block_for.unwrap_or(d.block_for),
        }
    }
}

/// Limits the caller enforces within one session, sent in `SessionPolicy`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnvelopeSettings {
    /// sendmail's `confMAX_RCPTS_PER_MESSAGE`: 452 4.5.3 past this many. 0 = unlimited.
    pub max_rcpts_per_message: u32,
    /// sendmail's `confBAD_RCPT_THROTTLE`: after this many bad RCPTs in one envelope,
    /// each further RCPT waits `bad_rcpt_delay`. 0 = off.
    pub bad_rcpt_throttle: u32,
    pub bad_rcpt_delay: Span,
    /// sendmail's `greet_pause`, unless a `GreetPause:` entry says otherwise.
    pub greet_pause: Span,
}

impl Default for EnvelopeSettings {
    fn default() -> Self {
        EnvelopeSettings {
            max_rcpts_per_message: 100,
            bad_rcpt_throttle: 3,
            bad_rcpt_delay: Span::secs(1),
            greet_pause: Span::millis(0),
        }
    }
}

/// When reverse names are looked up.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsMode {
    /// Only when some rule names a host or domain and the caller sent no name.
    Auto,
    /// Never: host and domain rules match only names the caller sends.
    Off,
}

/// Reverse-name lookups (PTR, forward-confirmed) for host and domain rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    pub mode: DnsMode,
    /// Name servers as `ip` or `ip:port`; empty = the system's resolv.conf.
    pub servers: Vec<String>,
    /// The longest a decision waits for a name; past it the decision goes on without
    /// one while the lookup finishes in the background for the next session.
    pub deadline: Span,
    /// The longest a background lookup may take.
    pub timeout: Span,
    /// Names remembered (positive and negative).
    pub cache_size: usize,
    /// How long a failed or unconfirmed lookup is remembered.
    pub negative_ttl: Span,
    /// Shortest a name is remembered, whatever its DNS TTL (many PTR zones say 0).
    pub min_ttl: Span,
    /// Longest a name is remembered, whatever its DNS TTL.
    pub max_ttl: Span,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            mode: DnsMode::Auto,
            servers: Vec::new(),
            deadline: Span::millis(20),
            timeout: Span::secs(2),
            cache_size: 50_000,
            negative_ttl: Span::secs(300),
            min_ttl: Span::secs(60),
            max_ttl: Span::secs(3600),
        }
    }
}

/// A prefix length in `MIN..=MAX`, checked while the file is read so that the error
/// carries its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix<const MIN: u8, const MAX: u8>(pub u8);

impl<'de, const MIN: u8, const MAX: u8> Deserialize<'de> for Prefix<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < i64::from(MIN) || v > i64::from(MAX) {
            return Err(serde::de::Error::custom(format!(
                "prefix length {v} is out of range {MIN}..={MAX}"
            )));
        }
        Ok(Prefix(v as u8))
    }
}

impl Settings {
    /// Checks relations between fields that serde cannot see. Returns the offending
    /// key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let b = &self.bad_rcpt;
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if self.client_rate.window.0.is_zero() {
            return err("client_rate.window", "must be longer than 0".into());
        }
        if self.client_conn.lease_ttl.as_millis() < 1000 {
            return err(
                "client_conn.lease_ttl",
                "must be at least 1s: agents must be able to renew leases in time".into(),
            );
        }
        if b.window.0.is_zero() {
            return err("bad_rcpt.window", "must be longer than 0".into());
        }
        if !(b.escalation.is_finite() && (1.0..=100.0).contains(&b.escalation)) {
            return err(
                "bad_rcpt.escalation",
                format!(
                    "{} is not in 1.0..=100.0 (1.0 = no escalation)",
                    b.escalation
                ),
            );
        }
        if b.block_for.0.is_zero() && (b.block_after > 0 || b.network_block_after > 0) {
            return err(
                "bad_rcpt.block_for",
                "must be longer than 0 while bans are on".into(),
            );
        }
        if b.max_block < b.block_for {
            return err(
                "bad_rcpt.max_block",
                format!(
                    "{} is shorter than block_for ({})",
                    b.max_block, b.block_for
                ),
            );
        }
        for kind in OffenceKind::ALL {
            let l = self.offences.limits(kind);
            if l.network_ban_at == 1 {
                return err(
                    &format!("offences.{kind}.network_ban_at"),
                    "1 would ban a whole network for one address's offence (ban_at would never apply): 0 (off) or at least 2".into(),
                );
            }
            for (key, v) in [("ban_at", l.ban_at), ("network_ban_at", l.network_ban_at)] {
                if v > MAX_OFFENCES {
                    return err(
                        &format!("offences.{kind}.{key}"),
                        format!("{v} is more than {MAX_OFFENCES}"),
                    );
                }
            }
            if l.window.0.is_zero() {
                return err(
                    &format!("offences.{kind}.window"),
                    "must be longer than 0".into(),
                );
            }
            if l.block_for.0.is_zero() && !l.is_off() {
                return err(
                    &format!("offences.{kind}.block_for"),
                    "must be longer than 0 while bans are on".into(),
                );
            }
            if l.block_for > b.max_block {
                return err(
                    &format!("offences.{kind}.block_for"),
                    format!(
                        "{} is longer than bad_rcpt.max_block ({}), which caps every ban",
                        l.block_for, b.max_block
                    ),
                );
            }
        }
        for (key, d) in [
            ("bad_rcpt.tarpit_delay", b.tarpit_delay),
            ("envelope.bad_rcpt_delay", self.envelope.bad_rcpt_delay),
            ("envelope.greet_pause", self.envelope.greet_pause),
        ] {
            if d > Span::secs(60) {
                return err(
                    key,
                    format!("{d} is longer than 60s; MTAs time out before that"),
                );
            }
        }
        if self.dns.deadline > Span::secs(1) {
            return err(
                "dns.deadline",
                format!(
                    "{} is longer than 1s; decisions must not wait on DNS",
                    self.dns.deadline
                ),
            );
        }
        if self.dns.min_ttl > self.dns.max_ttl {
            return err(
                "dns.min_ttl",
                format!(
                    "{} is longer than max_ttl ({})",
                    self.dns.min_ttl, self.dns.max_ttl
                ),
            );
        }
        for s in &self.dns.servers {
            if super::parse_dns_server(s).is_none() {
                return err("dns.servers", format!("{s:?} is not an ip or ip:port"));
            }
        }
        Ok(())
    }
}
