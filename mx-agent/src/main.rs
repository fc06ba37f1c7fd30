//! `mx-agent`: wires the command line and the config file to the agent.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use mx_agent::agent::Agent;
use mx_agent::config::{AgentConfig, FailMode};
use mxlimit_core::policy::duration::{Span, parse};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mxlimit's agent for one MX host: a milter (sendmail, Postfix), a Postfix policy
/// service and a socketmap, all asking the cluster-wide limiter and acting on its
/// verdicts. When the limiter does not answer within the deadline, the agent decides
/// with this host's own limits (or, with --fallback closed, answers a temporary failure).
#[derive(Debug, Parser)]
#[command(name = "mx-agent", version, about, long_about)]
struct Cli {
    /// TOML configuration file (see examples/mx-agent.toml); flags override it.
    #[arg(long, env = "MXAGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This host's node name in the cluster (default: the host name). One per process.
    #[arg(long, env = "MXAGENT_NODE")]
    node: Option<String>,
    /// Limiter endpoints (http://host:port), comma-separated.
    #[arg(long, env = "MXAGENT_LIMITER", value_delimiter = ',')]
    limiter: Vec<String>,
    /// Or a DNS name (name:port) whose A/AAAA records are the limiters.
    #[arg(long, env = "MXAGENT_LIMITER_DNS")]
    limiter_dns: Option<String>,
    /// TLS to the limiters: PEM CA certificate to trust (implies https).
    #[arg(long, env = "MXAGENT_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: this agent's PEM certificate chain (with --tls-key).
    #[arg(
        long,
        env = "MXAGENT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Mutual TLS: the PEM private key of --tls-cert.
    #[arg(
        long,
        env = "MXAGENT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The name expected in the limiters' certificate (default: the endpoint's host or
    /// the DNS name).
    #[arg(long, env = "MXAGENT_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Deadline of every limiter call (e.g. 50ms).
    #[arg(long, env = "MXAGENT_DEADLINE", value_parser = parse)]
    deadline: Option<std::time::Duration>,
    /// The longest a refusal the limiter said holds is answered here without asking
    /// (e.g. 15s; 0s = ask every time).
    #[arg(long, env = "MXAGENT_HOLD_MAX", value_parser = parse)]
    hold_max: Option<std::time::Duration>,
    /// Ended sessions' leases are released in one call this often (e.g. 100ms; 0s = a
    /// call per session).
    #[arg(long, env = "MXAGENT_RELEASE_EVERY", value_parser = parse)]
    release_every: Option<std::time::Duration>,
    /// When the limiter does not answer: decide locally (open) or tempfail (closed).
    #[arg(long, env = "MXAGENT_FALLBACK", value_enum)]
    fallback: Option<FailMode>,
    /// Milter listen address(es): inet:HOST:PORT, inet:PORT@HOST or unix:/path.
    #[arg(long, env = "MXAGENT_MILTER", value_delimiter = ',')]
    milter: Vec<String>,
    /// Postfix policy service listen address(es).
    #[arg(
        long = "policy-service",
        env = "MXAGENT_POLICY_SERVICE",
        value_delimiter = ','
    )]
    policy_service: Vec<String>,
    /// Socketmap (ban list) listen address(es).
    #[arg(long, env = "MXAGENT_SOCKETMAP", value_delimiter = ',')]
    socketmap: Vec<String>,
    /// MTA log file(s) to follow for refusals no adapter sees (e.g. /var/log/mail.log).
    #[arg(
        long = "log-file",
        env = "MXAGENT_LOG_FILES",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    log_files: Vec<PathBuf>,
    /// Read the systemd journal's mail facility too (with journalctl), where the MTA
    /// logs there.
    #[arg(long = "log-journal", env = "MXAGENT_LOG_JOURNAL")]
    log_journal: bool,
    /// Serve Prometheus metrics over HTTP on this address (any path, e.g. /metrics).
    #[arg(long, env = "MXAGENT_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, env = "MXAGENT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing syntax).
    #[arg(long, env = "MXAGENT_LOG", default_value = "info")]
    log: String,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mxlimit_core::exit::code("mx-agent", run().await)
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    let _telemetry = mxlimit_core::telemetry::init(
        "mx-agent",
        &cli.log,
        matches!(cli.log_format, LogFormat::Json),
    )?;

    let mut cfg = match &cli.config {
        Some(p) => AgentConfig::load(p).map_err(anyhow::Error::msg)?,
        None => AgentConfig::default(),
    };
    if cli.node.is_some() {
        cfg.node = cli.node.clone();
    }
    if !cli.limiter.is_empty() {
        // Endpoints given here replace the file's, DNS discovery included.
        cfg.limiter.endpoints = cli.limiter.clone();
        cfg.limiter.dns = None;
    }
    if cli.limiter_dns.is_some() {
        cfg.limiter.dns = cli.limiter_dns.clone();
    }
    if cli.tls_ca.is_some() || cli.tls_cert.is_some() || cli.tls_domain.is_some() {
        let t = cfg.limiter.tls.get_or_insert_with(Default::default);
        if cli.tls_ca.is_some() {
            t.ca = cli.tls_ca.clone();
        }
        if cli.tls_cert.is_some() {
            t.cert = cli.tls_cert.clone();
            t.key = cli.tls_key.clone();
        }
        if cli.tls_domain.is_some() {
            t.domain = cli.tls_domain.clone();
        }
    }
    if let Some(d) = cli.hold_max {
        cfg.limiter.hold_max = Span(d);
    }
    if let Some(d) = cli.release_every {
        cfg.limiter.release_every = Span(d);
    }
    if let Some(d) = cli.deadline {
        cfg.limiter.deadline = Span(d);
    }
    if let Some(f) = cli.fallback {
        cfg.fallback.mode = f;
    }
    if !cli.milter.is_empty() {
        cfg.milter.listen = cli.milter.clone();
    }
    if !cli.policy_service.is_empty() {
        cfg.policy.listen = cli.policy_service.clone();
    }
    if !cli.socketmap.is_empty() {
        cfg.socketmap.listen = cli.socketmap.clone();
    }
    if !cli.log_files.is_empty() {
        cfg.logs.files = cli.log_files.clone();
    }
    if cli.log_journal {
        cfg.logs.journal = true;
    }
    cfg.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if cfg.milter.listen.is_empty()
        && cfg.policy.listen.is_empty()
        && cfg.socketmap.listen.is_empty()
        && !cfg.logs.any()
    {
        anyhow::bail!(
            "nothing to serve: give --milter, --policy-service, --socketmap, --log-file or --log-journal (or listen addresses, log files or the journal in the config file)"
        );
    }
    if cli.check {
        println!("ok");
        return Ok(());
    }
    if let Some(addr) = cli.metrics_listen {
        mxlimit_core::metrics::serve(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        mx_agent::metrics::describe();
    }
    let agent = Agent::start(&cfg).await.context("cannot start the agent")?;
    mxlimit_core::shutdown::signal().await;
    tracing::info!("stopping");
    agent.stop().await;
    Ok(())
}
