//! Connect+Disconnect throughput of one limiter over gRPC, closed loop.
//!
//! ```text
//! # against a limiter this example starts in-process, on a Redis you started:
//! cargo run --release -p limiter-server --example throughput -- --redis redis://127.0.0.1:6379
//! # against a limiter you started (its policy must not refuse the load):
//! cargo run --release -p limiter-server --example throughput -- --target 127.0.0.1:7525
//! ```
//! Each worker sends Connect, waits for the verdict, sends Disconnect, and loops; the
//! addresses spread over `--networks` /24 networks. (The `loadtest` tool is the full
//! harness; this is the one figure the limiter's docs quote.)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use limiter_server::decision::Engine;
use limiter_server::policy::reload::PolicyHandle;
use limiter_server::policy::{Policy, parse_settings};
use limiter_server::server::{ServeOptions, serve};
use limiter_server::store::memory::{MemoryConfig, MemoryStore};
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{ConnectRequest, DisconnectRequest};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// A running limiter to drive; without it one is started in this process.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Redis for the in-process limiter; without it, the in-memory store.
    #[arg(long)]
    redis: Option<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC connections the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = limiter_server::policy::duration::parse)]
    duration: Duration,
    #[arg(long, default_value_t = 1024)]
    networks: u32,
}

/// Limits off: every decision is made in full, none refuses.
const POLICY: &str =
    "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let target = match args.target {
        Some(t) => t,
        None => {
            let policy = Policy::compile(
                parse_settings(POLICY, Path::new("throughput")).unwrap(),
                vec![],
                vec![],
            )
            .unwrap();
            let policy = Arc::new(PolicyHandle::fixed(policy));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let never = std::future::pending::<()>();
            match &args.redis {
                Some(url) => {
                    let store = RedisStore::connect(&RedisConfig::new(vec![url.clone()]))
                        .await
                        .expect("redis");
                    tokio::spawn(serve(
                        Arc::new(Engine::new(store, policy)),
                        listener,
                        ServeOptions::default(),
                        never,
                    ));
                }
                None => {
                    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
                    tokio::spawn(serve(
                        Arc::new(Engine::new(store, policy)),
                        listener,
                        ServeOptions::default(),
                        never,
                    ));
                }
            }
            addr
        }
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(
            Channel::from_shared(format!("http://{target}"))
                .unwrap()
                .connect()
                .await
                .expect("connect"),
        );
    }
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut client = LimiterClient::new(channels[w % channels.len()].clone());
        let networks = args.networks;
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut i: u64 = 0;
            while Instant::now() < deadline {
                i += 1;
                let n = (w as u64).wrapping_mul(7919).wrapping_add(i * 104_729);
                let net = (n % u64::from(networks)) as u32;
                let ip = format!("10.{}.{}.{}", (net >> 8) & 0xff, net & 0xff, 1 + n % 250);
                let session = format!("w{w}-{i}");
                let t = Instant::now();
                let ok = client
                    .connect(ConnectRequest {
                        node: "bench".into(),
                        session_id: session.clone(),
                        client_ip: ip.clone(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                    && client
                        .disconnect(DisconnectRequest {
                            node: "bench".into(),
                            session_id: session,
                            client_ip: ip,
                            ..Default::default()
                        })
                        .await
                        .is_ok();
                if ok {
                    hist.record(t.elapsed().as_micros() as u64).unwrap();
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let pairs = hist.len() as f64 / secs;
    println!(
        "{} Connect+Disconnect pairs in {secs:.1}s: {pairs:.0} pairs/s ({:.0} decisions/s), errors {errors}",
        hist.len(),
        pairs * 2.0
    );
    println!(
        "pair latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}
