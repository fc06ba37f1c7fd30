//! The limiters (and, for SMTP, the MTAs) a run is played against: one shared limiter
//! for cluster-wide counting, and one limiter per MX node for per-host counting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_core::policy::Policy;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use testkit::Limiter;
use testkit::postfix::{Postfix, PostfixOptions};
use tonic::transport::Channel;

/// Compiles a policy file's text, with a clear error for a broken one.
pub fn policy(toml: &str) -> Result<Arc<PolicyHandle>> {
    let path = std::path::Path::new("policy");
    let settings = mxlimit_core::policy::parse_settings(toml, path)?;
    let policy = Policy::compile(settings, vec![], vec![]).context("compile the policy")?;
    Ok(Arc::new(PolicyHandle::fixed(policy)))
}

async fn memory_limiter(policy: Arc<PolicyHandle>) -> Limiter {
    Limiter::start(Arc::new(MemoryStore::new(MemoryConfig::default())), policy).await
}

/// One limiter shared by every node, on Redis when given, in memory otherwise. On Redis
/// its keys get a prefix of their own (never a deployment's `mxl`, whose bans would
/// count), removed again when the returned [`RunKeys`] is dropped.
pub async fn shared_limiter(toml: &str, redis: Option<&str>) -> Result<(Limiter, Option<RunKeys>)> {
    let policy = policy(toml)?;
    Ok(match redis {
        Some(url) => {
            let keys = RunKeys::new(url);
            let mut config = RedisConfig::new(url.split(',').map(str::to_string).collect());
            config.prefix = keys.prefix.clone();
            let store = RedisStore::connect(&config)
                .await
                .with_context(|| format!("Redis at {url}"))?;
            (Limiter::start(store, policy).await, Some(keys))
        }
        None => (memory_limiter(policy).await, None),
    })
}

/// The keys one run wrote to a Redis, under a prefix unique to the run.
pub struct RunKeys {
    url: String,
    pub prefix: String,
}

impl RunKeys {
    fn new(url: &str) -> RunKeys {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        RunKeys {
            url: url.into(),
            prefix: format!("mxlimit-loadtest-{}-{nanos:x}", std::process::id()),
        }
    }
}

impl Drop for RunKeys {
    fn drop(&mut self) {
        // One server only: on a cluster the keys are left to their TTLs.
        if self.url.contains(',') {
            return;
        }
        if let Err(e) = remove_keys(&self.url, &self.prefix) {
            tracing::warn!(
                "could not remove this run's keys ({}:*) from {}: {e:#}",
                self.prefix,
                self.url
            );
        }
    }
}

/// Removes every key under `prefix` from the Redis at `url` (one server).
pub fn remove_keys(url: &str, prefix: &str) -> Result<()> {
    use redis::Commands;
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .with_context(|| format!("connect to {url}"))?;
    let keys: Vec<String> = con
        .scan_match::<_, String>(format!("{prefix}:*"))?
        .collect::<Result<_, _>>()?;
    for chunk in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(chunk).exec(&mut con)?;
    }
    Ok(())
}

/// A connection to a limiter. Calls time out, so a limiter that stops answering shows
/// as errors in the report instead of hanging the run.
pub async fn channel(addr: SocketAddr) -> Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("limiter at {addr}"))
}

/// Fails with a clear error when a program the SMTP lab runs is missing.
fn need(program: &str, package: &str) -> Result<()> {
    match testkit::find(program) {
        Some(_) => Ok(()),
        None => bail!("`{program}` is not installed: install Debian's `{package}`"),
    }
}

/// Limiters for both modes over gRPC.
pub struct GrpcLab {
    pub cluster: Limiter,
    pub per_host: Vec<Limiter>,
    _keys: Option<RunKeys>,
}

impl GrpcLab {
    pub async fn start(toml: &str, nodes: usize, redis: Option<&str>) -> Result<GrpcLab> {
        let (cluster, keys) = shared_limiter(toml, redis).await?;
        let mut per_host = Vec::new();
        for _ in 0..nodes {
            per_host.push(memory_limiter(policy(toml)?).await);
        }
        Ok(GrpcLab {
            cluster,
            per_host,
            _keys: keys,
        })
    }
}

/// Where the mx-agent binary is: `MXLIMIT_AGENT_BIN`, or next to this program (cargo
/// builds every binary of the workspace into one directory).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MXLIMIT_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("mx-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "mx-agent not found next to {}: build it (cargo build -p mx-agent) or set MXLIMIT_AGENT_BIN",
        exe.display()
    )
}

/// An mx-agent process serving one Postfix's milter.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent with its milter and its policy service (for Postfix's ban check at
/// RCPT, as docs/MTA.md recommends); returns it and the two ports.
async fn agent(node: &str, limiter: SocketAddr) -> Result<(AgentProcess, u16, u16)> {
    let (port, policy) = (testkit::free_port(), testkit::free_port());
    let child = Command::new(agent_binary()?)
        .args([
            "--node",
            node,
            "--milter",
            &format!("inet:127.0.0.1:{port}"),
            "--policy-service",
            &format!("inet:127.0.0.1:{policy}"),
            "--limiter",
            &format!("http://{limiter}"),
        ])
        .args(["--deadline", "200ms", "--log", "warn"])
        .stderr(Stdio::null())
        .spawn()
        .context("start mx-agent")?;
    let p = AgentProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in [port, policy] {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("mx-agent {node} did not listen on {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((p, port, policy))
}

/// Real MTAs for both modes: Postfix instances with mx-agent milters (and the policy
/// service's ban check, as recommended), one limiter on a
/// real redis-server for all of them (cluster-wide), or one limiter each (per-host).
pub struct SmtpLab {
    pub cluster_mx: Vec<SocketAddr>,
    pub per_host_mx: Vec<SocketAddr>,
    _postfix: Vec<Postfix>,
    _agents: Vec<AgentProcess>,
    _limiters: Vec<Limiter>,
    _redis: testkit::RedisServer,
}

impl SmtpLab {
    /// The one mailbox that exists on the lab's MTAs.
    pub const MAILBOX: &'static str = "alice@mx.test";

    pub async fn start(toml: &str, nodes: usize) -> Result<SmtpLab> {
        need("redis-server", "redis-server")?;
        need("postfix", "postfix")?;
        need("script", "bsdutils")?;
        let policy = policy(toml)?;
        let redis = testkit::RedisServer::start();
        // A private Redis: nothing to clean up but the server itself.
        let (shared, _) = shared_limiter(toml, Some(&redis.url())).await?;
        let (mut postfix, mut agents, mut limiters) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cluster_mx, mut per_host_mx) = (Vec::new(), Vec::new());
        for i in 0..nodes {
            let own = memory_limiter(policy.clone()).await;
            for (mode, limiter, list) in [
                ("c", shared.addr, &mut cluster_mx),
                ("h", own.addr, &mut per_host_mx),
            ] {
                let name = format!("mx{}{mode}", i + 1);
                let (a, port, policy) = agent(&name, limiter).await?;
                let pf = Postfix::start(
                    &name,
                    &PostfixOptions {
                        milter: Some(format!("inet:127.0.0.1:{port}")),
                        bans: Some(format!("inet:127.0.0.1:{policy}")),
                        mailboxes: vec![SmtpLab::MAILBOX.into()],
                        ..Default::default()
                    },
                );
                list.push(pf.addr());
                postfix.push(pf);
                agents.push(a);
            }
            limiters.push(own);
        }
        limiters.push(shared);
        Ok(SmtpLab {
            cluster_mx,
            per_host_mx,
            _postfix: postfix,
            _agents: agents,
            _limiters: limiters,
            _redis: redis,
        })
    }
}
