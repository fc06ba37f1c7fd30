//! The agent's configuration: a TOML file, overridden by flags and environment variables.

use std::path::{Path, PathBuf};

use mxlimit_core::policy::duration::Span;
use serde::Deserialize;

use crate::listen::ListenAddr;

/// What to do when the limiter does not answer within the deadline.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Decide locally, with this host's own limits (the default: mail keeps flowing).
    Open,
    /// Refuse with a temporary failure (the sender retries later).
    Closed,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This MX host's name in the cluster; default: the host name. One per process.
    pub node: Option<String>,
    pub limiter: LimiterSettings,
    pub fallback: FallbackSettings,
    pub milter: AdapterSettings,
    pub policy: AdapterSettings,
    pub socketmap: SocketmapSettings,
    pub logs: LogSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterSettings {
    /// Limiter endpoints, `http://host:port` (or `host:port`).
    pub endpoints: Vec<String>,
    /// Or a DNS name whose A/AAAA records are the limiters (a Kubernetes headless
    /// Service), as `name:port`; re-resolved every `resolve_every`.
    pub dns: Option<String>,
    /// Name servers for `dns` (`ip` or `ip:port`); empty = /etc/resolv.conf.
    pub dns_servers: Vec<String>,
    pub resolve_every: Span,
    /// Every call's deadline: past it, the agent decides locally.
    pub deadline: Span,
    pub connect_timeout: Span,
    /// A Connect refused by a ban or ClientRate is answered by the agent itself for as
    /// long as the limiter says the refusal holds, but never longer than this (so that
    /// an operator's unblock reaches this MX within it); 0 = always ask.
    pub hold_max: Span,
    /// Ended sessions' leases are released in batches, one call for many, this often
    /// (a lease is freed within it plus one call); 0 = one call per session.
    pub release_every: Span,
    /// TLS to the limiters (`[limiter.tls]`); absent = plaintext.
    pub tls: Option<ClientTlsSettings>,
}

/// TLS to the limiters: the CA that signed their certificate and, for mutual TLS, this
/// agent's certificate. The files are checked every `reload_every` and the connections
/// remade when they change.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsSettings {
    /// PEM CA certificate(s) to trust; empty = the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS), with `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to expect in the limiters' certificate; default: the endpoint's host,
    /// or the `dns` name.
    pub domain: Option<String>,
    pub reload_every: Span,
}

impl Default for ClientTlsSettings {
    fn default() -> Self {
        ClientTlsSettings {
            ca: None,
            cert: None,
            key: None,
            domain: None,
            reload_every: Span::secs(10),
        }
    }
}

impl Default for LimiterSettings {
    fn default() -> Self {
        LimiterSettings {
            endpoints: vec![format!("http://{}", mxlimit_proto::DEFAULT_LISTEN)],
            dns: None,
            dns_servers: Vec::new(),
            resolve_every: Span::secs(10),
            deadline: Span::millis(50),
            connect_timeout: Span::secs(1),
            hold_max: Span::secs(15),
            release_every: Span::millis(100),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackSettings {
    pub mode: FailMode,
    /// The limits this host applies alone while the limiter is unreachable: a limiter
    /// policy file (same syntax); default: the limiter's defaults.
    pub policy: Option<PathBuf>,
    /// sendmail access files for the local limits.
    pub access: Vec<PathBuf>,
    /// After 3 failures in a row, the limiter is not asked for this long: SMTP steps
    /// do not each wait out the deadline while it is down.
    pub retry_after: Span,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            mode: FailMode::Open,
            policy: None,
            access: Vec::new(),
            retry_after: Span::secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSettings {
    /// Where to listen; empty = off.
    pub listen: Vec<String>,
    /// The longest delay (tarpit, greet pause) the adapter applies to one reply; keep it
    /// under the MTA's timeout for one step (sendmail milter `T=R:` 10 s by default).
    pub max_delay: Span,
    /// Sessions served at once.
    pub max_sessions: usize,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        AdapterSettings {
            listen: Vec::new(),
            max_delay: Span::secs(8),
            max_sessions: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketmapSettings {
    pub listen: Vec<String>,
    /// MTA connections served at once.
    pub max_sessions: usize,
}

impl Default for SocketmapSettings {
    fn default() -> Self {
        SocketmapSettings {
            listen: Vec::new(),
            max_sessions: 10_000,
        }
    }
}

/// The MTA's log files to follow, or the systemd journal (`[logs]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// e.g. `/var/log/mail.log` (rsyslog), Postfix's `maillog_file`, Exim's mainlog.
    pub files: Vec<PathBuf>,
    /// How often a file at its end is looked at again.
    pub poll: Span,
    /// Events waiting for the limiter at most; past it they are dropped and counted.
    pub queue: usize,
    /// Read the systemd journal (with journalctl), where the MTA logs there.
    pub journal: bool,
    /// The journal's entries to read, as journalctl matches (`FIELD=value`), any of
    /// them; the mail facility by default.
    pub journal_match: Vec<String>,
    /// A journal directory other than the system's (e.g. the host's, mounted into a
    /// container).
    pub journal_directory: Option<PathBuf>,
    /// Where the journal reader keeps its place: after a restart it goes on from there,
    /// so that what the MTA logged meanwhile is counted. Without it, reading starts at
    /// the end.
    pub journal_cursor: Option<PathBuf>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            files: Vec::new(),
            poll: Span::millis(250),
            queue: 10_000,
            journal: false,
            journal_match: vec!["SYSLOG_FACILITY=2".into()],
            journal_directory: None,
            journal_cursor: None,
        }
    }
}

impl LogSettings {
    /// Whether the log adapter runs at all.
    pub fn any(&self) -> bool {
        !self.files.is_empty() || self.journal
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AgentConfig::parse(&text, path)
    }

    /// The configuration in `text` (read from `path`, named in errors), validated.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, String> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .unwrap_or(0);
            format!("{}:{line}: {}", path.display(), e.message())
        })?;
        cfg.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, a) in [("milter", &self.milter), ("policy", &self.policy)] {
            for l in &a.listen {
                l.parse::<ListenAddr>()
                    .map_err(|e| format!("{name}.listen: {e}"))?;
            }
            if a.max_delay > Span::secs(60) {
                return Err(format!(
                    "{name}.max_delay: {} is longer than 60s",
                    a.max_delay
                ));
            }
        }
        for l in &self.socketmap.listen {
            l.parse::<ListenAddr>()
                .map_err(|e| format!("socketmap.listen: {e}"))?;
        }
        if self.logs.poll < Span::millis(10) || self.logs.poll > Span::secs(10) {
            return Err(format!(
                "logs.poll: {} is not between 10ms and 10s",
                self.logs.poll
            ));
        }
        for m in &self.logs.journal_match {
            let ok = m.split_once('=').is_some_and(|(f, _)| {
                !f.is_empty()
                    && f.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
            if !ok {
                return Err(format!(
                    "logs.journal_match: {m:?} is not FIELD=value (upper-case field names, e.g. SYSLOG_FACILITY=2)"
                ));
            }
        }
        if self.logs.queue == 0 {
            return Err("logs.queue: must be at least 1".into());
        }
        if self.limiter.endpoints.is_empty() && self.limiter.dns.is_none() {
            return Err("limiter: give endpoints or dns".into());
        }
        if let Some(d) = &self.limiter.dns {
            parse_dns_target(d)?;
        }
        if self.limiter.tls.is_some()
            && let Some(e) = self
                .limiter
                .endpoints
                .iter()
                .find(|e| e.starts_with("http://"))
            && self.limiter.dns.is_none()
        {
            return Err(format!(
                "limiter.endpoints: {e} is plaintext but limiter.tls is set: write https:// (or no scheme)"
            ));
        }
        if let Some(t) = &self.limiter.tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err("limiter.tls: give cert and key together".into());
            }
            if t.reload_every.0.is_zero() {
                return Err("limiter.tls.reload_every must be more than 0".into());
            }
        }
        if self.limiter.release_every > Span::secs(5) {
            return Err(format!(
                "limiter.release_every: {} is over 5s (ended sessions would keep their leases that long)",
                self.limiter.release_every
            ));
        }
        if self.limiter.hold_max > Span::secs(300) {
            return Err(format!(
                "limiter.hold_max: {} is over 5m (an unblock would take that long to reach this MX)",
                self.limiter.hold_max
            ));
        }
        if self.limiter.deadline.0.is_zero() || self.limiter.deadline > Span::secs(5) {
            return Err(format!(
                "limiter.deadline: {} is not in (0, 5s]",
                self.limiter.deadline
            ));
        }
        Ok(())
    }
}

/// `name:port` for DNS discovery.
pub fn parse_dns_target(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("limiter.dns: {s:?} needs a port (name:port)"))?;
    let port = port
        .parse()
        .map_err(|_| format!("limiter.dns: {port:?} is not a port"))?;
    if name.is_empty() {
        return Err(format!("limiter.dns: {s:?} has no name"));
    }
    Ok((name.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_targets_need_a_port() {
        assert_eq!(
            parse_dns_target("lim.svc:7525").unwrap(),
            ("lim.svc".to_string(), 7525)
        );
        assert!(
            parse_dns_target("lim.svc")
                .unwrap_err()
                .contains("needs a port")
        );
        assert!(parse_dns_target(":7525").is_err());
    }

    #[test]
    fn journal_matches_must_be_field_equals_value() {
        let mut cfg = AgentConfig::default();
        cfg.logs.journal_match = vec![
            "SYSLOG_FACILITY=2".into(),
            "_SYSTEMD_UNIT=exim4.service".into(),
        ];
        cfg.validate().unwrap();
        for bad in ["mail", "=2", "syslog_facility=2", "--since=today"] {
            cfg.logs.journal_match = vec![bad.into()];
            let e = cfg.validate().unwrap_err();
            assert!(e.starts_with("logs.journal_match:"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_example_file_is_valid_and_spells_out_the_defaults() {
        let text = include_str!("../../examples/mx-agent.toml");
        let cfg: AgentConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        let expected = AgentConfig {
            node: Some("mx1.example.com".into()),
            milter: AdapterSettings {
                listen: vec!["inet:127.0.0.1:7026".into()],
                ..Default::default()
            },
            policy: AdapterSettings {
                listen: vec!["inet:127.0.0.1:7027".into()],
                ..Default::default()
            },
            socketmap: SocketmapSettings {
                listen: vec!["inet:127.0.0.1:7028".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(cfg, expected);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[milter]\nlisten = [\"nowhere\"]\n").unwrap();
        assert!(
            AgentConfig::load(&p)
                .unwrap_err()
                .contains("milter.listen: \"nowhere\" is not a listen address")
        );
        std::fs::write(&p, "[limiter]\ndeadlin = \"5ms\"\n").unwrap();
        let e = AgentConfig::load(&p).unwrap_err();
        assert!(
            e.contains("a.toml:2") && e.contains("unknown field `deadlin`"),
            "{e}"
        );
    }

    #[test]
    fn tls_with_a_plaintext_endpoint_is_refused() {
        let mut cfg = AgentConfig::default();
        cfg.limiter.endpoints = vec!["http://10.0.0.1:7525".into()];
        cfg.limiter.tls = Some(ClientTlsSettings::default());
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("is plaintext but limiter.tls is set")
        );
        cfg.limiter.endpoints = vec!["https://10.0.0.1:7525".into(), "10.0.0.2:7525".into()];
        cfg.validate().unwrap();
    }
}
