//! The `mx-agent` binary as an operator runs it: its flags, its errors, its signals.
//! Runs against a limiter are `e2e/tests/agent_binary.rs`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mx-agent");

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--config", "MXAGENT_CONFIG"),
        ("--node", "MXAGENT_NODE"),
        ("--limiter ", "MXAGENT_LIMITER"),
        ("--limiter-dns", "MXAGENT_LIMITER_DNS"),
        ("--tls-ca", "MXAGENT_TLS_CA"),
        ("--tls-cert", "MXAGENT_TLS_CERT"),
        ("--tls-key", "MXAGENT_TLS_KEY"),
        ("--tls-domain", "MXAGENT_TLS_DOMAIN"),
        ("--metrics-listen", "MXAGENT_METRICS_LISTEN"),
        ("--deadline", "MXAGENT_DEADLINE"),
        ("--fallback", "MXAGENT_FALLBACK"),
        ("--milter", "MXAGENT_MILTER"),
        ("--policy-service", "MXAGENT_POLICY_SERVICE"),
        ("--socketmap", "MXAGENT_SOCKETMAP"),
        ("--log-format", "MXAGENT_LOG_FORMAT"),
        ("--log ", "MXAGENT_LOG"),
        ("--check", ""),
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
        assert!(help.contains(env), "--help does not mention {env}");
    }
}

#[test]
fn configuration_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[milter]\nlisten = [\"nowhere\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--config", cfg.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("milter.listen: \"nowhere\" is not a listen address"),
        "{err}"
    );
    assert!(
        !err.to_lowercase().contains("backtrace"),
        "an operator's error with a stack trace: {err}"
    );
    let out = Command::new(BIN).arg("--check").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to serve"));
    let out = Command::new(BIN)
        .args(["--check", "--config", "../examples/mx-agent.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn it_serves_until_sigterm() {
    let (port, open_port) = (testkit::free_port(), testkit::free_port());
    let mut child = Command::new(BIN)
        .args([
            "--node",
            "mx-test",
            // The second listens on every address: the agent warns of that one only.
            "--milter",
            &format!("inet:127.0.0.1:{port},inet:0.0.0.0:{open_port}"),
            "--limiter",
            "http://127.0.0.1:1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the milter never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mx-agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("listening beyond loopback"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(warned[0].contains(&format!("0.0.0.0:{open_port}")), "{err}");
}
