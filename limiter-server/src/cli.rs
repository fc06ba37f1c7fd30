//! Command-line flags; each also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The mxlimit limiter: cluster-wide ClientRate, ClientConn and bad-recipient limits
/// for a fleet of MX hosts, over gRPC (mxlimit.v1.Limiter).
///
/// With no flags it serves on 127.0.0.1:7525 from an in-memory store with the default
/// policy. Rules reload on SIGHUP and when a file changes; a broken file is refused and
/// the rules in force stay.
// No Debug: the parsed flags may hold the Redis password.
#[derive(Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "MXLIMIT_LISTEN", default_value = limiter_server::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Serve gRPC over TLS with this PEM certificate chain (with --tls-key). Reloaded
    /// when the file changes.
    #[arg(
        long,
        env = "MXLIMIT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "MXLIMIT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
    #[arg(
        long,
        env = "MXLIMIT_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Admin API: bearer tokens, one per line (several while rotating; `#` comments).
    /// Reloaded when the file changes: a token taken out is revoked. One token may also
    /// come from the environment alone, as MXLIMIT_ADMIN_TOKEN (never a flag: flags show
    /// in process listings). Without any admin credential the Admin service refuses
    /// every call.
    #[arg(long, env = "MXLIMIT_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Admin API: client certificates valid for this DNS name (subjectAltName) are
    /// admins. Needs --tls-client-ca. Repeat for several names.
    #[arg(
        long,
        env = "MXLIMIT_ADMIN_CERT_NAME",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "tls_client_ca"
    )]
    pub admin_cert_name: Vec<String>,

    /// How often each limiter sends its top-list counts to the store and reads the
    /// operators' blocks back (a block made elsewhere bites here within this time).
    #[arg(long, env = "MXLIMIT_LEDGER_INTERVAL", default_value = "1s", value_parser = duration)]
    pub ledger_interval: Duration,

    /// Sources kept per top-list bucket (minute and hour buckets): bounds the store's
    /// memory under an attack from ever new addresses.
    #[arg(long, env = "MXLIMIT_TOP_KEEP", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
    pub top_keep: u32,

    /// Also serve gRPC health alone, in plaintext, on this address: for probes that
    /// cannot speak TLS (Kubernetes gRPC probes).
    #[arg(long, env = "MXLIMIT_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics over HTTP on this address (any path, e.g. /metrics).
    #[arg(long, env = "MXLIMIT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Redis to keep the counters in: redis://host:port for one server (a cluster node
    /// is detected), or comma-separated cluster seeds. Without it, counters live in this
    /// process (one limiter only).
    #[arg(
        long,
        env = "MXLIMIT_REDIS",
        value_name = "URL[,URL...]",
        hide_env_values = true
    )]
    pub redis: Option<String>,

    /// Redis ACL user (with --redis-password).
    #[arg(long, env = "MXLIMIT_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Redis password. Prefer the environment variable or --redis-password-file: a flag
    /// shows in process listings.
    #[arg(
        long,
        env = "MXLIMIT_REDIS_PASSWORD",
        hide_env_values = true,
        conflicts_with = "redis_password_file"
    )]
    pub redis_password: Option<String>,

    /// File whose first line is the Redis password (a mounted Secret, for example).
    #[arg(long, env = "MXLIMIT_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// For rediss:// URLs: PEM CA certificate(s) that signed the Redis servers'
    /// certificates (default: the system's roots).
    #[arg(long, env = "MXLIMIT_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// For Redis servers that require client certificates: PEM chain (with
    /// --redis-tls-key). Read at start.
    #[arg(
        long,
        env = "MXLIMIT_REDIS_TLS_CERT",
        value_name = "FILE",
        requires = "redis_tls_key"
    )]
    pub redis_tls_cert: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert.
    #[arg(
        long,
        env = "MXLIMIT_REDIS_TLS_KEY",
        value_name = "FILE",
        requires = "redis_tls_cert"
    )]
    pub redis_tls_key: Option<PathBuf>,

    /// Prefix of every Redis key, so that deployments can share a Redis.
    #[arg(long, env = "MXLIMIT_REDIS_PREFIX", default_value = "mxl")]
    pub redis_prefix: String,

    /// Longest wait for one Redis reply; past it the call fails and agents fall back.
    #[arg(long, env = "MXLIMIT_REDIS_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub redis_timeout: Duration,

    /// TOML policy file (limits, thresholds, defaults). Without it the documented
    /// defaults apply.
    #[arg(long, env = "MXLIMIT_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// sendmail access file(s), read as is (Connect:, ClientRate:, ClientConn:,
    /// GreetPause:, NetRate:, NetConn:). Repeat the flag, or separate with commas.
    #[arg(
        long,
        env = "MXLIMIT_ACCESS",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub access: Vec<PathBuf>,

    /// How often rule files are checked for changes.
    #[arg(long, env = "MXLIMIT_RELOAD_INTERVAL", default_value = "2s", value_parser = duration)]
    pub reload_interval: Duration,

    /// Upper bound of any one request, whatever deadline the caller sent.
    #[arg(long, env = "MXLIMIT_REQUEST_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub request_timeout: Duration,

    /// On SIGTERM, how long calls in flight may take to finish before the server exits
    /// (callers' deadlines are far shorter; this only bounds clients that never hang up).
    #[arg(long, env = "MXLIMIT_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Addresses and networks the in-memory store tracks at most (the coldest unbanned
    /// go first past it).
    #[arg(long, env = "MXLIMIT_MEMORY_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub memory_max_entries: usize,

    /// Log format.
    #[arg(long, env = "MXLIMIT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing syntax, e.g. "info", or "mxlimit_core=debug" for the decisions, "limiter_server=debug" for the server).
    #[arg(long, env = "MXLIMIT_LOG", default_value = "info")]
    pub log: String,

    /// Load the policy and access files, report problems, and exit (0 = valid).
    #[arg(long)]
    pub check: bool,

    /// Ask the limiter at HOST:PORT whether it serves (gRPC health of mxlimit.v1.Limiter,
    /// which follows its store), print the answer, and exit (0 = serving). Without
    /// HOST:PORT: this configuration's own plaintext port (--health-listen, else
    /// --listen), on loopback if it listens on all addresses. For container health
    /// checks and `helm test`.
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = "")]
    pub health_check: Option<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    mxlimit_core::policy::duration::parse(s)
}
