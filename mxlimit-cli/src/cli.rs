//! The command line: global connection flags, then one subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The operator's command line for an mxlimit limiter cluster: who is attacking, why
/// an address was refused, block a network everywhere, export access files.
///
/// Every command asks one limiter (any one: answers are cluster-wide) over its Admin
/// API, which requires a bearer token (--token-file or MXLIMIT_ADMIN_TOKEN) or an
/// admin client certificate (--tls-cert/--tls-key).
#[derive(Debug, Parser)]
#[command(name = "mxlimit", version, about, long_about)]
pub struct Cli {
    /// The limiter: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        long,
        short,
        global = true,
        env = "MXLIMIT_SERVER",
        default_value = "http://127.0.0.1:7525"
    )]
    pub server: String,

    /// File whose first line (not a `#` comment) is the admin bearer token. Or give the
    /// token in MXLIMIT_ADMIN_TOKEN (environment only: a flag would show in `ps`).
    #[arg(
        long,
        global = true,
        env = "MXLIMIT_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for https:// (default: the system's roots).
    #[arg(long, global = true, env = "MXLIMIT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM), for mutual TLS or as an admin certificate.
    #[arg(
        long,
        global = true,
        env = "MXLIMIT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "MXLIMIT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The name to check the server's certificate against, if not the URL's host.
    #[arg(long, global = true, env = "MXLIMIT_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,

    /// Longest wait for an answer.
    #[arg(long, global = true, default_value = "10s", value_parser = mxlimit_proto::duration::parse)]
    pub timeout: Duration,

    /// Print JSON (one document) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum By {
    /// The limiter's networks (IPv4 /24, IPv6 /64 by default).
    Net,
    /// Single addresses.
    Addr,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Rank {
    /// Rejected recipients (dictionary attacks).
    Bad,
    /// Refused connections (floods, banned sources coming back).
    Refused,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// sendmail access map: `Connect:206.81.85<TAB>REJECT`.
    Sendmail,
    /// Postfix cidr table: `206.81.85.0/24 REJECT`.
    PostfixCidr,
    /// The list with its counts.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The window counted (up to 7d), rounded up to whole minutes (up to 1h) or hours.
    #[arg(long, default_value = "24h", value_parser = mxlimit_proto::duration::parse)]
    pub window: Duration,
    #[arg(long, value_enum, default_value = "net")]
    pub by: By,
    #[arg(long, value_enum, default_value = "bad")]
    pub rank: Rank,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The worst sources of the window, cluster-wide.
    Top(TopArgs),
    /// The top list as a ready access file (to stdout).
    Export {
        #[command(flatten)]
        top: TopArgs,
        #[arg(long, value_enum)]
        format: Format,
        /// The right-hand side of each entry.
        #[arg(long, default_value = "REJECT")]
        action: String,
        /// Leave out sources with fewer than this many (of the ranked count).
        #[arg(long, default_value_t = 1)]
        min: u64,
    },
    /// Why an address is (or would be) refused: rules, counters, bans, and what a
    /// connection would get now. Counts nothing.
    Explain {
        /// The client address.
        address: String,
        /// Its verified reverse name, for host and domain rules.
        #[arg(long)]
        name: Option<String>,
    },
    /// Block an address or network on every MX.
    Block {
        /// An address or CIDR network: 206.81.85.0/24, 2001:db8:1:2::/64.
        target: String,
        /// How long.
        #[arg(long = "for", default_value = "1h", value_parser = mxlimit_proto::duration::parse)]
        duration: Duration,
        /// Why (shown to the sender in the SMTP reply, and in `blocks`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift an operator's block on exactly this target, and the automatic ban of this
    /// address or network.
    Unblock { target: String },
    /// Operator blocks (all) and automatic bans (those with the most time left) in force.
    Blocks {
        /// Automatic bans listed at most (the limiter lists 10000 at most).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Make the limiter read its rule files now.
    Reload,
    /// Read mail logs (sendmail, Postfix, Exim; syslog or the MTA's own files) and
    /// list the sources with the most unknown recipients, early talking, protocol
    /// errors and AUTH failures. Reads the files only, unless --seed asks the limiter
    /// to add the unknown recipients to its top lists.
    ImportLog {
        /// Log files, read in turn (`-` for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "net")]
        by: By,
        /// Sources listed at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The network of an IPv4 address, as the limiter's `[network] ipv4_prefix`.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
        ipv4_prefix: u8,
        /// The network of an IPv6 address, as the limiter's `[network] ipv6_prefix`.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(16..=128))]
        ipv6_prefix: u8,
        /// Only events at or after this time: `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS]`, in
        /// the log's own time zone. Syslog stamps without a year are put in the year
        /// nearest to this (or --until).
        #[arg(long, value_parser = parse_time)]
        since: Option<mxlimit_maillog::Stamp>,
        /// Only events before this time (same forms as --since).
        #[arg(long, value_parser = parse_time)]
        until: Option<mxlimit_maillog::Stamp>,
        /// Also add the unknown recipients read to the limiter's top lists, each at the
        /// minute it was logged (the last 7 days; `top` and `export` then list the
        /// attack from before mxlimit ran). Counts toward no ban. Seeding a log again,
        /// or a log that overlaps one seeded, adds only what is new. Times without a
        /// zone are read in the local zone (TZ).
        #[arg(long)]
        seed: bool,
        /// With --seed: the host that wrote the logs (default: this host's name). What
        /// was seeded is remembered per origin, so that the logs of two MX hosts add
        /// up while one host's logs seeded twice count once.
        #[arg(long, requires = "seed")]
        origin: Option<String>,
    },
}

/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DD HH:MM:SS` (or with `T`).
fn parse_time(s: &str) -> Result<mxlimit_maillog::Stamp, String> {
    let full = match s.len() {
        10 => format!("{s} 00:00:00"),
        16 => format!("{s}:00"),
        _ => s.to_string(),
    };
    match mxlimit_maillog::stamp(&full) {
        Some(t) if t.year.is_some() && full.len() == 19 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a time: write YYYY-MM-DD, YYYY-MM-DD HH:MM or YYYY-MM-DD HH:MM:SS"
        )),
    }
}
