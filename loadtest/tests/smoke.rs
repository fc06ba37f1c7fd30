//! A short run of each subcommand, as an operator runs them (CI runs these; the long
//! benchmarks are in docs/BENCHMARKS.md).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_loadtest");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "loadtest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn demo_prints_the_side_by_side_table_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["demo", "--out", dir.path().to_str().unwrap()]);
    assert!(
        out.contains("cluster-wide") && out.contains("per-host"),
        "{out}"
    );
    assert!(
        out.contains("dictionary attack") && out.contains("legitimate sender"),
        "{out}"
    );
    assert!(dir.path().join("report.json").is_file() && dir.path().join("report.svg").is_file());
}

/// As mx-agent does: leases of ended sessions go back in batched Release calls, no
/// Disconnect per session.
#[test]
fn bench_with_batched_releases_makes_no_disconnect_calls() {
    let out = run(&[
        "bench",
        "--duration",
        "1s",
        "--concurrency",
        "8",
        "--release-every",
        "50ms",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let sessions = r["sessions"].as_u64().unwrap();
    assert!(sessions > 100, "{r}");
    assert_eq!(
        r["decisions"].as_u64().unwrap(),
        sessions,
        "Connect only: {r}"
    );
    assert!(r["latency"].get("disconnect").is_none(), "{r}");
    let calls = r["release_calls"].as_u64().unwrap();
    assert!(calls >= 1 && calls < sessions, "{r}");
    assert_eq!(
        r["latency"]["release"]["count"].as_u64(),
        Some(calls),
        "{r}"
    );
}

#[test]
fn bench_closed_and_open_loop_report_rates_latency_and_errors() {
    let out = run(&[
        "bench",
        "--duration",
        "1s",
        "--concurrency",
        "8",
        "--rcpts",
        "2",
        "--bad-share",
        "0.5",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["decisions"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}));
    // The bench policy's limits are never reached: every Connect is admitted.
    assert_eq!(
        r["connect_verdicts"],
        serde_json::json!({ "ok": r["sessions"] })
    );
    let sessions = r["sessions"].as_u64().unwrap();
    assert_eq!(r["decisions"].as_u64().unwrap(), sessions * 4, "{r}");
    for (rpc, per_session) in [
        ("connect", 1),
        ("recipient", 2),
        ("disconnect", 1),
        ("session", 1),
    ] {
        let l = &r["latency"][rpc];
        let q = |k: &str| l[k].as_u64().unwrap();
        assert_eq!(q("count"), sessions * per_session, "{rpc}: {r}");
        assert!(
            q("p50_us") <= q("p99_us") && q("p99_us") <= q("max_us"),
            "{rpc}: {r}"
        );
    }
    // A session is its calls and more.
    assert!(
        r["latency"]["session"]["p50_us"].as_u64() >= r["latency"]["connect"]["p50_us"].as_u64()
    );
    // The one whole second of the run, and what ended in it.
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{r}");
    let (s, d) = (
        timeline[0]["sessions"].as_u64().unwrap(),
        timeline[0]["decisions"].as_u64().unwrap(),
    );
    assert!(s > 0 && s <= sessions && d == 4 * s, "{r}");
    // Open loop, and 0 recipients: a session is Connect and Disconnect, one admission.
    let out = run(&[
        "bench",
        "--duration",
        "1s",
        "--rate",
        "200",
        "--rcpts",
        "0",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["api"], "mxlimit", "{r}");
    assert_eq!(r["sessions"], 200, "open loop at 200/s for 1 s: {r}");
    assert_eq!(r["decisions"], 400, "{r}");
    assert_eq!(r["connect_verdicts"], serde_json::json!({ "ok": 200 }));
    // Every session is in every histogram when the report is made.
    for h in ["connect", "disconnect", "session", "start lag"] {
        assert_eq!(r["latency"][h]["count"], 200, "{h}: {r}");
    }
    assert!(r["latency"].get("recipient").is_none(), "{r}");
}

#[test]
fn attack_writes_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (j, s) = (dir.path().join("a.json"), dir.path().join("a.svg"));
    let out = run(&[
        "attack",
        "--scenario",
        "flood",
        "--nodes",
        "2",
        "--duration",
        "1s",
        "--json",
        j.to_str().unwrap(),
        "--svg",
        s.to_str().unwrap(),
    ]);
    assert!(out.contains("connection flood"), "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(r["cluster_wide"]["actors"][0]["admitted"], 60);
    assert_eq!(r["per_host"]["actors"][0]["admitted"], 120);
    let svg = std::fs::read_to_string(&s).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("cluster-wide counting"),
        "{svg}"
    );
}

#[test]
fn ceiling_measures_both_scripts_on_a_real_redis_and_leaves_no_keys() {
    let redis = testkit::RedisServer::start();
    let out = run(&[
        "ceiling",
        "--redis",
        &redis.url(),
        "--requests",
        "3000",
        "--clients",
        "8",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (c, rel) = (
        r["connect"]["evalsha_per_s"].as_f64().unwrap(),
        r["release"]["evalsha_per_s"].as_f64().unwrap(),
    );
    assert!(c > 100.0 && rel > 100.0, "{r}");
    let sessions = r["sessions_per_s"].as_f64().unwrap();
    assert!((sessions - 1.0 / (1.0 / c + 1.0 / rel)).abs() < 1e-6, "{r}");
    // Both scripts ran 3000 times each (and once more each, checked before measuring),
    // and none failed...
    let stats = redis.cmd(&["INFO", "commandstats"]);
    let stat = |field| loadtest::bench::ceiling::evalsha_stat(&stats, field);
    assert_eq!(stat("calls"), Some(2 * 3000 + 2), "{stats}");
    assert_eq!(stat("failed_calls"), Some(0), "{stats}");
    // ...they wrote keys (removed with UNLINK)...
    assert!(stats.contains("cmdstat_unlink:calls="), "{stats}");
    // ...and what they wrote is gone, so it cannot expire into the next measurement.
    assert_eq!(redis.cmd(&["DBSIZE"]), ":0");
}

#[test]
fn capacity_puts_the_limiter_next_to_the_ceiling_of_its_redis() {
    let redis = testkit::RedisServer::start();
    let out = run(&[
        "bench",
        "--redis",
        &redis.url(),
        "--capacity",
        "--duration",
        "500ms",
        "--ceiling-requests",
        "2000",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let max = r["max"]["sessions_per_s"].as_f64().unwrap();
    assert!(
        r["max"]["mode"]
            .as_str()
            .unwrap()
            .starts_with("closed loop"),
        "{r}"
    );
    assert!(
        (r["half"]["offered_per_s"].as_f64().unwrap() - max / 2.0).abs() < 1e-6,
        "{r}"
    );
    let ceiling = r["ceiling"]["sessions_per_s"].as_f64().unwrap();
    assert!(
        (r["ratio"].as_f64().unwrap() - max / ceiling).abs() < 1e-9,
        "{r}"
    );
    let p99 = |rpc: &str| r["half"]["latency"][rpc]["p99_us"].as_u64().unwrap();
    assert_eq!(
        r["half_p99_us"].as_u64().unwrap(),
        p99("connect").max(p99("disconnect")),
        "{r}"
    );
    assert_eq!(r["max"]["errors"], serde_json::json!({}));
    assert_eq!(r["half"]["errors"], serde_json::json!({}));
}

#[test]
fn sweep_runs_open_loop_at_each_rate() {
    let out = run(&["bench", "--sweep", "100,300", "--duration", "1s", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, rate) in runs.iter().zip([100u64, 300]) {
        assert_eq!(run["offered_per_s"].as_f64().unwrap(), rate as f64);
        let sessions = run["sessions"].as_u64().unwrap();
        assert_eq!(sessions, rate, "{run}");
    }
}

#[test]
fn jitter_reports_every_wakeup() {
    let out = run(&[
        "jitter",
        "--interval",
        "2ms",
        "--duration",
        "100ms",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["interval_us"], 2000);
    assert_eq!(r["late"]["count"], 50);
}

#[test]
fn unknown_scenarios_are_a_clear_error() {
    let out = Command::new(BIN)
        .args(["attack", "--scenario", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no scenario \"nope\"; there are dictionary, flood, slow-drip, mixed")
    );
}
