//! The policy: the TOML settings plus the sendmail access entries, compiled into
//! lookup tables. A `Policy` is immutable; a reload builds a new one and swaps it in
//! whole (see `reload`), so a decision always sees one consistent set of rules.

pub mod access;
pub mod duration;
pub mod reload;
pub mod settings;
pub mod table;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::source::{Aggregation, Source};
use access::{AccessFile, ConnectAction, Entry, Key, LineError, Tag, Value};
pub use settings::Settings;
use table::{Inserted, RuleTable};

/// A policy that cannot be loaded, with where and why.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Toml {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    Setting {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}", join_lines(.0))]
    Access(Vec<LineError>),
}

fn join_lines(errors: &[LineError]) -> String {
    let mut s = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&e.to_string());
    }
    s
}

/// A limit and the rule it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<'a> {
    /// 0 = unlimited.
    pub value: u32,
    /// In access syntax (`ClientRate:67.92.16`), or `policy:<key>` for a TOML default.
    pub rule: &'a str,
}

/// Everything the policy says about one client at connect time.
#[derive(Debug, Clone, Copy)]
pub struct ClientRules<'a> {
    /// The `Connect:` entry that matched, unless it was `SKIP`.
    pub connect: Option<&'a Entry>,
    pub rate: Limit<'a>,
    pub net_rate: Limit<'a>,
    pub conn: Limit<'a>,
    pub net_conn: Limit<'a>,
    pub greet_pause_ms: u32,
}

impl ClientRules<'_> {
    /// `OK`/`RELAY`: no limits, bans or counting.
    pub fn exempt(&self) -> bool {
        matches!(
            self.connect.map(|e| &e.value),
            Some(Value::Connect(ConnectAction::Exempt))
        )
    }
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub settings: Settings,
    pub aggregation: Aggregation,
    tables: [RuleTable; Tag::ALL.len()],
    /// Whether any rule names a host or domain (only then are names looked up).
    pub has_name_rules: bool,
    /// The files this policy was read from, for the reload watcher.
    pub files: Vec<PathBuf>,
    /// Notes for the operator: replaced entries, skipped tags, DISCARD ...
    pub warnings: Vec<String>,
    pub entry_count: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::compile(Settings::default(), Vec::new(), Vec::new())
            .expect("the default policy compiles")
    }
}

impl Policy {
    /// Reads the policy file (if any) and the access files: those named on the command
    /// line first, then those the policy file names.
    pub fn load(
        policy_file: Option<&Path>,
        access_files: &[PathBuf],
    ) -> Result<Policy, PolicyError> {
        let mut files = Vec::new();
        let settings = match policy_file {
            Some(path) => {
                files.push(path.to_path_buf());
                parse_settings(&read(path)?, path)?
            }
            None => Settings::default(),
        };
        let base = policy_file.and_then(Path::parent).unwrap_or(Path::new(""));
        let mut paths: Vec<PathBuf> = access_files.to_vec();
        paths.extend(settings.access_files.iter().map(|p| base.join(p)));
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for path in &paths {
            files.push(path.clone());
            let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
                file: path.clone(),
                source,
            })?;
            match access::parse_bytes(&bytes, path) {
                Ok(f) => parsed.push(f),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError::Access(errors));
        }
        Policy::compile(settings, parsed, files)
    }

    /// Builds the lookup tables and checks rules against the settings.
    pub fn compile(
        settings: Settings,
        access: Vec<AccessFile>,
        files: Vec<PathBuf>,
    ) -> Result<Policy, PolicyError> {
        let aggregation = Aggregation {
            ipv4_prefix: settings.network.ipv4_prefix.0,
            ipv6_prefix: settings.network.ipv6_prefix.0,
        };
        let mut tables: [RuleTable; Tag::ALL.len()] = Default::default();
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut entry_count = 0;
        for file in access {
            warnings.extend(file.warnings);
            for (tag, n) in &file.skipped {
                tracing::debug!(tag, entries = n, "access entries skipped");
            }
            for e in file.entries {
                if let Err(reason) = check_entry(&e, aggregation) {
                    errors.push(LineError {
                        origin: e.origin.clone(),
                        reason,
                    });
                    continue;
                }
                entry_count += 1;
                let origin = e.origin.clone();
                let rule = e.rule.clone();
                match tables[e.tag as usize].insert(e) {
                    Inserted::New => {}
                    Inserted::Replaced(old) => warnings.push(format!(
                        "{origin}: {rule} replaces the entry at {}",
                        old.origin
                    )),
                    Inserted::Shadowed => warnings.push(format!(
                        "{origin}: untagged {rule} is shadowed by a Connect: entry of the same key"
                    )),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError::Access(errors));
        }
        let has_name_rules = tables.iter().any(RuleTable::has_names);
        Ok(Policy {
            settings,
            aggregation,
            tables,
            has_name_rules,
            files,
            warnings,
            entry_count,
        })
    }

    pub fn source(&self, ip: IpAddr) -> Source {
        Source::new(ip, self.aggregation)
    }

    pub fn table(&self, tag: Tag) -> &RuleTable {
        &self.tables[tag as usize]
    }

    /// The rules for a client, most specific first, as sendmail would find them.
    pub fn client_rules(&self, source: &Source, name: Option<&str>) -> ClientRules<'_> {
        let s = &self.settings;
        let connect = self
            .table(Tag::Connect)
            .lookup(source.ip, name)
            .filter(|e| e.value != Value::Connect(ConnectAction::Skip));
        let greet_pause_ms = match self.table(Tag::GreetPause).lookup(source.ip, name) {
            Some(Entry {
                value: Value::Number(n),
                ..
            }) => *n,
            _ => clamp_ms(s.envelope.greet_pause.as_millis()),
        };
        // Network limits are looked up by the network, never by a name: a name is one
        // host, a network is many.
        let net_ip = source.net.network();
        ClientRules {
            connect,
            rate: self.limit(
                Tag::ClientRate,
                source.ip,
                name,
                s.client_rate.address,
                "policy:client_rate.address",
            ),
            net_rate: self.limit(
                Tag::NetRate,
                net_ip,
                None,
                s.client_rate.network,
                "policy:client_rate.network",
            ),
            conn: self.limit(
                Tag::ClientConn,
                source.ip,
                name,
                s.client_conn.address,
                "policy:client_conn.address",
            ),
            net_conn: self.limit(
                Tag::NetConn,
                net_ip,
                None,
                s.client_conn.network,
                "policy:client_conn.network",
            ),
            greet_pause_ms,
        }
    }

    fn limit<'a>(
        &'a self,
        tag: Tag,
        ip: IpAddr,
        name: Option<&str>,
        default: u32,
        default_rule: &'static str,
    ) -> Limit<'a> {
        match self.table(tag).lookup(ip, name) {
            Some(Entry {
                value: Value::Number(n),
                rule,
                ..
            }) => Limit { value: *n, rule },
            _ => Limit {
                value: default,
                rule: default_rule,
            },
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} access entries from {} file(s), shadow={}",
            self.entry_count,
            self.files.len(),
            self.settings.shadow
        )
    }
}

/// Checks an entry against rules that need the settings.
fn check_entry(e: &Entry, agg: Aggregation) -> Result<(), String> {
    if matches!(e.tag, Tag::NetRate | Tag::NetConn) {
        match &e.key {
            Key::Name(_) => {
                return Err(format!(
                    "{}: a network limit needs an address prefix, not a name",
                    e.rule
                ));
            }
            Key::Net(net) => {
                let max = match net {
                    ipnet::IpNet::V4(_) => agg.ipv4_prefix,
                    ipnet::IpNet::V6(_) => agg.ipv6_prefix,
                };
                if net.prefix_len() > max {
                    return Err(format!(
                        "{}: {net} is narrower than the /{max} networks limits are counted for",
                        e.rule
                    ));
                }
            }
            Key::Any => {}
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.to_path_buf(),
        source,
    })
}

/// Parses and validates the TOML settings.
pub fn parse_settings(text: &str, file: &Path) -> Result<Settings, PolicyError> {
    let settings: Settings = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        PolicyError::Toml {
            file: file.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })?;
    settings
        .validate()
        .map_err(|(key, message)| PolicyError::Setting {
            file: file.to_path_buf(),
            key,
            message,
        })?;
    Ok(settings)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// `ip` or `ip:port` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn clamp_ms(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str, access: &str) -> Policy {
        let settings = parse_settings(toml, Path::new("policy.toml")).unwrap();
        let file = access::parse(access, Path::new("access")).unwrap();
        Policy::compile(settings, vec![file], vec![]).unwrap()
    }

    fn src(p: &Policy, ip: &str) -> Source {
        p.source(ip.parse().unwrap())
    }

    #[test]
    fn defaults_apply_without_entries() {
        let p = Policy::default();
        let r = p.client_rules(&src(&p, "1.2.3.4"), None);
        assert_eq!(
            r.rate,
            Limit {
                value: 60,
                rule: "policy:client_rate.address"
            }
        );
        assert_eq!(r.net_rate.value, 300);
        assert_eq!(r.conn.value, 10);
        assert_eq!(r.net_conn.value, 50);
        assert!(r.connect.is_none());
        assert!(!p.has_name_rules);
    }

    #[test]
    fn the_sendmail_users_file_decides_as_sendmail_would() {
        let p = policy(
            "",
            "Connect:206.81.85\tREJECT\nClientRate:67.92.16\t2\nClientConn:61.191.231\t2\n\
             ClientRate:\t10\nClientConn:\t5\nClientRate:customerdomain.com\t0\n\
             GreetPause:okslammer.com\t0\nGreetPause:127.0.0.1\t0\n",
        );
        assert!(p.has_name_rules);
        let r = p.client_rules(&src(&p, "206.81.85.7"), None);
        assert_eq!(r.connect.unwrap().rule, "Connect:206.81.85");
        let r = p.client_rules(&src(&p, "67.92.16.9"), None);
        assert_eq!(
            r.rate,
            Limit {
                value: 2,
                rule: "ClientRate:67.92.16"
            }
        );
        assert_eq!(
            r.conn,
            Limit {
                value: 5,
                rule: "ClientConn:"
            }
        );
        let r = p.client_rules(&src(&p, "61.191.231.1"), None);
        assert_eq!(
            r.conn,
            Limit {
                value: 2,
                rule: "ClientConn:61.191.231"
            }
        );
        assert_eq!(
            r.rate,
            Limit {
                value: 10,
                rule: "ClientRate:"
            }
        );
        let r = p.client_rules(&src(&p, "67.92.16.9"), Some("mail.customerdomain.com"));
        assert_eq!(
            r.rate,
            Limit {
                value: 0,
                rule: "ClientRate:customerdomain.com"
            }
        );
        let r = p.client_rules(&src(&p, "9.9.9.9"), Some("mx.okslammer.com"));
        assert_eq!(r.greet_pause_ms, 0);
    }

    #[test]
    fn network_limits_come_from_netrate_entries() {
        let p = policy(
            "[client_rate]\nnetwork = 100\n",
            "NetRate:206.81.85\t20\nNetConn:10\t3\n",
        );
        let r = p.client_rules(&src(&p, "206.81.85.7"), None);
        assert_eq!(
            r.net_rate,
            Limit {
                value: 20,
                rule: "NetRate:206.81.85"
            }
        );
        let r = p.client_rules(&src(&p, "10.1.2.3"), None);
        assert_eq!(
            r.net_conn,
            Limit {
                value: 3,
                rule: "NetConn:10"
            }
        );
        assert_eq!(r.net_rate.value, 100);
    }

    #[test]
    fn a_network_limit_narrower_than_the_network_is_refused() {
        let settings = Settings::default();
        let file = access::parse("NetRate:10.1.2.0/25 5\n", Path::new("access")).unwrap();
        let err = Policy::compile(settings, vec![file], vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "access:1: NetRate:10.1.2.0/25: 10.1.2.0/25 is narrower than the /24 networks limits are counted for"
        );
    }

    #[test]
    fn toml_errors_carry_file_line_and_reason() {
        let e = parse_settings(
            "shadow = false\n[client_rate]\nwindw = \"1m\"\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.toml:3:"), "{e}");
        assert!(e.contains("unknown field `windw`"), "{e}");
        let e = parse_settings("[network]\nipv4_prefix = 33\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:2:"), "{e}");
        assert!(e.contains("out of range 8..=32"), "{e}");
        let e = parse_settings("[bad_rcpt]\ntarpit_delay = 5\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml:2:") && e.contains("no unit"), "{e}");
        let e = parse_settings(
            "[bad_rcpt]\nblock_for = \"2h\"\nmax_block = \"1h\"\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "p.toml: bad_rcpt.max_block: 1h is shorter than block_for (2h)"
        );
    }

    #[test]
    fn an_offence_table_overrides_only_the_keys_it_names() {
        use crate::offence::OffenceKind;
        let s = parse_settings(
            "[offences.auth]\nban_at = 10\n[offences.pregreet]\nnetwork_ban_at = 0\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let auth = s.offences.limits(OffenceKind::Auth);
        assert_eq!((auth.ban_at, auth.network_ban_at), (10, 0));
        assert_eq!(auth.window, duration::Span::secs(3600));
        let pregreet = s.offences.limits(OffenceKind::Pregreet);
        assert_eq!((pregreet.ban_at, pregreet.network_ban_at), (1, 0));
        assert_eq!(
            s.offences.limits(OffenceKind::Protocol),
            settings::OffenceLimits::default_for(OffenceKind::Protocol)
        );
        let e = parse_settings("[offences.pregret]\nban_at = 1\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `pregret`"), "{e}");
        let e = parse_settings(
            "[offences.protocol]\nblock_for = \"2d\"\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "p.toml: offences.protocol.block_for: 2d is longer than bad_rcpt.max_block (1d), which caps every ban"
        );
        for (text, says) in [
            (
                "[offences.pregreet]\nnetwork_ban_at = 1\n",
                "offences.pregreet.network_ban_at: 1 would ban",
            ),
            (
                "[offences.auth]\nban_at = 5000\n",
                "offences.auth.ban_at: 5000 is more than 1000",
            ),
        ] {
            let e = parse_settings(text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_example_policy_file_is_valid_and_spells_out_the_defaults() {
        let text = include_str!("../../../examples/policy.toml");
        let mut s = parse_settings(text, Path::new("examples/policy.toml")).unwrap();
        // The offence tables spell out every key; what they resolve to must be the
        // defaults.
        for k in crate::offence::OffenceKind::ALL {
            assert_eq!(
                s.offences.limits(k),
                settings::OffenceLimits::default_for(k),
                "{k}"
            );
            assert_ne!(
                s.offences.table(k),
                &settings::OffenceTable::default(),
                "examples/policy.toml must show [offences.{k}]"
            );
        }
        s.offences = Default::default();
        let expected = Settings {
            access_files: vec!["access".into()],
            ..Settings::default()
        };
        assert_eq!(s, expected, "examples/policy.toml must show the defaults");
    }
}
