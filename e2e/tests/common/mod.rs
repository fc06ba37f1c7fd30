//! Shared by the agent's tests: a limiter in this process, and an agent in front of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use mx_agent::agent::Agent;
use mx_agent::config::AgentConfig;
use mx_agent::listen::ListenAddr;
use mxlimit_core::policy::duration::Span;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use testkit::Limiter;

/// The agent's binary, built from mx-agent's own `main.rs` (see e2e/Cargo.toml).
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_mx-agent-e2e");

/// A limiter over an in-memory store with this policy (TOML, access file).
pub async fn limiter(toml: &str, access: &str) -> Limiter {
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    Limiter::start(
        store,
        Arc::new(PolicyHandle::fixed(testkit::policy(toml, access))),
    )
    .await
}

/// An agent config for `node` against `limiters`, every adapter on a free port.
pub fn config(node: &str, limiters: &[SocketAddr]) -> AgentConfig {
    let mut cfg = AgentConfig {
        node: Some(node.into()),
        ..Default::default()
    };
    cfg.limiter.endpoints = limiters.iter().map(|a| format!("http://{a}")).collect();
    cfg.limiter.deadline = Span::millis(200);
    cfg.milter.listen = vec!["inet:127.0.0.1:0".into()];
    cfg.policy.listen = vec!["inet:127.0.0.1:0".into()];
    cfg.socketmap.listen = vec!["inet:127.0.0.1:0".into()];
    cfg
}

/// An agent with its milter alone (the other adapters off).
pub fn milter_config(node: &str, limiters: &[SocketAddr]) -> AgentConfig {
    let mut cfg = config(node, limiters);
    cfg.policy.listen.clear();
    cfg.socketmap.listen.clear();
    cfg
}

/// An agent that follows `files` (polled every 20 ms), with `keep` of its other
/// adapters: "milter", "policy", "socketmap".
pub fn log_config(
    node: &str,
    limiters: &[SocketAddr],
    files: &[std::path::PathBuf],
    keep: &[&str],
) -> AgentConfig {
    let mut cfg = config(node, limiters);
    for (name, listen) in [
        ("milter", &mut cfg.milter.listen),
        ("policy", &mut cfg.policy.listen),
        ("socketmap", &mut cfg.socketmap.listen),
    ] {
        if !keep.contains(&name) {
            listen.clear();
        }
    }
    cfg.logs.files = files.to_vec();
    cfg.logs.poll = Span::millis(20);
    cfg
}

pub async fn agent(cfg: &AgentConfig) -> Agent {
    Agent::start(cfg).await.expect("agent starts")
}

pub fn tcp(a: &ListenAddr) -> SocketAddr {
    match a {
        ListenAddr::Tcp(s) => *s,
        ListenAddr::Unix(p) => panic!("{} is not TCP", p.display()),
    }
}

/// The mx-agent binary as node `node` with a milter on a free loopback port, asking
/// `limiter`; `extra` flags and `env` on top. Returns once the milter listens.
pub fn spawn_agent(
    node: &str,
    limiter: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, SocketAddr) {
    spawn_agent_to(node, limiter, extra, env, std::process::Stdio::null())
}

/// [`spawn_agent`], its log going to `stderr`.
pub fn spawn_agent_to(
    node: &str,
    limiter: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (std::process::Child, SocketAddr) {
    let port = testkit::free_port();
    let child = std::process::Command::new(AGENT_BIN)
        .args([
            "--node",
            node,
            "--milter",
            &format!("inet:127.0.0.1:{port}"),
        ])
        .args(["--limiter", limiter])
        .args(extra)
        // The service name in traces is the agent's own unless a test sets one.
        .env_remove("OTEL_SERVICE_NAME")
        .envs(env.iter().copied())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the milter never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A child process killed (SIGKILL) when the test ends, passed or failed.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One SMTP session from `from`: the greeting and each command's reply (EHLO, MAIL,
/// a RCPT per recipient), then QUIT, which is when sendmail logs the client. It stops
/// early when the server closes.
pub async fn smtp_session(
    server: SocketAddr,
    from: &str,
    rcpts: &[String],
) -> Vec<testkit::smtp::Reply> {
    let (mut s, greeting) = testkit::smtp::Smtp::connect(from.parse().unwrap(), server)
        .await
        .expect("TCP connect");
    let mut replies = vec![greeting];
    for cmd in [
        "EHLO client.example".to_string(),
        "MAIL FROM:<a@client.example>".into(),
    ]
    .into_iter()
    .chain(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")))
    {
        match s.cmd(&cmd).await {
            Ok(r) => {
                let closed = r.code == 0;
                replies.push(r);
                if closed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = s.cmd("QUIT").await;
    replies
}

/// Whether a session was refused at connect by a ban or a limit, as each MTA words a
/// 421 it was told to give (not any 421: a broken MTA says 421 too). Exim gives the
/// agent's text; Postfix (`smtpd.c:6084`) and sendmail their own for a milter's.
pub fn refused_at_connect(r: &[testkit::smtp::Reply]) -> bool {
    r.first().is_some_and(|g| {
        g.code == 421
            && (g
                .text
                .contains("Too many invalid recipients or protocol errors")
                || g.text.contains("Service unavailable - try again later")
                || g.text.contains("closing connection"))
    })
}

/// Opens sessions from `who` at `server` until one is refused at connect, for at most
/// 20 s; a failure says `what` and shows `log()`.
pub async fn until_refused(server: SocketAddr, who: &str, what: &str, log: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = smtp_session(server, who, &[]).await;
        if refused_at_connect(&r) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{who} never refused at {what}: {r:?}\n{}",
            log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
