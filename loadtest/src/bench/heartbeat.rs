//! What the biggest heartbeat costs: N live sessions in N networks (one IPv6 /64
//! each), admitted without an epoch as the design contract's caller admits them, then
//! renewed by bare session id, then with their addresses, then visited by an epoch
//! change. Each step is timed; on Redis (one server, or a Cluster of three primaries
//! started here) the longest command every node ran is read from its SLOWLOG, so that
//! the bound on a single script is measured, not assumed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{ConnectRequest, HeartbeatRequest, Lease};
use serde::Serialize;
use testkit::redis::{RedisCluster, RedisServer};
use tonic::transport::Channel;

use crate::lab;

/// Every session may stay: no rate limit, one session per address.
const POLICY: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"10m\"\n";
const NODE: &str = "heartbeat-bench";

#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatBench {
    pub store: String,
    pub sessions: usize,
    /// Admitting the sessions (64 Connects in flight).
    pub connect_s: f64,
    pub steps: Vec<Step>,
    /// The longest single command any Redis node ran in the whole run (its SLOWLOG, which
    /// keeps those of 1 ms or more), in microseconds, and what it was.
    pub slowest_command_us: Option<u64>,
    pub slowest_command: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub seconds: f64,
    pub renewed: u64,
    pub unknown_sessions: u64,
}

enum Backend {
    Memory,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    fn start(store: &str) -> Result<Backend> {
        // Every command of 1 ms or more goes to the SLOWLOG, so that the longest is known.
        let slowlog = [
            "--slowlog-log-slower-than",
            "1000",
            "--slowlog-max-len",
            "100000",
        ];
        Ok(match store {
            "memory" => Backend::Memory,
            "redis" => Backend::Redis(RedisServer::start_with(&slowlog)),
            "cluster" => {
                let c = RedisCluster::start(3);
                for n in &c.nodes {
                    n.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "1000"]);
                    n.cmd(&["CONFIG", "SET", "slowlog-max-len", "100000"]);
                }
                Backend::Cluster(c)
            }
            other => anyhow::bail!("--store {other}: memory, redis or cluster"),
        })
    }

    fn url(&self) -> Option<String> {
        match self {
            Backend::Memory => None,
            Backend::Redis(r) => Some(r.url()),
            Backend::Cluster(c) => Some(c.urls().join(",")),
        }
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Backend::Memory => vec![],
            Backend::Redis(r) => vec![r.url()],
            Backend::Cluster(c) => c.urls(),
        }
    }
}

fn address(i: usize) -> String {
    format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
}

/// Runs the whole measurement on a store started here.
pub async fn measure(store: &str, sessions: usize) -> Result<HeartbeatBench> {
    ensure!(
        (1..=100_000).contains(&sessions),
        "--sessions {sessions}: 1 to 100 000 (one heartbeat's cap)"
    );
    let backend = Backend::start(store)?;
    let (limiter, _keys) = lab::shared_limiter(POLICY, backend.url().as_deref()).await?;
    let channel = Channel::from_shared(format!("http://{}", limiter.addr))?
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .context("the limiter started here")?;
    let client = LimiterClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    let started = Instant::now();
    let mut admitted = futures_util::stream::iter(0..sessions)
        .map(|i| {
            let mut c = client.clone();
            async move {
                c.connect(ConnectRequest {
                    node: NODE.into(),
                    session_id: format!("s{i}"),
                    client_ip: address(i),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().verdict.is_some_and(|v| v.action == 1))
            }
        })
        .buffer_unordered(64);
    let mut accepted = 0;
    while let Some(r) = admitted.next().await {
        accepted += usize::from(r.context("Connect")?);
    }
    ensure!(
        accepted == sessions,
        "{accepted} of {sessions} Connects admitted"
    );
    let connect_s = started.elapsed().as_secs_f64();

    let ids: Vec<String> = (0..sessions).map(|i| format!("s{i}")).collect();
    let leases: Vec<Lease> = (0..sessions)
        .map(|i| Lease {
            session_id: format!("s{i}"),
            client_ip: address(i),
        })
        .collect();
    let plan: [(&'static str, &str, Vec<String>, Vec<Lease>); 4] = [
        (
            "first heartbeat, no sessions: records the epoch, visits every registered network",
            "e1",
            vec![],
            vec![],
        ),
        (
            "bare session ids, found through the node's session index",
            "e1",
            ids,
            vec![],
        ),
        (
            "sessions with their addresses (leases)",
            "e1",
            vec![],
            leases,
        ),
        (
            "a new epoch, no sessions: visits every registered network",
            "e2",
            vec![],
            vec![],
        ),
    ];
    let mut steps = Vec::new();
    for (name, epoch, session_ids, leases) in plan {
        let t = Instant::now();
        let r = client
            .clone()
            .heartbeat(HeartbeatRequest {
                node: NODE.into(),
                epoch: epoch.into(),
                session_ids,
                leases,
            })
            .await
            .with_context(|| format!("heartbeat: {name}"))?
            .into_inner();
        steps.push(Step {
            name,
            seconds: t.elapsed().as_secs_f64(),
            renewed: r.renewed,
            unknown_sessions: r.unknown_sessions,
        });
    }
    let (slowest_command_us, slowest_command) = match slowest(&backend.urls())? {
        Some((us, what)) => (Some(us), Some(what)),
        None => (None, None),
    };
    Ok(HeartbeatBench {
        store: store.into(),
        sessions,
        connect_s,
        steps,
        slowest_command_us,
        slowest_command,
    })
}

/// The longest command in the SLOWLOGs of these nodes: microseconds, and the command
/// with its first argument (a script's SHA names the script).
fn slowest(urls: &[String]) -> Result<Option<(u64, String)>> {
    let mut worst: Option<(u64, String)> = None;
    for url in urls {
        let mut con = redis::Client::open(url.as_str())?.get_connection()?;
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(&mut con)?;
        for entry in log {
            let redis::Value::Array(fields) = entry else {
                continue;
            };
            let (Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) =
                (fields.get(2), fields.get(3))
            else {
                continue;
            };
            let text = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            let what = args.iter().take(2).map(text).collect::<Vec<_>>().join(" ");
            if worst.as_ref().is_none_or(|(w, _)| (*us as u64) > *w) {
                worst = Some((*us as u64, what));
            }
        }
    }
    Ok(worst.map(|(us, what)| (us, script_name(&what))))
}

/// "EVALSHA <sha>" as the script's file name, where it is one of the limiter's.
fn script_name(what: &str) -> String {
    use limiter_server::store::redis::sources;
    let known = [
        ("connect.lua", sources::CONNECT),
        ("release.lua", sources::RELEASE),
        ("release_many.lua", sources::RELEASE_MANY),
        ("recipient.lua", sources::RECIPIENT),
        ("offence.lua", sources::OFFENCE),
        ("resolve.lua", sources::RESOLVE),
        ("renew.lua", sources::RENEW),
        ("sweep.lua", sources::SWEEP),
        ("register.lua", sources::REGISTER),
        ("node.lua", sources::NODE),
    ];
    for (name, src) in known {
        if what.contains(redis::Script::new(src).get_hash()) {
            return format!("EVALSHA {name}");
        }
    }
    what.to_string()
}

impl HeartbeatBench {
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {} sessions in {} networks (IPv6 /64s), admitted without epoch in {:.2} s\n",
            self.store, self.sessions, self.sessions, self.connect_s
        );
        for st in &self.steps {
            s += &format!(
                "  {:8.3} s  renewed {:6}  unknown {:6}  {}\n",
                st.seconds, st.renewed, st.unknown_sessions, st.name
            );
        }
        match (self.slowest_command_us, &self.slowest_command) {
            (Some(us), Some(what)) => {
                s += &format!(
                    "  longest single Redis command of the run: {:.2} ms ({what})\n",
                    us as f64 / 1000.0
                )
            }
            _ if self.store != "memory" => {
                s += "  no Redis command of the run took 1 ms or more\n";
            }
            _ => {}
        }
        s
    }
}
