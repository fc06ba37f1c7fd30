//! The limiter's test harness: two limiter instances over one store, and request
//! helpers. The servers themselves come from the workspace's `testkit`.
#![allow(dead_code)]

use std::sync::Arc;

use limiter_server::server::ServeOptions;
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_core::policy::Policy;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{
    Action, ConnectRequest, DisconnectRequest, OffenceKind, OffenceRequest, RecipientRequest,
    Verdict,
};
use tonic::transport::Channel;

pub use testkit::*;

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
        Pair::start_with(backend, policy, ServeOptions::default).await
    }

    /// With server options of its own for each instance.
    pub async fn start_with(
        backend: Backend,
        policy: Policy,
        options: impl Fn() -> ServeOptions,
    ) -> Pair {
        let at: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let policy = Arc::new(PolicyHandle::fixed(policy));
        let (mut redis, mut cluster) = (None, None);
        let limiters = match backend {
            Backend::Memory => {
                let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
                vec![
                    Limiter::start_with(store.clone(), policy.clone(), at, options()).await,
                    Limiter::start_with(store, policy.clone(), at, options()).await,
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
                    Limiter::start_with(s1, policy.clone(), at, options()).await,
                    Limiter::start_with(s2, policy.clone(), at, options()).await,
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

pub fn offence_req(node: &str, ip: &str, kind: OffenceKind, event: &str) -> OffenceRequest {
    OffenceRequest {
        node: node.into(),
        client_ip: ip.into(),
        kind: kind as i32,
        event_id: event.into(),
        ..Default::default()
    }
}

/// One offence of `kind`, named `event` on `node`.
pub async fn offence(
    c: &mut LimiterClient<Channel>,
    node: &str,
    ip: &str,
    kind: OffenceKind,
    event: &str,
) -> Verdict {
    c.offence(offence_req(node, ip, kind, event))
        .await
        .expect("offence")
        .into_inner()
        .verdict
        .unwrap()
}

pub fn action(v: &Verdict) -> Action {
    Action::try_from(v.action).unwrap()
}

/// A codec that sends bytes as they are, for requests no generated client would send.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct NoDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = NoDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> NoDecoder {
        NoDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for NoDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

/// Sends `body` as the request message of the unary method `path`
/// (`/mxlimit.v1.Limiter/Connect`) to the limiter at `addr`, with a bearer token when
/// given; the status it ends with.
pub async fn raw_call(
    addr: std::net::SocketAddr,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(testkit::channel(addr).await);
    grpc.ready().await.expect("limiter ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match grpc.unary(req, path, RawCodec).await {
        Ok(_) => tonic::Status::ok("answered"),
        Err(s) => s,
    }
}
