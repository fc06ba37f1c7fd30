//! `limiter-server`: wires the command line to the policy, the store and the server.

mod cli;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use limiter_server::admin::KeeperOptions;
use limiter_server::admin::auth::{AdminAuth, AuthConfig};
use limiter_server::server::{self, ServeOptions};
use limiter_server::store::redis::{RedisConfig, RedisStore, RedisTls};
use limiter_server::tls::{ServerTls, TlsFiles};
use mxlimit_core::decision::Engine;
use mxlimit_core::policy::reload::{PolicyHandle, PolicySource};
use mxlimit_core::store::Store;
use mxlimit_core::store::instrumented::Instrumented;
use mxlimit_core::store::ledger::Ledger;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use tokio::net::TcpListener;

use cli::{Cli, LogFormat};

// Many small allocations per request from many threads: mimalloc keeps them cheap
// (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mxlimit_core::exit::code("limiter-server", run().await)
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(addr) = &cli.health_check {
        return health_check(&health_target(&cli, addr)?).await;
    }
    let _telemetry = mxlimit_core::telemetry::init(
        "limiter-server",
        &cli.log,
        matches!(cli.log_format, LogFormat::Json),
    )?;

    let source = PolicySource {
        policy_file: cli.policy.clone(),
        access_files: cli.access.clone(),
    };
    if cli.check {
        return check(&source);
    }
    if let Some(addr) = cli.metrics_listen {
        mxlimit_core::metrics::serve(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        limiter_server::metrics::describe();
    }
    let policy = Arc::new(PolicyHandle::open(source).context("cannot load the policy")?);
    // One signal stops everything: the file watchers and the server.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        mxlimit_core::shutdown::signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(policy.clone().watch(cli.reload_interval, until_stopped()));

    match &cli.redis {
        Some(urls) => {
            let store = redis_store(&cli, urls).await?;
            serve(store, policy, &cli, until_stopped).await
        }
        None => {
            let store = Arc::new(MemoryStore::new(MemoryConfig {
                max_entries: cli.memory_max_entries,
            }));
            store.sweeper(std::time::Duration::from_secs(10));
            serve(store, policy, &cli, until_stopped).await
        }
    }
}

/// `--check`: load the policy and the access files, say what they hold, serve nothing.
fn check(source: &PolicySource) -> Result<()> {
    let p = source.load().context("policy check failed")?;
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    println!("ok: {p}");
    Ok(())
}

/// What `--health-check` asks: the address given, or this configuration's own
/// (plaintext) port on loopback.
fn health_target(cli: &Cli, given: &str) -> Result<String> {
    if !given.is_empty() {
        return Ok(given.to_string());
    }
    if cli.tls_cert.is_some() && cli.health_listen.is_none() {
        anyhow::bail!(
            "TLS is on: give --health-listen (a plaintext health port) to check this configuration's health"
        );
    }
    let mut own = cli.health_listen.unwrap_or(cli.listen);
    if own.ip().is_unspecified() {
        own.set_ip(match own {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(own.to_string())
}

/// TLS, the health port, Admin authentication and the ledger keeper, from the flags;
/// the certificate and token files are watched until `until_stopped`.
async fn serve_options<F>(cli: &Cli, until_stopped: &impl Fn() -> F) -> Result<ServeOptions>
where
    F: Future<Output = ()> + Send + 'static,
{
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cli.tls_client_ca.clone(),
            };
            let tls = ServerTls::open(files).context("cannot set up TLS")?;
            tokio::spawn(tls.clone().watch(cli.reload_interval, until_stopped()));
            Some(tls)
        }
        _ => None,
    };
    let health_listener = match cli.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (health)"))?,
        ),
        None => None,
    };
    let admin = admin_auth(cli, tls.is_some())?;
    tokio::spawn(admin.clone().watch(cli.reload_interval, until_stopped()));
    Ok(ServeOptions {
        request_timeout: cli.request_timeout,
        shutdown_grace: cli.shutdown_grace,
        tls,
        health_listener,
        admin: Some(admin),
        keeper: KeeperOptions {
            every: cli.ledger_interval,
            keep: cli.top_keep,
        },
        ..Default::default()
    })
}

/// The Redis store the flags describe, connected and its scripts loaded.
async fn redis_store(cli: &Cli, urls: &str) -> Result<RedisStore> {
    let mut config = RedisConfig::new(urls.split(',').map(str::to_string).collect());
    config.prefix = cli.redis_prefix.clone();
    config.response_timeout = cli.redis_timeout;
    config.username = cli.redis_username.clone();
    config.password = redis_password(cli)?;
    config.tls = redis_tls(cli)?;
    RedisStore::connect(&config)
        .await
        .with_context(|| format!("cannot use Redis at {}", redact(urls)))
}

/// Admin credentials; a token sent in plaintext beyond this host is worth a warning.
fn admin_auth(cli: &Cli, tls: bool) -> Result<Arc<AdminAuth>> {
    let auth = AdminAuth::new(AuthConfig {
        token_file: cli.admin_token_file.clone(),
        // The environment only: a flag would show in process listings.
        token: std::env::var("MXLIMIT_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        cert_names: cli.admin_cert_name.clone(),
    })
    .context("cannot set up admin authentication")?;
    if !auth.enabled() {
        tracing::info!(
            "admin API off: no --admin-token-file, MXLIMIT_ADMIN_TOKEN or --admin-cert-name"
        );
    } else if auth.uses_tokens() && !tls && !cli.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %cli.listen,
            "admin tokens travel in plaintext: serve TLS (--tls-cert) on a port reachable from other hosts"
        );
    }
    Ok(auth)
}

/// The PEM files for TLS to Redis, read now (a connection made later uses them).
fn redis_tls(cli: &Cli) -> Result<Option<RedisTls>> {
    if cli.redis_tls_ca.is_none() && cli.redis_tls_cert.is_none() {
        return Ok(None);
    }
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(Some(RedisTls {
        ca: cli.redis_tls_ca.as_ref().map(read).transpose()?,
        client: match (&cli.redis_tls_cert, &cli.redis_tls_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        },
    }))
}

/// One gRPC health check, bounded in time: a probe must not hang.
async fn health_check(addr: &str) -> Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(uri.clone())
            .with_context(|| format!("not an address: {addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the limiter at {addr}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: server::SERVICE_NAME.into(),
            })
            .await
            .with_context(|| format!("health check of {addr} failed"))?;
        anyhow::Ok(reply.into_inner().status())
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
        .await
        .with_context(|| format!("no answer from {addr} within 5s"))??;
    println!("{addr}: {}", status.as_str_name());
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
        anyhow::bail!("the limiter at {addr} is not serving");
    }
    Ok(())
}

/// The password from the flag or the environment, or the first line of its file.
fn redis_password(cli: &Cli) -> Result<Option<String>> {
    if let Some(file) = &cli.redis_password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the Redis password from {}", file.display()))?;
        let first = text.lines().next().unwrap_or("");
        if first.is_empty() {
            anyhow::bail!("the Redis password file {} is empty", file.display());
        }
        return Ok(Some(first.to_string()));
    }
    Ok(cli.redis_password.clone())
}

/// Listens, and serves `store` under `policy` until `until_stopped` resolves.
async fn serve<S: Store + Ledger, F>(
    store: S,
    policy: Arc<PolicyHandle>,
    cli: &Cli,
    until_stopped: impl Fn() -> F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let options = serve_options(cli, &until_stopped).await?;
    metrics::gauge!(
        limiter_server::metrics::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "store" => store.kind(),
    )
    .set(1.0);
    let store = Instrumented(store);
    tracing::info!(
        listen = %cli.listen,
        store = store.kind(),
        tls = match (&options.tls, options.tls.as_ref().is_some_and(|t| t.mutual())) {
            (None, _) => "off",
            (Some(_), false) => "on",
            (Some(_), true) => "mutual",
        },
        health_listen = ?cli.health_listen,
        "limiter serving"
    );
    let engine = Arc::new(Engine::new(store, policy));
    server::serve(engine, listener, options, until_stopped())
        .await
        .context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// URLs without their passwords, for messages.
fn redact(urls: &str) -> String {
    urls.split(',')
        .map(limiter_server::store::redis::redact_url)
        .collect::<Vec<_>>()
        .join(",")
}
