//! What the agent adds to an SMTP session: the latency of each milter step, with the
//! agent and a limiter on a loopback Redis, at a moderate open-loop rate.
//!
//! ```text
//! redis-server --port 6390 --save "" --appendonly no --daemonize yes
//! cargo run --release -p mx-agent --example milter_latency -- --redis redis://127.0.0.1:6390
//! ```
//! Sessions start at `--rate` per second whatever the replies do; each sends CONNECT
//! (a `Connect` call), MAIL, an accepted RCPT (checked in the agent), a rejected RCPT
//! (a `Recipient` call) and QUIT (a `Disconnect` call, unanswered in the protocol).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mx_agent::agent::Agent;
use mx_agent::config::AgentConfig;
use mx_agent::listen::ListenAddr;
use mxlimit_core::policy::reload::PolicyHandle;
use testkit::milter::{MilterClient, Reply};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    redis: String,
    /// Sessions started per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value = "10s", value_parser = mxlimit_core::policy::duration::parse)]
    duration: Duration,
}

/// Limits off: every step does its whole work and none is delayed.
const POLICY: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 0\nblock_after = 0\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n[envelope]\nbad_rcpt_throttle = 0\n";

const STEPS: [&str; 4] = [
    "connect (Connect call)",
    "mail",
    "rcpt accepted (local)",
    "rcpt rejected (Recipient call)",
];

// Long on purpose: the example's whole run, top to bottom.
#[tokio::main]
async fn main() {
    let args = Args::parse();
    let store = RedisStore::connect(&RedisConfig::new(vec![args.redis.clone()]))
        .await
        .expect("redis");
    let limiter = testkit::Limiter::start(
        store,
        Arc::new(PolicyHandle::fixed(testkit::policy(POLICY, ""))),
    )
    .await;
    let mut cfg = AgentConfig {
        node: Some("bench".into()),
        ..Default::default()
    };
    cfg.limiter.endpoints = vec![format!("http://{}", limiter.addr)];
    cfg.milter.listen = vec!["inet:127.0.0.1:0".into()];
    let agent = Agent::start(&cfg).await.expect("agent");
    let ListenAddr::Tcp(milter) = agent.milter[0].clone() else {
        unreachable!()
    };

    let hists: Arc<Mutex<Vec<Histogram<u64>>>> = Arc::new(Mutex::new(
        (0..STEPS.len())
            .map(|_| Histogram::new_with_bounds(1, 10_000_000, 3).unwrap())
            .collect(),
    ));
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut n: u32 = 0;
    while start.elapsed() < args.duration {
        let due = start + every * n;
        tokio::time::sleep_until(due.into()).await;
        let hists = hists.clone();
        let ip = format!(
            "10.{}.{}.{}",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            1 + n % 250
        );
        tasks.push(tokio::spawn(async move {
            let mut c = MilterClient::open(milter).await.unwrap();
            let mut took = [0u64; 4];
            let t = Instant::now();
            assert_eq!(
                c.connect("unknown", ip.parse().unwrap(), &[])
                    .await
                    .unwrap(),
                Reply::Continue
            );
            took[0] = t.elapsed().as_micros() as u64;
            let t = Instant::now();
            c.mail("sender@example.org").await.unwrap();
            took[1] = t.elapsed().as_micros() as u64;
            let t = Instant::now();
            c.rcpt("alice@mx.test").await.unwrap();
            took[2] = t.elapsed().as_micros() as u64;
            let t = Instant::now();
            c.rejected_rcpt("nobody@mx.test").await.unwrap();
            took[3] = t.elapsed().as_micros() as u64;
            c.quit().await.unwrap();
            let mut h = hists.lock().await;
            for (i, v) in took.iter().enumerate() {
                h[i].record((*v).max(1)).unwrap();
            }
        }));
        n += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = hists.lock().await;
    println!(
        "{n} sessions at {}/s over {:?}; milter step latency (µs):",
        args.rate, args.duration
    );
    println!(
        "{:<32} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "step", "p50", "p90", "p99", "p99.9", "max"
    );
    for (i, name) in STEPS.iter().enumerate() {
        let x = &h[i];
        println!(
            "{name:<32} {:>7} {:>7} {:>7} {:>7} {:>7}",
            x.value_at_quantile(0.5),
            x.value_at_quantile(0.9),
            x.value_at_quantile(0.99),
            x.value_at_quantile(0.999),
            x.max()
        );
    }
    println!(
        "fallbacks: {}",
        agent
            .limiter
            .stats
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}
