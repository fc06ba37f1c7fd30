//! The `mx-agent` binary against a limiter: restarts, metrics, undecided sessions.

mod common;

use std::time::{Duration, Instant};
use testkit::prom::{sample, scrape};

/// An agent that crashed leaves its sessions' leases behind; when it comes back (a new
/// epoch) its first heartbeat frees them at once, not after their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_frees_the_leases_its_previous_run_left() {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1h\"\n";
    let store = std::sync::Arc::new(mxlimit_core::store::memory::MemoryStore::new(
        Default::default(),
    ));
    let lim = testkit::Limiter::start(
        store,
        std::sync::Arc::new(mxlimit_core::policy::reload::PolicyHandle::fixed(
            testkit::policy(toml, ""),
        )),
    )
    .await;
    let limiter = format!("http://{}", lim.addr);
    let (mut first, milter) = common::spawn_agent("mx-restart", &limiter, &[], &[]);
    let mut c = testkit::milter::MilterClient::open(milter).await.unwrap();
    assert_eq!(
        c.connect("unknown", "10.9.6.1".parse().unwrap(), &[])
            .await
            .unwrap(),
        testkit::milter::Reply::Continue
    );
    // The agent dies without a word; its session's lease stays.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(c);
    let mut direct = lim.client().await;
    let probe = |id: &str| mxlimit_proto::v1::ConnectRequest {
        node: "probe".into(),
        session_id: id.into(),
        client_ip: "10.9.6.1".into(),
        ..Default::default()
    };
    let v = direct
        .connect(probe("p1"))
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(
        v.reason, "client_conn",
        "the dead agent's lease still holds"
    );
    // The agent starts again: same node, new epoch.
    let (mut second, _) = common::spawn_agent("mx-restart", &limiter, &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = direct
            .connect(probe("p2"))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        if v.reason == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old lease was not freed: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
}

/// An agent binary with metrics on a free port; returns it, its milter and metrics addresses.
async fn agent_with_metrics(limiter: &str) -> (std::process::Child, std::net::SocketAddr, String) {
    let metrics = format!("127.0.0.1:{}", testkit::free_port());
    let (child, milter) = common::spawn_agent(
        "mx1",
        limiter,
        &["--deadline", "500ms", "--metrics-listen", &metrics],
        &[],
    );
    (child, milter, metrics)
}

async fn milter_connect(milter: std::net::SocketAddr, ip: &str) -> testkit::milter::Reply {
    let mut c = testkit::milter::MilterClient::open(milter).await.unwrap();
    c.connect("unknown", ip.parse().unwrap(), &[])
        .await
        .unwrap()
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_limiter_calls_their_latency_decisions_and_fallbacks() {
    use testkit::milter::Reply;
    let lim = testkit::Limiter::start(
        std::sync::Arc::new(mxlimit_core::store::memory::MemoryStore::new(
            Default::default(),
        )),
        std::sync::Arc::new(mxlimit_core::policy::reload::PolicyHandle::fixed(
            testkit::policy("", "Connect:10.50.0\tREJECT\n"),
        )),
    )
    .await;
    let (mut child, milter, metrics) = agent_with_metrics(&format!("http://{}", lim.addr)).await;
    match milter_connect(milter, "10.50.0.9").await {
        Reply::Code(c) => assert!(c.starts_with("550"), "{c}"),
        other => panic!("{other:?}"),
    }
    let m = scrape(&metrics);
    let _ = child.kill();
    let _ = child.wait();
    let ok = [r#"rpc="Connect""#, r#"result="ok""#];
    assert_eq!(
        sample(&m, "mxagent_limiter_calls_total", &ok),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "mxagent_limiter_call_duration_seconds_count",
            &[r#"rpc="Connect""#]
        ),
        Some(1.0)
    );
    assert!(m.contains("# HELP mxagent_limiter_calls_total"), "{m}");
    let refused = [
        r#"rpc="Connect""#,
        r#"action="reject""#,
        r#"reason="access""#,
        r#"origin="limiter""#,
    ];
    assert_eq!(
        sample(&m, "mxagent_decisions_total", &refused),
        Some(1.0),
        "{m}"
    );

    // No limiter answers: the agent decides alone (and accepts), and counts it.
    let dead = format!("http://127.0.0.1:{}", testkit::free_port());
    let (mut child, milter, metrics) = agent_with_metrics(&dead).await;
    assert_eq!(milter_connect(milter, "10.50.0.10").await, Reply::Continue);
    let m = scrape(&metrics);
    let _ = child.kill();
    let _ = child.wait();
    let local = [r#"rpc="Connect""#, r#"mode="local""#];
    assert_eq!(
        sample(&m, "mxagent_fallbacks_total", &local),
        Some(1.0),
        "{m}"
    );
    let accepted_here = [
        r#"rpc="Connect""#,
        r#"action="accept""#,
        r#"reason="ok""#,
        r#"origin="local""#,
    ];
    assert_eq!(
        sample(&m, "mxagent_decisions_total", &accepted_here),
        Some(1.0),
        "{m}"
    );
    let failed: f64 = ["timeout", "unavailable", "error"]
        .iter()
        .filter_map(|r| {
            sample(
                &m,
                "mxagent_limiter_calls_total",
                &[r#"rpc="Connect""#, &format!(r#"result="{r}""#)],
            )
        })
        .sum();
    assert_eq!(failed, 1.0, "{m}");
}

/// An agent binary on `limiter` with `config`, metrics and its log in `dir`; returns it,
/// its milter, metrics and log file.
fn logged_agent(
    dir: &std::path::Path,
    name: &str,
    limiter: &str,
    config: &str,
    extra: &[&str],
) -> (
    common::Killed,
    std::net::SocketAddr,
    String,
    std::path::PathBuf,
) {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join(format!("{name}.log"));
    let metrics = format!("127.0.0.1:{}", testkit::free_port());
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--metrics-listen",
        &metrics,
    ];
    args.extend_from_slice(extra);
    let (child, milter) = common::spawn_agent_to(
        name,
        limiter,
        &args,
        &[],
        std::fs::File::create(&log).unwrap().into(),
    );
    (common::Killed(child), milter, metrics, log)
}

/// Waits (bounded) until the agent at `metrics` has counted `n` undecided sessions of
/// `adapter` and `cause`.
async fn undecided_reaches(metrics: &str, adapter: &str, cause: &str, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(metrics);
        let got = sample(
            &m,
            "mxagent_undecided_sessions_total",
            &[
                &format!(r#"adapter="{adapter}""#),
                &format!(r#"cause="{cause}""#),
            ],
        );
        if got.is_some_and(|v| v >= n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{adapter}/{cause}: {got:?}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn warned(log: &std::path::Path, cause: &str) -> bool {
    let log = std::fs::read_to_string(log).unwrap();
    log.lines()
        .any(|l| l.contains("WARN") && l.contains(&format!("cause=\"{cause}\"")))
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_limiter_never_decided_are_counted_and_logged_by_cause() {
    use testkit::milter::{MilterClient, Reply};
    let lim = common::limiter("", "").await;
    let limiter = format!("http://{}", lim.addr);
    let dir = tempfile::tempdir().unwrap();
    let socketmap = format!("127.0.0.1:{}", testkit::free_port());
    let sm = format!("inet:{socketmap}");
    let (agent, milter, metrics, log) =
        logged_agent(dir.path(), "mx1", &limiter, "", &["--socketmap", &sm]);
    // No address the agent can read: decided by the fallback (open: accepted here).
    let mut first = MilterClient::open(milter).await.unwrap();
    let r = first
        .connect_as("client.example", b'6', Some("IPv6:not-an-address"), &[])
        .await
        .unwrap();
    assert_eq!(r, Reply::Continue);
    // Protocol garbage: that connection is closed.
    let mut bad = MilterClient::open(milter).await.unwrap();
    bad.raw(&[0, 0, 0, 3, b'C', 0, 0]).await.unwrap();
    assert!(bad.closed().await);
    // Garbage on the socketmap (a line protocol: its own accept loop). The agent binds
    // it just after the milter, which spawn_agent waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match tokio::net::TcpStream::connect(&socketmap).await {
            Ok(s) => break s,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::io::AsyncWriteExt::write_all(&mut s, b"hello")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    for (adapter, cause) in [
        ("milter", "no_client_address"),
        ("milter", "protocol_error"),
        ("socketmap", "protocol_error"),
    ] {
        undecided_reaches(&metrics, adapter, cause, 1.0).await;
        let m = scrape(&metrics);
        let n = sample(
            &m,
            "mxagent_undecided_sessions_total",
            &[
                &format!(r#"adapter="{adapter}""#),
                &format!(r#"cause="{cause}""#),
            ],
        );
        assert_eq!(n, Some(1.0), "{adapter}/{cause}: one each\n{m}");
    }
    drop(agent);
    for cause in ["no_client_address", "protocol_error"] {
        assert!(warned(&log, cause), "no warning for {cause}");
    }

    // Every slot taken: one more MTA connection is closed at once. (Its own agent, one
    // slot: spawn_agent's readiness probe may hold it for a moment, hence the retry.)
    let (agent, milter, metrics, log) = logged_agent(
        dir.path(),
        "mx2",
        &limiter,
        "[milter]\nmax_sessions = 1\n",
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let _held = loop {
        if let Ok(c) = MilterClient::open(milter).await {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the one slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut extra = tokio::net::TcpStream::connect(milter).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut extra, &mut buf),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0))), "not closed at once: {read:?}");
    undecided_reaches(&metrics, "milter", "slots_full", 1.0).await;
    drop(agent);
    assert!(warned(&log, "slots_full"), "no warning for slots_full");
}
