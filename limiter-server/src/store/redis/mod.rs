//! The Redis store: a single server or a Redis Cluster, one Lua script per decision
//! over one multiplexed connection shared by all requests.

mod keys;
mod ledger;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, FromRedisValue, IntoConnectionInfo, Script, ScriptInvocation};

use keys::{
    INDEX, LEASES, NetKeys, RATE, net_base, node_keys, node_session_key, node_sweep_key, penalties,
};

use mxlimit_core::source::{Level, Source};
use mxlimit_core::store::{
    Ban, ConnectOp, ConnectOutcome, HEARTBEAT_CHUNK, HeartbeatOp, HeartbeatOutcome, LeaseId,
    OffenceOp, OffenceOutcome, PerLevel, RecipientOp, RecipientOutcome, Refusal, ReleaseOp, Store,
    StoreError, StoreUsage, index_ttl_ms, registry_ttl_ms,
};

/// How to reach Redis. Its `Debug` shows no password, from the fields or the URLs.
#[derive(Clone)]
pub struct RedisConfig {
    /// One `redis://host:port` (a single server, or a cluster node: detected), or
    /// several cluster seeds.
    pub urls: Vec<String>,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub prefix: String,
    /// Longest wait for one reply before the call fails (and the agent falls back).
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// ACL user and password for every node; they override any given in the URLs, so
    /// that a secret can stay out of the URL (and out of process listings).
    pub username: Option<String>,
    pub password: Option<String>,
    /// For `rediss://` URLs: a private CA, and a client certificate for servers that
    /// require one (`tls-auth-clients yes`). Without them the system's roots apply.
    pub tls: Option<RedisTls>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisConfig")
            .field("urls", &urls)
            .field("prefix", &self.prefix)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A Redis URL without its credentials (`redis://***@host`), for messages.
pub fn redact_url(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
        _ => u.to_string(),
    }
}

/// PEM material for TLS to Redis.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisTls {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }
}

impl RedisConfig {
    pub fn new(urls: Vec<String>) -> RedisConfig {
        RedisConfig {
            urls,
            prefix: "mxl".into(),
            response_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            username: None,
            password: None,
            tls: None,
        }
    }

    /// A client for one node, with this configuration's TLS material if any.
    fn client(&self, node: ConnectionInfo) -> Result<redis::Client, StoreError> {
        Ok(match &self.tls {
            Some(t) => {
                redis::Client::build_with_tls(node, t.certificates()).map_err(unavailable)?
            }
            None => redis::Client::open(node).map_err(unavailable)?,
        })
    }

    /// One URL with this configuration's credentials applied.
    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, StoreError> {
        let info = url.into_connection_info().map_err(unavailable)?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        Ok(info.set_redis_settings(settings))
    }
}

/// The Lua source of the decision scripts (for tools that measure Redis with the same
/// work, such as `loadtest ceiling`).
pub mod sources {
    pub const CONNECT: &str = include_str!("scripts/connect.lua");
    pub const RELEASE: &str = include_str!("scripts/release.lua");
    pub const RELEASE_MANY: &str = include_str!("scripts/release_many.lua");
    pub const RECIPIENT: &str = include_str!("scripts/recipient.lua");
    pub const OFFENCE: &str = include_str!("scripts/offence.lua");
    pub const NODE: &str = include_str!("scripts/node.lua");
    pub const REGISTER: &str = include_str!("scripts/register.lua");
    pub const RESOLVE: &str = include_str!("scripts/resolve.lua");
    pub const RENEW: &str = include_str!("scripts/renew.lua");
    pub const SWEEP: &str = include_str!("scripts/sweep.lua");
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Scripts {
    bans: Script,
    connect: Script,
    recipient: Script,
    offence: Script,
    release: Script,
    release_many: Script,
    node: Script,
    register: Script,
    resolve: Script,
    renew: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            bans: Script::new(include_str!("scripts/bans.lua")),
            connect: Script::new(sources::CONNECT),
            recipient: Script::new(sources::RECIPIENT),
            offence: Script::new(sources::OFFENCE),
            release: Script::new(sources::RELEASE),
            release_many: Script::new(sources::RELEASE_MANY),
            node: Script::new(sources::NODE),
            register: Script::new(sources::REGISTER),
            resolve: Script::new(sources::RESOLVE),
            renew: Script::new(sources::RENEW),
            sweep: Script::new(sources::SWEEP),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.connect,
            &self.recipient,
            &self.offence,
            &self.release,
            &self.release_many,
            &self.node,
            &self.register,
            &self.resolve,
            &self.renew,
            &self.sweep,
        ]
    }
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    /// The response timeout: the longest any one call waits.
    deadline: Duration,
    prefix: String,
    scripts: Scripts,
    ledger_scripts: ledger::Scripts,
    registered: Registered,
}

/// Which (node, network) this instance put in the node's registry lately, so that the
/// registry write goes out with a Connect only once per lease TTL. Asked on every
/// Connect: looked up by `&str`, nothing allocated unless a pair is new.
#[derive(Default)]
struct Registered(Mutex<Claims>);

#[derive(Default)]
struct Claims {
    by_node: HashMap<Box<str>, HashMap<Box<str>, Instant>>,
    len: usize,
}

impl Registered {
    const MAX: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to write the registry now (and remember that it is being written).
    fn claim(&self, node: &str, tag: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut c = self.lock();
        if c.by_node
            .get(node)
            .and_then(|tags| tags.get(tag))
            .is_some_and(|t| now.duration_since(*t) < ttl)
        {
            return false;
        }
        if c.len >= Self::MAX {
            for tags in c.by_node.values_mut() {
                tags.retain(|_, t| now.duration_since(*t) < ttl);
            }
            c.by_node.retain(|_, tags| !tags.is_empty());
            c.len = c.by_node.values().map(HashMap::len).sum();
            if c.len >= Self::MAX {
                *c = Claims::default();
            }
        }
        let tags = match c.by_node.get_mut(node) {
            Some(tags) => tags,
            None => c.by_node.entry(node.into()).or_default(),
        };
        let fresh = match tags.get_mut(tag) {
            Some(t) => {
                *t = now;
                false
            }
            None => {
                tags.insert(tag.into(), now);
                true
            }
        };
        c.len += usize::from(fresh);
        true
    }

    /// The write failed: the next Connect tries again.
    fn forget(&self, node: &str, tag: &str) {
        let mut c = self.lock();
        let gone = c
            .by_node
            .get_mut(node)
            .is_some_and(|tags| tags.remove(tag).is_some());
        c.len -= usize::from(gone);
    }
}

impl RedisStore {
    // Long on purpose: the one place a configuration becomes a connection (URLs, TLS,
    // single or cluster, credentials, version, scripts), in the order it is checked.
    /// Connects and loads the scripts. A single URL whose server runs in cluster mode
    /// is used as a cluster seed.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let nodes = config
            .urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| config.connection_info(u))
            .collect::<Result<Vec<_>, _>>()?;
        let tls_urls = nodes
            .iter()
            .filter(|n| matches!(n.addr(), redis::ConnectionAddr::TcpTls { .. }))
            .count();
        if config.tls.is_some() && tls_urls < nodes.len() {
            return Err(StoreError::Config(
                "Redis TLS files are given but not every URL is rediss://".into(),
            ));
        }
        let cluster = match nodes.as_slice() {
            [] => {
                return Err(StoreError::Config("no Redis URL given".into()));
            }
            [one] => is_cluster_node(config.client(one.clone())?, config.connect_timeout).await?,
            _ => true,
        };
        let conn = if cluster {
            let mut builder = ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout);
            // Nodes the cluster reports later are reached with the seeds' credentials.
            if let Some(u) = nodes[0].redis_settings().username() {
                builder = builder.username(u);
            }
            if let Some(p) = nodes[0].redis_settings().password() {
                builder = builder.password(p);
            }
            if let Some(t) = &config.tls {
                builder = builder.certs(t.certificates());
            }
            Conn::Cluster(
                builder
                    .build()
                    .map_err(unavailable)?
                    .get_async_connection()
                    .await
                    .map_err(unavailable)?,
            )
        } else {
            let client = config.client(nodes[0].clone())?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_max_delay(Duration::from_secs(2));
            Conn::Single(
                ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(unavailable)?,
            )
        };
        if config.prefix.contains(['{', '}']) {
            return Err(StoreError::Config(format!(
                "key prefix {:?} must not contain braces: they would put every key in one cluster slot",
                config.prefix
            )));
        }
        let store = RedisStore {
            conn,
            deadline: config.response_timeout,
            prefix: config.prefix.clone(),
            scripts: Scripts::new(),
            ledger_scripts: ledger::Scripts::new(),
            registered: Registered::default(),
        };
        store.check_version().await?;
        store.warn_if_unbounded().await;
        for s in store
            .scripts
            .all()
            .into_iter()
            .chain(store.ledger_scripts.all())
        {
            // On a cluster SCRIPT LOAD goes to every primary; later NOSCRIPT (a
            // failover, a flush) is healed by the invocation itself.
            match store.conn.clone() {
                Conn::Single(mut c) => s.load_async(&mut c).await.map_err(unavailable)?,
                Conn::Cluster(mut c) => s.load_async(&mut c).await.map_err(unavailable)?,
            };
        }
        Ok(store)
    }

    /// `used_memory`, `maxmemory` and `evicted_keys` summed over the nodes that answer
    /// (a cluster answers `INFO` per node), and the eviction policy.
    async fn memory(&self) -> Result<(StoreUsage, String), StoreError> {
        let v: redis::Value = self
            .command(redis::cmd("INFO").arg("memory").arg("stats"))
            .await?;
        let mut texts = Vec::new();
        collect_text(&v, &mut texts);
        let mut usage = StoreUsage {
            unit: "bytes",
            held: 0,
            limit: 0,
            evicted: 0,
        };
        let mut policy = String::new();
        for text in &texts {
            for line in text.lines() {
                let Some((k, v)) = line.trim().split_once(':') else {
                    continue;
                };
                let n = || v.parse::<u64>().unwrap_or(0);
                match k {
                    "used_memory" => usage.held += n(),
                    "maxmemory" => usage.limit += n(),
                    "evicted_keys" => usage.evicted += n(),
                    "maxmemory_policy" => policy = v.to_string(),
                    _ => {}
                }
            }
        }
        if texts.is_empty() {
            return Err(StoreError::Reply(format!("INFO returned {v:?}")));
        }
        Ok((usage, policy))
    }

    /// Says at start when nothing bounds what a flood of sources can make Redis hold.
    async fn warn_if_unbounded(&self) {
        match self.memory().await {
            Ok((u, _)) if u.limit == 0 => tracing::warn!(
                "Redis has no maxmemory: a flood of distinct sources makes it hold rate × \
                 window of keys, unbounded; set maxmemory with maxmemory-policy volatile-ttl"
            ),
            Ok((u, policy)) if policy == "noeviction" => tracing::warn!(
                maxmemory = u.limit,
                "Redis evicts nothing when full (maxmemory-policy noeviction): decisions \
                 then fail and agents fall back; volatile-ttl drops the keys closest to \
                 their end instead"
            ),
            Ok((u, policy)) => tracing::info!(maxmemory = u.limit, policy, "Redis memory bound"),
            Err(e) => tracing::warn!(error = %e, "Redis memory settings not read"),
        }
    }

    /// The scripts use `PEXPIRETIME`, new in Redis 7.0.
    async fn check_version(&self) -> Result<(), StoreError> {
        let info: String = match self.conn.clone() {
            Conn::Single(mut c) => redis::cmd("INFO")
                .arg("server")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?,
            Conn::Cluster(mut c) => {
                let v: redis::Value = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                // A cluster answers per node; any node's text has the version.
                format!("{v:?}")
            }
        };
        let version = info
            .split("redis_version:")
            .nth(1)
            .and_then(|s| s.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
            .unwrap_or("");
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(StoreError::Config(format!(
                "Redis {version} is too old: mxlimit needs Redis 7.0 or newer"
            )));
        }
        Ok(())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Every call to Redis ends within the response timeout, whatever the client
    /// library is doing meanwhile: while Redis is gone it reconnects, with retries, and
    /// the calls waiting for that would otherwise wait it out (issue 15: 2 s and more).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Backend {
                backend: "redis",
                source: format!("no reply within {:?}", self.deadline).into(),
            }),
        }
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        match self.conn.clone() {
            Conn::Single(mut c) => self.bounded(inv.invoke_async(&mut c)).await,
            Conn::Cluster(mut c) => self.bounded(inv.invoke_async(&mut c)).await,
        }
    }

    /// One command, bounded as [`RedisStore::invoke`].
    async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match self.conn.clone() {
            Conn::Single(mut c) => self.bounded(cmd.query_async(&mut c)).await,
            Conn::Cluster(mut c) => self.bounded(cmd.query_async(&mut c)).await,
        }
    }

    /// Frees one node's leases of other epochs in networks that may share a call (one
    /// server, or one hash slot), a budget of lease entries per call; how many.
    async fn sweep(&self, tags: &[&str], node: &str, epoch: &str) -> Result<u64, StoreError> {
        let mut freed = 0;
        let mut rest = tags;
        while !rest.is_empty() {
            let mut inv = self.scripts.sweep.prepare_invoke();
            for tag in rest {
                let base = net_base(&self.prefix, tag);
                inv.key(format!("{base}{LEASES}"))
                    .key(format!("{base}{INDEX}"));
            }
            inv.arg(node).arg(epoch).arg(SWEEP_BUDGET);
            let r: Vec<i64> = self.invoke(&inv).await?;
            let [done, n] = r[..] else {
                return Err(StoreError::Reply(format!("sweep returned {r:?}")));
            };
            let done = usize::try_from(done).unwrap_or(0).clamp(1, rest.len());
            freed += n.max(0) as u64;
            rest = &rest[done..];
        }
        Ok(freed)
    }

    async fn register(
        &self,
        node: &str,
        tags: &[&str],
        lease_ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let (_, registry) = node_keys(&self.prefix, node);
        let mut inv = self.scripts.register.key(&registry);
        inv.arg(registry_ttl_ms(lease_ttl_ms));
        for t in tags {
            inv.arg(*t);
        }
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }
}

impl RedisStore {
    /// Writes the session index entry of a session admitted without an epoch, on a
    /// cluster (one server writes it in the Connect script).
    async fn index_session(&self, op: &ConnectOp<'_>) -> Result<(), StoreError> {
        let key = node_session_key(&self.prefix, op.lease.node, op.lease.session);
        let value = format!("{}\u{1f}{}", op.source.tag, op.source.ip_text);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(index_ttl_ms(op.lease_ttl_ms));
        let _: () = self.command(&cmd).await?;
        Ok(())
    }

    /// Every network in a node's registry, read a page at a time so that no command
    /// runs long. Newest first: a network registered again meanwhile moves to the
    /// front, so a page may repeat one but never skips one.
    async fn registry(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut start = 0;
        loop {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(key)
                .arg(start)
                .arg(start + HEARTBEAT_CHUNK - 1)
                .arg("REV");
            let page: Vec<String> = self.command(&cmd).await?;
            let last = page.len() < HEARTBEAT_CHUNK;
            seen.extend(page);
            if last {
                return Ok(seen.into_iter().collect());
            }
            start += HEARTBEAT_CHUNK;
        }
    }

    /// Finds sessions named without their address in the node's session index (and
    /// keeps the found entries another index TTL): for
    /// each, `Some((network tag, address))` or `None`.
    async fn resolve(
        &self,
        node: &str,
        sessions: &[&str],
        index_ttl: u64,
    ) -> Result<Vec<Option<(String, String)>>, StoreError> {
        let mut inv = self.scripts.resolve.prepare_invoke();
        for s in sessions {
            inv.key(node_session_key(&self.prefix, node, s));
        }
        inv.arg(index_ttl);
        let found: Vec<String> = self.invoke(&inv).await?;
        if found.len() != sessions.len() {
            return Err(StoreError::Reply(format!(
                "resolve returned {} entries for {} sessions",
                found.len(),
                sessions.len()
            )));
        }
        Ok(found
            .into_iter()
            .map(|v| {
                v.split_once('\u{1f}')
                    .map(|(tag, ip)| (tag.to_string(), ip.to_string()))
            })
            .collect())
    }

    /// Renews live sessions (each as its member, and another to try) in the networks
    /// of one call (one hash slot on a cluster); the leases renewed in each.
    async fn renew(
        &self,
        lease_ttl_ms: u64,
        nets: &[(&str, &[(String, String)])],
    ) -> Result<Vec<i64>, StoreError> {
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.arg(lease_ttl_ms);
        for (tag, leases) in nets {
            let base = net_base(&self.prefix, tag);
            inv.key(format!("{base}{LEASES}"))
                .key(format!("{base}{INDEX}"))
                .arg(leases.len());
            for (member, other) in *leases {
                inv.arg(member.as_str()).arg(other.as_str());
            }
        }
        let renewed: Vec<i64> = self.invoke(&inv).await?;
        if renewed.len() != nets.len() {
            return Err(StoreError::Reply(format!(
                "renew returned {renewed:?} for {} networks",
                nets.len()
            )));
        }
        Ok(renewed)
    }
}

/// Lease entries one `sweep.lua` call reads at most (past one network's whole set).
const SWEEP_BUDGET: usize = 10_000;
/// At most this many epoch sweeps (visits of every network of the node) per node in a
/// minute: restarts get theirs at once, a caller that changes epochs on every heartbeat
/// no more than that.
const MAX_SWEEPS: u32 = 3;
const SWEEP_WINDOW_MS: u64 = 60_000;
/// Store calls one heartbeat keeps in flight at a time, so that a big one shares the
/// connection with the decisions instead of queueing ahead of them all: a decision
/// waits for at most this many heartbeat scripts on one server. A cluster's calls are
/// one hash slot each (a few networks, spread over the shards), so more go at once.
const CALLS_IN_FLIGHT: usize = 2;
const CLUSTER_CALLS_IN_FLIGHT: usize = 16;

/// The Redis Cluster hash slot of a network's keys (`{tag}`), as Redis computes it.
fn slot(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384
}

/// Networks grouped by the calls they may share: on one server all of them, on a
/// cluster those of one hash slot.
fn share_calls<T>(items: Vec<(String, T)>, cluster: bool) -> Vec<Vec<(String, T)>> {
    if !cluster {
        return vec![items];
    }
    let mut by_slot: HashMap<u16, Vec<(String, T)>> = HashMap::new();
    for (tag, v) in items {
        by_slot.entry(slot(&tag)).or_default().push((tag, v));
    }
    by_slot.into_values().collect()
}

/// Per-network work cut into store calls of at most [`HEARTBEAT_CHUNK`] entries, each
/// within one group of [`share_calls`].
fn chunked_calls<T>(groups: &[Vec<(String, Vec<T>)>]) -> Vec<Vec<(&str, &[T])>> {
    let mut calls: Vec<Vec<(&str, &[T])>> = Vec::new();
    for group in groups {
        let mut size = HEARTBEAT_CHUNK;
        for (tag, entries) in group {
            for part in entries.chunks(HEARTBEAT_CHUNK) {
                if size + part.len() > HEARTBEAT_CHUNK {
                    calls.push(Vec::new());
                    size = 0;
                }
                calls.last_mut().expect("pushed above").push((tag, part));
                size += part.len();
            }
        }
    }
    calls
}

/// Every text in a reply: one server's `INFO`, or a cluster's, per node.
fn collect_text(v: &redis::Value, out: &mut Vec<String>) {
    match v {
        redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(t) => out.push(t.clone()),
        redis::Value::VerbatimString { text, .. } => out.push(text.clone()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|i| collect_text(i, out))
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_text(v, out)),
        _ => {}
    }
}

/// Whether a single URL names a node of a Redis Cluster.
async fn is_cluster_node(client: redis::Client, timeout: Duration) -> Result<bool, StoreError> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(unavailable)?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    Ok(info.contains("cluster_enabled:1"))
}

/// Redis's error as the store's: the backend did not answer, or refused.
pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Backend {
        backend: "redis",
        source: Box::new(e),
    }
}

fn level(code: i64) -> Level {
    if code == 2 {
        Level::Network
    } else {
        Level::Address
    }
}

impl Store for RedisStore {
    // Long on purpose: connect.lua's KEYS and ARGV in the order its header lists them,
    // then its reply read back.
    async fn connect(&self, op: &ConnectOp<'_>) -> Result<ConnectOutcome, StoreError> {
        let k = NetKeys::new(&self.prefix, op.source);
        let p = penalties(op.shadow);
        let mut inv = self.scripts.connect.key(k.addr(p.ban));
        inv.key(k.net(p.ban))
            .key(k.addr(RATE))
            .key(k.net(RATE))
            .key(k.net(LEASES))
            .key(k.net(INDEX))
            .key(k.addr(p.bad))
            .key(k.net(p.bad));
        inv.arg(op.lease.member(&op.source.ip_text))
            .arg(op.rate.address)
            .arg(op.rate.network)
            .arg(op.window_ms)
            .arg(op.conn.address)
            .arg(op.conn.network)
            .arg(op.lease_ttl_ms)
            .arg(if op.shadow { "1" } else { "0" })
            .arg(&op.source.ip_text)
            .arg(op.bad_window_ms);
        // The node's registry is written once per lease TTL per node and network, not
        // read on every Connect. One server: by the same script, with the lease. A
        // cluster keeps it on another shard: it is written alongside (at the same time,
        // not after).
        let ttl = Duration::from_millis(op.lease_ttl_ms);
        let register = self.registered.claim(op.lease.node, &op.source.tag, ttl);
        let in_script = register && !self.is_cluster();
        // A session admitted without an epoch goes into the node's session index, so
        // that a heartbeat naming it without its address finds it (on a cluster, after
        // the script: the index lives on the node's shard).
        let index = op.lease.epoch.is_empty();
        let index_in_script = index && !self.is_cluster();
        inv.arg(if in_script { "1" } else { "0" })
            .arg(if index_in_script { "1" } else { "0" });
        if in_script || index_in_script {
            inv.arg(&op.source.tag)
                .arg(registry_ttl_ms(op.lease_ttl_ms))
                .arg(index_ttl_ms(op.lease_ttl_ms));
        }
        if in_script {
            inv.key(node_keys(&self.prefix, op.lease.node).1);
        }
        if index_in_script {
            inv.key(node_session_key(
                &self.prefix,
                op.lease.node,
                op.lease.session,
            ));
        }
        let r: Vec<i64> = if register && !in_script {
            let tags = [op.source.tag.as_str()];
            let (r, reg) = futures_util::join!(
                self.invoke(&inv),
                self.register(op.lease.node, &tags, op.lease_ttl_ms)
            );
            if let Err(e) = reg {
                // The lease stands; only an epoch change could miss it, and its TTL
                // frees it then. The next Connect tries the registry again.
                self.registered.forget(op.lease.node, &op.source.tag);
                tracing::warn!(error = %e, node = op.lease.node, "node registry not updated");
            }
            r?
        } else {
            self.invoke(&inv).await.inspect_err(|_| {
                if in_script {
                    self.registered.forget(op.lease.node, &op.source.tag);
                }
            })?
        };
        let [code, lvl, value, bad_a, bad_n, hold] = r[..] else {
            return Err(StoreError::Reply(format!("connect returned {r:?}")));
        };
        let bad = PerLevel {
            address: u32::try_from(bad_a).unwrap_or(u32::MAX),
            network: u32::try_from(bad_n).unwrap_or(u32::MAX),
        };
        let count = u32::try_from(value).unwrap_or(u32::MAX);
        let refusal = match code {
            0 | 1 => None,
            2 => Some(Refusal::Banned {
                level: level(lvl),
                remaining_ms: value.max(0) as u64,
            }),
            3 => Some(Refusal::Rate {
                level: level(lvl),
                count,
            }),
            4 => Some(Refusal::Conn {
                level: level(lvl),
                count,
            }),
            _ => return Err(StoreError::Reply(format!("connect returned code {code}"))),
        };
        // A refusal (shadow mode admits past it) or a retry wrote no lease, and no
        // registry either: the next Connect registers.
        let admitted = code == 0 || (code >= 2 && op.shadow);
        if in_script && !admitted {
            self.registered.forget(op.lease.node, &op.source.tag);
        }
        if index && !index_in_script && admitted {
            // The lease stands: only a heartbeat by bare id would miss the session (it
            // then counts it unknown, and the lease lives its TTL).
            if let Err(e) = self.index_session(op).await {
                tracing::warn!(error = %e, node = op.lease.node, "session index not written");
            }
        }
        Ok(ConnectOutcome {
            refusal,
            retry: code == 1,
            bad,
            hold_ms: hold.max(0) as u64,
        })
    }

    async fn recipient(&self, op: &RecipientOp<'_>) -> Result<RecipientOutcome, StoreError> {
        let k = NetKeys::new(&self.prefix, op.source);
        let p = penalties(op.shadow);
        let mut inv = self.scripts.recipient.key(k.addr(p.ban));
        inv.key(k.net(p.ban))
            .key(k.addr(p.bad))
            .key(k.net(p.bad))
            .key(k.addr(p.offences))
            .key(k.net(p.offences))
            .arg(&op.event)
            .arg(if op.rejected { "1" } else { "0" })
            .arg(op.window_ms)
            .arg(op.cap(Level::Address))
            .arg(op.cap(Level::Network))
            .arg(op.block_after.address)
            .arg(op.block_after.network)
            .arg(op.ban.block_for_ms)
            .arg(op.ban.escalation)
            .arg(op.ban.max_block_ms)
            .arg(op.ban.remember_ms);
        let r: Vec<i64> = self.invoke(&inv).await?;
        let [lvl, left, new, offence, bad_a, bad_n] = r[..] else {
            return Err(StoreError::Reply(format!("recipient returned {r:?}")));
        };
        let ban = (lvl != 0).then(|| Ban {
            level: level(lvl),
            remaining_ms: left.max(0) as u64,
            new: new == 1,
            offence: offence.max(1) as u32,
        });
        Ok(RecipientOutcome {
            ban,
            bad: PerLevel {
                address: bad_a as u32,
                network: bad_n as u32,
            },
        })
    }

    async fn offence(&self, op: &OffenceOp<'_>) -> Result<OffenceOutcome, StoreError> {
        let k = NetKeys::new(&self.prefix, op.source);
        let p = penalties(op.shadow);
        let log = p.misconduct(op.kind);
        let mut inv = self.scripts.offence.key(k.addr(p.ban));
        inv.key(k.net(p.ban))
            .key(k.addr(log))
            .key(k.net(log))
            .key(k.addr(p.offences))
            .key(k.net(p.offences))
            .arg(&op.event)
            .arg(&op.source.ip_text)
            .arg(op.window_ms)
            .arg(op.ban_at.address)
            .arg(op.ban_at.network)
            .arg(op.ban.block_for_ms)
            .arg(op.ban.escalation)
            .arg(op.ban.max_block_ms)
            .arg(op.ban.remember_ms);
        let r: Vec<i64> = self.invoke(&inv).await?;
        let [lvl, left, new, offence, n_a, n_n] = r[..] else {
            return Err(StoreError::Reply(format!("offence returned {r:?}")));
        };
        Ok(OffenceOutcome {
            ban: (lvl != 0).then(|| Ban {
                level: level(lvl),
                remaining_ms: left.max(0) as u64,
                new: new == 1,
                offence: offence.max(1) as u32,
            }),
            count: PerLevel {
                address: u32::try_from(n_a).unwrap_or(0),
                network: u32::try_from(n_n).unwrap_or(0),
            },
        })
    }

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let k = NetKeys::new(&self.prefix, source);
        let mut inv = self.scripts.release.key(k.net(LEASES));
        inv.key(k.net(INDEX)).arg(lease.member(&source.ip_text));
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    async fn release(&self, op: &ReleaseOp<'_>) -> Result<u64, StoreError> {
        // Calls of at most a heartbeat chunk of leases: on one server several networks
        // share one, on a cluster the networks of one hash slot.
        let by_net: Vec<(String, Vec<String>)> = op
            .by_net
            .iter()
            .map(|ns| {
                let members = ns
                    .leases
                    .iter()
                    .map(|(session, ip_text)| {
                        LeaseId {
                            node: op.node,
                            epoch: op.epoch,
                            session,
                        }
                        .member(ip_text)
                    })
                    .collect();
                (ns.source.tag.clone(), members)
            })
            .collect();
        let cluster = self.is_cluster();
        let groups = share_calls(by_net, cluster);
        let invocations: Vec<_> = chunked_calls(&groups)
            .into_iter()
            .map(|nets| {
                let mut inv = self.scripts.release_many.prepare_invoke();
                for (tag, members) in nets {
                    let base = net_base(&self.prefix, tag);
                    inv.key(format!("{base}{LEASES}"))
                        .key(format!("{base}{INDEX}"))
                        .arg(members.len());
                    for m in members {
                        inv.arg(m.as_str());
                    }
                }
                inv
            })
            .collect();
        let in_flight = if cluster {
            CLUSTER_CALLS_IN_FLIGHT
        } else {
            CALLS_IN_FLIGHT
        };
        // The first failure ends the call (with Redis hung, the rest would each wait).
        let calls: Vec<_> = invocations
            .iter()
            .map(|inv| self.invoke::<i64>(inv))
            .collect();
        let freed: Vec<i64> = stream::iter(calls)
            .buffer_unordered(in_flight)
            .try_collect()
            .await?;
        Ok(freed.iter().map(|n| (*n).max(0) as u64).sum())
    }

    // Long on purpose: a heartbeat's steps in order (epoch, lookups, frees and
    // renewals, registry), each cut into calls of bounded work.
    async fn heartbeat(&self, op: &HeartbeatOp<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let (epoch_key, registry) = node_keys(&self.prefix, op.node);
        let registry_ttl = registry_ttl_ms(op.lease_ttl_ms);
        let index_ttl = index_ttl_ms(op.lease_ttl_ms);
        let lease_ttl = Duration::from_millis(op.lease_ttl_ms);
        let mut inv = self.scripts.node.key(&epoch_key);
        inv.key(node_sweep_key(&self.prefix, op.node))
            .arg(op.epoch)
            .arg(registry_ttl)
            .arg(SWEEP_WINDOW_MS)
            .arg(MAX_SWEEPS);
        // 1, 2: sweep now, then record the epoch; 3: changed, but the node's sweeps of
        // the window are spent: the sweep waits (the epoch is not recorded yet either).
        let state: i64 = self.invoke(&inv).await?;
        let sweep_now = state == 1 || state == 2;
        let mut out = HeartbeatOutcome {
            epoch_changed: state == 2,
            ..Default::default()
        };

        // Every lease to renew, by network: those sent with their address, and those
        // sent alone that the node's session index knows.
        // Each as its member under this epoch, and the one taken without an epoch.
        let member = |epoch, session, ip: &str| {
            LeaseId {
                node: op.node,
                epoch,
                session,
            }
            .member(ip)
        };
        let mut renew: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for ns in &op.by_net {
            renew
                .entry(ns.source.tag.clone())
                .or_default()
                .extend(ns.leases.iter().map(|(session, ip)| {
                    let other = if op.epoch.is_empty() {
                        String::new()
                    } else {
                        member("", session, ip)
                    };
                    (member(op.epoch, session, ip), other)
                }));
        }
        // Each step's calls go a few at a time, and the first failure ends the step
        // (with Redis hung, the rest would each wait out the timeout).
        // (Futures are made first, then run: a closure inside the stream would make this
        // method's future not `Send`.)
        let chunks: Vec<&[&str]> = op.bare.chunks(HEARTBEAT_CHUNK).collect();
        let lookups: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| async move { Ok((i, self.resolve(op.node, c, index_ttl).await?)) })
            .collect();
        let lookups: Vec<(usize, _)> = stream::iter(lookups)
            .buffer_unordered(CALLS_IN_FLIGHT)
            .try_collect()
            .await?;
        for (i, found) in lookups {
            for (session, found) in chunks[i].iter().zip(found) {
                match found {
                    Some((tag, ip)) => renew
                        .entry(tag)
                        .or_default()
                        .push((member("", session, &ip), String::new())),
                    None => out.unknown += 1,
                }
            }
        }

        // A new epoch frees the old one's leases in every registered network, and is
        // recorded only once that is done.
        let cluster = self.is_cluster();
        let in_flight = if cluster {
            CLUSTER_CALLS_IN_FLIGHT
        } else {
            CALLS_IN_FLIGHT
        };
        if sweep_now {
            let registered = self.registry(&registry).await?;
            let groups = share_calls(registered.into_iter().map(|t| (t, ())).collect(), cluster);
            let calls: Vec<Vec<&str>> = groups
                .iter()
                .flat_map(|g| g.chunks(HEARTBEAT_CHUNK))
                .map(|c| c.iter().map(|(t, _)| t.as_str()).collect())
                .collect();
            let frees: Vec<_> = calls
                .iter()
                .map(|tags| self.sweep(tags, op.node, op.epoch))
                .collect();
            let frees: Vec<u64> = stream::iter(frees)
                .buffer_unordered(in_flight)
                .try_collect()
                .await?;
            out.freed = frees.iter().sum();
            let _: () = self
                .command(
                    redis::cmd("SET")
                        .arg(&epoch_key)
                        .arg(op.epoch)
                        .arg("PX")
                        .arg(registry_ttl),
                )
                .await?;
        }
        // Renewals touch only this epoch's and epoch-less leases, never a freed one.
        let renew_groups = share_calls(renew.into_iter().collect(), cluster);
        let calls = chunked_calls(&renew_groups);
        let renewals: Vec<_> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| async move { Ok((i, self.renew(op.lease_ttl_ms, c).await?)) })
            .collect();
        let renewals: Vec<(usize, Vec<i64>)> = stream::iter(renewals)
            .buffer_unordered(in_flight)
            .try_collect()
            .await?;
        // Networks with live sessions stay in the registry however long they last.
        let mut refresh = Vec::new();
        for (i, renewed) in renewals {
            for ((tag, _), n) in calls[i].iter().zip(renewed) {
                out.renewed += n.max(0) as u64;
                // At most once per lease TTL per network and limiter, as on Connect.
                if n > 0
                    && refresh.last() != Some(tag)
                    && self.registered.claim(op.node, tag, lease_ttl)
                {
                    refresh.push(*tag);
                }
            }
        }
        let registrations: Vec<_> = refresh
            .chunks(HEARTBEAT_CHUNK)
            .map(|tags| self.register(op.node, tags, op.lease_ttl_ms))
            .collect();
        let written: Result<Vec<()>, StoreError> = stream::iter(registrations)
            .buffer_unordered(CALLS_IN_FLIGHT)
            .try_collect()
            .await;
        if let Err(e) = written {
            // Tried again by the next heartbeat (some may be written: harmless).
            for t in &refresh {
                self.registered.forget(op.node, t);
            }
            return Err(e);
        }
        Ok(out)
    }

    async fn ban(&self, source: &Source, shadow: bool) -> Result<Option<Ban>, StoreError> {
        let k = NetKeys::new(&self.prefix, source);
        let ban = penalties(shadow).ban;
        let mut inv = self.scripts.bans.key(k.addr(ban));
        inv.key(k.net(ban));
        let r: Vec<i64> = self.invoke(&inv).await?;
        let [lvl, left, offence] = r[..] else {
            return Err(StoreError::Reply(format!("bans returned {r:?}")));
        };
        Ok((lvl != 0).then(|| Ban {
            level: level(lvl),
            remaining_ms: left.max(0) as u64,
            new: false,
            offence: offence.max(1) as u32,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.command(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn usage(&self) -> Result<Option<StoreUsage>, StoreError> {
        Ok(Some(self.memory().await?.0))
    }

    fn kind(&self) -> &'static str {
        if self.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_password() {
        let mut c = RedisConfig::new(vec![
            "redis://:url-secret@10.0.0.1:6379".into(),
            "redis://10.0.0.2:6379".into(),
        ]);
        c.username = Some("mxlimit".into());
        c.password = Some("field-secret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redis://***@10.0.0.1:6379"), "{shown}");
        assert!(shown.contains("redis://10.0.0.2:6379"), "{shown}");
        assert!(shown.contains("password: Some(\"***\")"), "{shown}");
    }

    #[test]
    fn slots_are_redis_cluster_slots() {
        // The example of the Redis Cluster specification, and a network tag.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("n4:10.0.0.0/24"), slot("n4:10.0.0.0/24"));
        let groups = share_calls(
            (0..2000)
                .map(|i| (format!("n6:2001:db8:{i:x}::/64"), ()))
                .collect(),
            true,
        );
        assert!(groups.len() > 1000, "{} slots", groups.len());
        for g in &groups {
            assert!(g.iter().all(|(t, _)| slot(t) == slot(&g[0].0)));
        }
        assert_eq!(share_calls(vec![("a".to_string(), ())], false).len(), 1);
    }

    #[test]
    fn calls_hold_at_most_a_chunk_and_keep_every_entry() {
        let groups = vec![
            vec![
                ("big".to_string(), (0..600).collect::<Vec<u32>>()),
                ("small".to_string(), (0..10).collect()),
            ],
            vec![("other slot".to_string(), (0..5).collect())],
        ];
        let calls = chunked_calls(&groups);
        let sizes: Vec<usize> = calls
            .iter()
            .map(|c| c.iter().map(|(_, e)| e.len()).sum())
            .collect();
        assert_eq!(sizes, vec![250, 250, 110, 5]);
        assert!(
            calls
                .last()
                .unwrap()
                .iter()
                .all(|(t, _)| *t == "other slot")
        );
    }

    #[test]
    fn a_registry_claim_holds_for_its_ttl_and_a_forgotten_one_is_claimed_again() {
        let r = Registered::default();
        let ttl = Duration::from_secs(60);
        assert!(r.claim("mx1", "n4:10.0.0.0/24", ttl));
        assert!(
            !r.claim("mx1", "n4:10.0.0.0/24", ttl),
            "claimed within the TTL"
        );
        assert!(r.claim("mx2", "n4:10.0.0.0/24", ttl), "another node");
        assert!(r.claim("mx1", "n4:10.0.1.0/24", ttl), "another network");
        r.forget("mx1", "n4:10.0.0.0/24");
        assert!(r.claim("mx1", "n4:10.0.0.0/24", ttl), "forgotten");
        assert_eq!(r.lock().len, 3);
        assert!(
            r.claim("mx1", "n4:10.0.1.0/24", Duration::ZERO),
            "past its TTL"
        );
        assert_eq!(r.lock().len, 3);
    }
}
