//! The Redis store: a single server or a Redis Cluster, one Lua script per decision
//! over one multiplexed connection shared by all requests.

mod keys;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};

pub use keys::rcpt_event;
use keys::{BAD, BAN, LEASES, NODES, NetKeys, OFFENCES, RATE, net_base, node_keys};

use super::{
    Ban, ConnectOp, ConnectOutcome, HeartbeatOp, HeartbeatOutcome, LeaseId, PerLevel, RecipientOp,
    RecipientOutcome, Refusal, Store, StoreError, registry_ttl_ms,
};
use crate::source::{Level, Source};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One `redis://host:port` (a single server, or a cluster node: detected), or
    /// several cluster seeds.
    pub urls: Vec<String>,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub prefix: String,
    /// Longest wait for one reply before the call fails (and the agent falls back).
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl RedisConfig {
    pub fn new(urls: Vec<String>) -> RedisConfig {
        RedisConfig {
            urls,
            prefix: "mxl".into(),
            response_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Scripts {
    connect: Script,
    recipient: Script,
    release: Script,
    node: Script,
    register: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            connect: Script::new(include_str!("scripts/connect.lua")),
            recipient: Script::new(include_str!("scripts/recipient.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            node: Script::new(include_str!("scripts/node.lua")),
            register: Script::new(include_str!("scripts/register.lua")),
            sweep: Script::new(include_str!("scripts/sweep.lua")),
        }
    }

    fn all(&self) -> [&Script; 6] {
        [
            &self.connect,
            &self.recipient,
            &self.release,
            &self.node,
            &self.register,
            &self.sweep,
        ]
    }
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    scripts: Scripts,
}

impl RedisStore {
    /// Connects and loads the scripts. A single URL whose server runs in cluster mode
    /// is used as a cluster seed.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let urls: Vec<&str> = config
            .urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .collect();
        let cluster = match urls.as_slice() {
            [] => {
                return Err(StoreError::Config("no Redis URL given".into()));
            }
            [one] => is_cluster_node(one, config.connect_timeout).await?,
            _ => true,
        };
        let conn = if cluster {
            let client = ClusterClientBuilder::new(urls.clone())
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .build()?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(urls[0])?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_max_delay(Duration::from_secs(2));
            Conn::Single(ConnectionManager::new_with_config(client, cfg).await?)
        };
        let store = RedisStore {
            conn,
            prefix: config.prefix.clone(),
            scripts: Scripts::new(),
        };
        store.check_version().await?;
        for s in store.scripts.all() {
            // On a cluster SCRIPT LOAD goes to every primary; later NOSCRIPT (a
            // failover, a flush) is healed by the invocation itself.
            match store.conn.clone() {
                Conn::Single(mut c) => s.load_async(&mut c).await?,
                Conn::Cluster(mut c) => s.load_async(&mut c).await?,
            };
        }
        Ok(store)
    }

    /// The scripts use `PEXPIRETIME`, new in Redis 7.0.
    async fn check_version(&self) -> Result<(), StoreError> {
        let info: String = match self.conn.clone() {
            Conn::Single(mut c) => redis::cmd("INFO").arg("server").query_async(&mut c).await?,
            Conn::Cluster(mut c) => {
                let v: redis::Value = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
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

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        Ok(match self.conn.clone() {
            Conn::Single(mut c) => inv.invoke_async(&mut c).await?,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await?,
        })
    }

    /// Renews and frees one node's leases in one network.
    async fn sweep(
        &self,
        tag: &str,
        op: &HeartbeatOp<'_>,
        sessions: &[&str],
    ) -> Result<(u64, u64), StoreError> {
        let base = net_base(&self.prefix, tag);
        let mut inv = self.scripts.sweep.key(format!("{base}{LEASES}"));
        inv.arg(op.node)
            .arg(op.epoch)
            .arg(op.lease_ttl_ms)
            .arg(format!("{base}{LEASES}:"));
        for s in sessions {
            inv.arg(*s);
        }
        let r: Vec<i64> = self.invoke(&inv).await?;
        match r.as_slice() {
            [renewed, freed] => Ok((*renewed as u64, *freed as u64)),
            other => Err(StoreError::Reply(format!("sweep returned {other:?}"))),
        }
    }
}

/// Whether a single URL names a node of a Redis Cluster.
async fn is_cluster_node(url: &str, timeout: Duration) -> Result<bool, StoreError> {
    let client = redis::Client::open(url)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut c)
        .await?;
    Ok(info.contains("cluster_enabled:1"))
}

fn level(code: i64) -> Level {
    if code == 2 {
        Level::Network
    } else {
        Level::Address
    }
}

impl Store for RedisStore {
    async fn connect(&self, op: &ConnectOp<'_>) -> Result<ConnectOutcome, StoreError> {
        let k = NetKeys::new(&self.prefix, op.source);
        let (_, registry) = node_keys(&self.prefix, op.lease.node);
        let reg_ttl = registry_ttl_ms(op.lease_ttl_ms);
        let mut inv = self.scripts.connect.key(k.addr(BAN));
        inv.key(k.net(BAN))
            .key(k.addr(RATE))
            .key(k.net(RATE))
            .key(k.addr(LEASES))
            .key(k.net(LEASES))
            .key(k.net(NODES));
        // One server: the registry is updated in the same script. A cluster keeps it
        // on another shard, so it is written after, and only when the script asks.
        if !self.is_cluster() {
            inv.key(&registry);
        }
        inv.arg(op.lease.member(&op.source.ip_text))
            .arg(op.rate.address)
            .arg(op.rate.network)
            .arg(op.window_ms)
            .arg(op.conn.address)
            .arg(op.conn.network)
            .arg(op.lease_ttl_ms)
            .arg(if op.shadow { "1" } else { "0" })
            .arg(op.lease.node)
            .arg(&op.source.tag)
            .arg(reg_ttl);
        let r: Vec<i64> = self.invoke(&inv).await?;
        let [code, lvl, value, register] = r[..] else {
            return Err(StoreError::Reply(format!("connect returned {r:?}")));
        };
        if register == 1 {
            let mut reg = self.scripts.register.key(&registry);
            reg.arg(&op.source.tag).arg(reg_ttl);
            if let Err(e) = self.invoke::<i64>(&reg).await {
                // The lease stands; only an epoch change would miss it, and its TTL
                // frees it then.
                tracing::warn!(error = %e, node = op.lease.node, "node registry not updated");
            }
        }
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
        Ok(ConnectOutcome {
            refusal,
            retry: code == 1,
        })
    }

    async fn recipient(&self, op: &RecipientOp<'_>) -> Result<RecipientOutcome, StoreError> {
        let k = NetKeys::new(&self.prefix, op.source);
        let mut inv = self.scripts.recipient.key(k.addr(BAN));
        inv.key(k.net(BAN))
            .key(k.addr(BAD))
            .key(k.net(BAD))
            .key(k.addr(OFFENCES))
            .key(k.net(OFFENCES))
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

    async fn disconnect(&self, source: &Source, lease: LeaseId<'_>) -> Result<(), StoreError> {
        let k = NetKeys::new(&self.prefix, source);
        let mut inv = self.scripts.release.key(k.addr(LEASES));
        inv.key(k.net(LEASES)).arg(lease.member(&source.ip_text));
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    async fn heartbeat(&self, op: &HeartbeatOp<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let (epoch_key, registry) = node_keys(&self.prefix, op.node);
        let mut inv = self.scripts.node.key(&epoch_key);
        inv.key(&registry)
            .arg(op.epoch)
            .arg(registry_ttl_ms(op.lease_ttl_ms))
            .arg(if op.bare.is_empty() { "0" } else { "1" });
        for ns in &op.by_net {
            inv.arg(&ns.source.tag);
        }
        let (state, registered): (i64, Vec<String>) = self.invoke(&inv).await?;

        // Every network to visit once, with the sessions to renew there.
        let mut visit: Vec<(&str, Vec<&str>)> = Vec::new();
        for ns in &op.by_net {
            match visit.iter_mut().find(|(t, _)| *t == ns.source.tag) {
                Some((_, s)) => s.extend(ns.sessions.iter().copied()),
                None => visit.push((&ns.source.tag, ns.sessions.clone())),
            }
        }
        for tag in &registered {
            match visit.iter_mut().find(|(t, _)| *t == tag.as_str()) {
                Some((_, s)) => s.extend(op.bare.iter().copied()),
                None => visit.push((tag, op.bare.clone())),
            }
        }
        // The multiplexed connection pipelines these; they run concurrently.
        let sweeps = visit
            .iter()
            .map(|(tag, sessions)| self.sweep(tag, op, sessions));
        let mut out = HeartbeatOutcome {
            epoch_changed: state == 2,
            ..Default::default()
        };
        for r in futures_util::future::join_all(sweeps).await {
            let (renewed, freed) = r?;
            out.renewed += renewed;
            out.freed += freed;
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = match self.conn.clone() {
            Conn::Single(mut c) => redis::cmd("PING").query_async(&mut c).await?,
            Conn::Cluster(mut c) => redis::cmd("PING").query_async(&mut c).await?,
        };
        Ok(())
    }

    fn kind(&self) -> &'static str {
        if self.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }
}
