//! `loadtest`: wires the command line to the harness.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use loadtest::bench::target::Target;
use loadtest::bench::{self, Api, BenchOptions, ceiling, compare, sweep};
use loadtest::report::Report;
use loadtest::scenario;
use mxlimit_core::policy::duration::parse as duration;

/// mxlimit's load and attack harness: what the limiter costs, and what it holds.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive the Limiter API as many MX nodes (or, with --rls, an Envoy rate limit
    /// service): decisions/s, latency, errors.
    Bench(BenchArgs),
    /// The ceiling of a Redis for the limiter's work: redis-benchmark with EVALSHA of
    /// the Connect and the Release scripts.
    Ceiling {
        /// The Redis to measure (redis://host:port).
        #[arg(long)]
        redis: String,
        /// redis-benchmark connections.
        #[arg(long, default_value_t = 64, value_parser = at_least_one::<u32>)]
        clients: u32,
        /// Calls per script.
        #[arg(long, default_value_t = 300_000, value_parser = at_least_one::<u64>)]
        requests: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The biggest heartbeat: N sessions in N networks renewed by bare id, by address,
    /// and visited by an epoch change, timed, with the longest Redis command of the run
    /// (starts its own redis-server or Redis Cluster).
    Heartbeat {
        /// memory, redis (one server) or cluster (three primaries).
        #[arg(long, default_value = "redis")]
        store: String,
        /// Live sessions, each in its own IPv6 /64 (at most 100 000: one heartbeat).
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Play an attack scenario against cluster-wide and per-host counting, side by side.
    Attack(AttackArgs),
    /// Self-contained: an embedded limiter, simulated MX nodes, the mixed attack with
    /// cluster-wide and with per-host counting, the table in a few seconds.
    Demo {
        /// Keep the cluster-wide counters in this Redis instead of in memory.
        #[arg(long)]
        redis: Option<String>,
        /// Also write report.json and report.svg into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The same scenarios over real SMTP: private Postfix instances with mx-agent milters,
    /// one limiter on a real redis-server (cluster-wide) or one per MX (per-host).
    Smtp(SmtpArgs),
    /// How late this machine wakes a thread that sleeps to a schedule: the floor under
    /// every latency measured on it.
    Jitter {
        /// Time between scheduled wakeups.
        #[arg(long, default_value = "1ms", value_parser = nonzero_duration)]
        interval: Duration,
        #[arg(long, default_value = "10s", value_parser = nonzero_duration)]
        duration: Duration,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// A running limiter (host:port); without it one is started in this process.
    #[arg(long)]
    target: Option<String>,
    /// Redis for the embedded limiter; without it, the in-memory store.
    #[arg(long)]
    redis: Option<String>,
    /// Drive the Envoy rate limit service at --target (ShouldRateLimit of
    /// envoy.service.ratelimit.v3, as limitador serves it) instead of mxlimit: a session
    /// is one call with one descriptor, client_ip (the address) and client_net (its /24).
    #[arg(long, requires = "target", conflicts_with_all = ["redis", "capacity", "ceiling_redis"])]
    rls: bool,
    /// The domain of --rls requests.
    #[arg(long, default_value = bench::rls::DOMAIN)]
    rls_domain: String,
    /// Release ended sessions' leases in batches this often (one Release call per
    /// node, as mx-agent does) instead of a Disconnect per session.
    #[arg(long, value_parser = nonzero_duration, conflicts_with = "rls")]
    release_every: Option<std::time::Duration>,
    /// Simulated MX nodes, each with its own connection to the limiter (as agents have).
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    nodes: usize,
    /// Closed loop: sessions in flight.
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// Open loop: sessions started per second (instead of --concurrency).
    #[arg(long, value_parser = positive)]
    rate: Option<f64>,
    /// How long to drive load (each run, with --against-ceiling).
    #[arg(long, default_value = "10s", value_parser = nonzero_duration)]
    duration: Duration,
    /// Recipient calls per session, between Connect and Disconnect. With 0 a session is
    /// Connect and Disconnect: one admission.
    #[arg(long, default_value_t = 0)]
    rcpts: u32,
    /// The share of those recipients that are unknown users (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    bad_share: f64,
    /// Client addresses spread over this many /24 networks of 10.0.0.0/8.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    networks: u32,
    /// Measure the most the limiter does (closed loop, 64, 128 and 256 in flight), then
    /// its latency at half of that load, then (given its Redis) that Redis' ceiling,
    /// and print how they compare.
    #[arg(long)]
    capacity: bool,
    /// Open loop at each of these sessions/s in turn (comma-separated), a line each.
    #[arg(long, value_delimiter = ',', value_parser = positive, conflicts_with_all = ["rate", "capacity"])]
    sweep: Option<Vec<f64>>,
    /// Calls per script for the ceiling that --capacity measures.
    #[arg(long, default_value_t = 300_000, value_parser = at_least_one::<u64>)]
    ceiling_requests: u64,
    /// The Redis a --target limiter uses, for --capacity.
    #[arg(long)]
    ceiling_redis: Option<String>,
    /// Print the report as JSON (and no progress line).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AttackArgs {
    /// One of: dictionary, flood, slow-drip, mixed.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Simulated MX nodes the attack is spread over.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    nodes: usize,
    /// How long the attack runs.
    #[arg(long, default_value = "3s", value_parser = nonzero_duration)]
    duration: Duration,
    /// Cluster-wide counters in this Redis (default: in memory).
    #[arg(long)]
    redis: Option<String>,
    /// The limiter policy (TOML); default: the scenarios' demo policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the chart (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct SmtpArgs {
    /// One of: dictionary, flood, slow-drip, mixed.
    #[arg(long, default_value = "dictionary")]
    scenario: String,
    /// MX hosts: private Postfix instances, each with its own mx-agent.
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<usize>)]
    nodes: usize,
    /// How long the attack runs.
    #[arg(long, default_value = "3s", value_parser = nonzero_duration)]
    duration: Duration,
    /// Scales every actor's rate (real MTAs are slower than simulated nodes).
    #[arg(long, default_value_t = 0.3, value_parser = positive)]
    scale: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the chart (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

// The generator shares the machine with what it measures: cheap allocation leaves more
// of it to the limiter (glibc's arenas grew with mprotect calls in its profile).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mxlimit_core::exit::code("loadtest", run().await)
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Bench(a) => bench_cmd(a).await,
        Cmd::Ceiling {
            redis,
            clients,
            requests,
            json,
        } => {
            let c = ceiling::measure(&redis, clients, requests)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.text());
            }
            Ok(())
        }
        Cmd::Heartbeat {
            store,
            sessions,
            json,
        } => {
            let h = bench::heartbeat::measure(&store, sessions).await?;
            print_report(&h, json, bench::heartbeat::HeartbeatBench::text)
        }
        Cmd::Attack(a) => {
            let policy = match &a.policy {
                Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
                None => scenario::DEMO_POLICY.to_string(),
            };
            let s = scenario::named(
                &a.scenario,
                a.nodes,
                a.duration,
                &scenario::grpc_networks(),
                1.0,
            )?;
            let r = loadtest::attack_grpc(&s, &policy, a.redis.as_deref()).await?;
            output(&r, a.json.as_deref(), a.svg.as_deref())
        }
        Cmd::Jitter {
            interval,
            duration,
            json,
        } => {
            let j = tokio::task::spawn_blocking(move || bench::jitter::measure(interval, duration))
                .await?;
            print_report(&j, json, bench::jitter::Jitter::text)
        }
        Cmd::Demo { redis, out } => {
            let s = scenario::demo();
            let r = loadtest::attack_grpc(&s, scenario::DEMO_POLICY, redis.as_deref()).await?;
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    output(
                        &r,
                        Some(&dir.join("report.json")),
                        Some(&dir.join("report.svg")),
                    )
                }
                None => output(&r, None, None),
            }
        }
        Cmd::Smtp(a) => {
            let s = scenario::named(
                &a.scenario,
                a.nodes,
                a.duration,
                &scenario::loopback_networks(),
                a.scale,
            )?;
            let r = loadtest::attack_smtp(&s, scenario::DEMO_POLICY, Duration::ZERO).await?;
            output(&r, a.json.as_deref(), a.svg.as_deref())
        }
    }
}

fn nonzero_duration(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        r => r.map_err(|e| e.to_string()),
    }
}

fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// A finite number above 0 (a rate, a scale).
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?}: want a number above 0")),
    }
}

/// A share from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: want a number from 0 to 1")),
    }
}

fn output(r: &Report, json: Option<&std::path::Path>, svg: Option<&std::path::Path>) -> Result<()> {
    print!("{}", r.table());
    if let Some(p) = json {
        r.write_json(p).with_context(|| p.display().to_string())?;
        println!("report: {}", p.display());
    }
    if let Some(p) = svg {
        r.write_svg(p)
            .map_err(anyhow::Error::msg)
            .with_context(|| p.display().to_string())?;
        println!("chart: {}", p.display());
    }
    Ok(())
}

fn print_report<T: serde::Serialize>(r: &T, json: bool, text: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{}", text(r));
    }
    Ok(())
}

async fn bench_cmd(a: BenchArgs) -> Result<()> {
    if a.capacity && a.rcpts > 0 {
        bail!(
            "--capacity compares Connect+Disconnect sessions with the Redis ceiling: leave out --rcpts"
        );
    }
    if a.rls && a.rcpts > 0 {
        bail!("--rls: an RLS server has no recipients; leave out --rcpts");
    }
    let opts = BenchOptions {
        nodes: a.nodes,
        concurrency: a.concurrency,
        rate: a.rate,
        duration: a.duration,
        rcpts: a.rcpts,
        bad_share: a.bad_share,
        networks: a.networks,
        progress: !a.json,
        release_every: a.release_every,
        api: match a.rls {
            true => Api::Rls {
                domain: a.rls_domain.clone(),
            },
            false => Api::Mxlimit,
        },
    };
    let t = Target::open(a.target.as_deref(), a.redis.as_deref(), a.nodes).await?;
    if let Some(rates) = &a.sweep {
        let r = sweep::sweep(&t.nodes, &opts, rates).await;
        print_report(&r, a.json, sweep::Sweep::text)
    } else if a.capacity {
        let redis = a.redis.as_deref().or(a.ceiling_redis.as_deref());
        let c = compare::capacity(&t.nodes, &opts, redis, a.ceiling_requests).await?;
        print_report(&c, a.json, compare::Comparison::text)
    } else {
        let r = bench::run(&t.nodes, &opts).await;
        print_report(&r, a.json, bench::BenchReport::text)
    }
}
