//! Test harness: real servers on free ports, started by the tests themselves.
//!
//! `redis-server`, `redis-cli` and `dnsmasq` must be installed (`scripts/test` does it
//! on Debian). A missing one FAILS the test with a message saying so; nothing is
//! skipped.
#![allow(dead_code)]

pub mod dns;
pub mod redis;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use limiter_server::decision::Engine;
use limiter_server::policy::access;
use limiter_server::policy::reload::PolicyHandle;
use limiter_server::policy::{Policy, parse_settings};
use limiter_server::server::{ServeOptions, serve};
use limiter_server::store::Store;
use limiter_server::store::memory::{MemoryConfig, MemoryStore};
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{Action, ConnectRequest, DisconnectRequest, RecipientRequest, Verdict};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use self::redis::{RedisCluster, RedisServer};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails with a clear message when a program the tests need is missing.
pub fn require(program: &str, package: &str) -> std::path::PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{program}` is not installed: install Debian's `{package}` (scripts/test does). Tests never skip a missing server."
    );
}

/// A policy from TOML and access-file text.
pub fn policy(toml: &str, access_text: &str) -> Policy {
    let settings = parse_settings(toml, Path::new("test-policy.toml")).expect("test policy");
    let file = access::parse(access_text, Path::new("test-access")).expect("test access");
    Policy::compile(settings, vec![file], vec![]).expect("test policy compiles")
}

/// One limiter-server, in this process, on a free port.
pub struct Limiter {
    pub addr: SocketAddr,
    pub policy: Arc<PolicyHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Limiter {
    pub async fn start<S: Store>(store: S, policy: Arc<PolicyHandle>) -> Limiter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Arc::new(Engine::new(store, policy.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            health_interval: Duration::from_millis(200),
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            serve(engine, listener, options, async move {
                let _ = stopped.await;
            })
            .await
            .expect("server");
        });
        Limiter {
            addr,
            policy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> LimiterClient<Channel> {
        LimiterClient::new(channel(self.addr).await)
    }

    /// Stops taking calls, finishes those in flight.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to limiter")
}

/// Where the counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    Cluster,
}

/// Two limiter instances over one store, as two replicas behind a Service.
pub struct Pair {
    pub a: LimiterClient<Channel>,
    pub b: LimiterClient<Channel>,
    pub limiters: Vec<Limiter>,
    pub policy: Arc<PolicyHandle>,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

impl Pair {
    pub async fn start(backend: Backend, policy: Policy) -> Pair {
        let policy = Arc::new(PolicyHandle::fixed(policy));
        let (mut redis, mut cluster) = (None, None);
        let limiters = match backend {
            Backend::Memory => {
                let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
                vec![
                    Limiter::start(store.clone(), policy.clone()).await,
                    Limiter::start(store, policy.clone()).await,
                ]
            }
            Backend::Redis | Backend::Cluster => {
                let urls = if backend == Backend::Redis {
                    let r = RedisServer::start();
                    let u = vec![r.url()];
                    redis = Some(r);
                    u
                } else {
                    let c = RedisCluster::start(3);
                    let u = c.urls();
                    cluster = Some(c);
                    u
                };
                let config = RedisConfig::new(urls);
                let s1 = RedisStore::connect(&config).await.expect("redis store");
                let s2 = RedisStore::connect(&config).await.expect("redis store");
                assert_eq!(s1.is_cluster(), backend == Backend::Cluster);
                vec![
                    Limiter::start(s1, policy.clone()).await,
                    Limiter::start(s2, policy.clone()).await,
                ]
            }
        };
        let a = limiters[0].client().await;
        let b = limiters[1].client().await;
        Pair {
            a,
            b,
            limiters,
            policy,
            redis,
            cluster,
        }
    }

    /// Instance `i % 2`: alternate calls spread over both.
    pub fn inst(&mut self, i: usize) -> &mut LimiterClient<Channel> {
        if i.is_multiple_of(2) {
            &mut self.a
        } else {
            &mut self.b
        }
    }
}

pub fn connect_req(node: &str, session: &str, ip: &str) -> ConnectRequest {
    ConnectRequest {
        node: node.into(),
        session_id: session.into(),
        client_ip: ip.into(),
        epoch: "e1".into(),
        ..Default::default()
    }
}

pub async fn connect(
    c: &mut LimiterClient<Channel>,
    node: &str,
    session: &str,
    ip: &str,
) -> Verdict {
    c.connect(connect_req(node, session, ip))
        .await
        .expect("connect")
        .into_inner()
        .verdict
        .unwrap()
}

pub async fn disconnect(c: &mut LimiterClient<Channel>, node: &str, session: &str, ip: &str) {
    c.disconnect(DisconnectRequest {
        node: node.into(),
        session_id: session.into(),
        client_ip: ip.into(),
        epoch: "e1".into(),
    })
    .await
    .expect("disconnect");
}

pub fn rcpt_req(
    node: &str,
    session: &str,
    ip: &str,
    rcpt: &str,
    rejected: bool,
    n: u32,
    bad: u32,
) -> RecipientRequest {
    RecipientRequest {
        node: node.into(),
        session_id: session.into(),
        client_ip: ip.into(),
        recipient: rcpt.into(),
        rejected,
        smtp_code: if rejected { 550 } else { 250 },
        envelope_rcpts: n,
        envelope_bad_rcpts: bad,
        ..Default::default()
    }
}

/// One rejected RCPT, the first of its envelope.
pub async fn bad_rcpt(
    c: &mut LimiterClient<Channel>,
    node: &str,
    session: &str,
    ip: &str,
    rcpt: &str,
) -> Verdict {
    c.recipient(rcpt_req(node, session, ip, rcpt, true, 1, 1))
        .await
        .expect("recipient")
        .into_inner()
        .verdict
        .unwrap()
}

pub fn action(v: &Verdict) -> Action {
    Action::try_from(v.action).unwrap()
}
