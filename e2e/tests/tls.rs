//! The agent reaches its limiters over TLS and mutual TLS, and takes renewed
//! certificate files without a restart.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use limiter_server::tls::{ServerTls, TlsFiles};
use mx_agent::config::ClientTlsSettings;
use mxlimit_core::policy::duration::Span;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::MemoryStore;
use testkit::Limiter;
use testkit::milter::{MilterClient, Reply};
use testkit::tls::Pki;

/// A limiter over TLS on `at` that refuses 10.50.0.0/24: a 550 can only come from it
/// (the agent's local fallback would accept).
async fn tls_limiter(at: SocketAddr, dir: &Path, server_ca: &Pki, client_ca: &Pki) -> Limiter {
    let (cert, key) = server_ca.server(&["localhost"]).write(dir, "server");
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(client_ca.write_ca(dir, "clients.pem")),
    };
    let policy = Arc::new(PolicyHandle::fixed(testkit::policy(
        "[client_rate]\naddress = 0\nnetwork = 0\n",
        "Connect:10.50.0\tREJECT\n",
    )));
    Limiter::start_tls(
        Arc::new(MemoryStore::new(Default::default())),
        policy,
        at,
        Some(ServerTls::open(files).unwrap()),
    )
    .await
}

async fn verdict(milter: SocketAddr) -> Reply {
    let mut c = MilterClient::open(milter).await.unwrap();
    c.connect("unknown", "10.50.0.9".parse().unwrap(), &[])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_travel_over_mutual_tls_and_a_renewed_client_certificate_is_taken_up() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    let servers = Pki::new("limiter CA");
    let agents = Pki::new("agent CA");
    let at: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let limiter = tls_limiter(at, &server_dir, &servers, &agents).await;

    let (cert, key) = agents.client("mx1.example").write(&agent_dir, "agent");
    let mut cfg = config("mx1", &[]);
    cfg.limiter.endpoints = vec![format!("https://{at}")];
    cfg.limiter.deadline = Span::millis(1000);
    cfg.limiter.tls = Some(ClientTlsSettings {
        ca: Some(servers.write_ca(&agent_dir, "limiters.pem")),
        cert: Some(cert),
        key: Some(key),
        domain: Some("localhost".into()),
        reload_every: Span::millis(100),
    });
    let agent = agent(&cfg).await;
    let milter = tcp(&agent.milter[0]);
    match verdict(milter).await {
        Reply::Code(c) => assert!(c.starts_with("550"), "{c}"),
        other => panic!("the limiter's refusal did not arrive: {other:?}"),
    }
    assert_eq!(agent.limiter.stats.fallbacks.load(Ordering::Relaxed), 0);

    // The agents' CA is replaced: the agent's files are renewed, and the limiter comes
    // back trusting the new CA only. Decisions flow again only if the agent took up the
    // new certificate.
    let renewed = Pki::new("renewed agent CA");
    renewed.client("mx1.example").write(&agent_dir, "agent");
    limiter.stop().await;
    let _limiter = tls_limiter(at, &server_dir, &servers, &renewed).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Reply::Code(c) = verdict(milter).await
            && c.starts_with("550")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed client certificate was not used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_agent_falls_back_and_says_why_at_start_if_files_are_bad()
{
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("limiter CA");
    let agents = Pki::new("agent CA");
    let at: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let _limiter = tls_limiter(at, dir.path(), &servers, &agents).await;

    // TLS but no client certificate: the limiter refuses the handshake, the agent
    // decides locally (and accepts).
    let mut cfg = config("mx1", &[]);
    cfg.limiter.endpoints = vec![format!("https://{at}")];
    cfg.limiter.tls = Some(ClientTlsSettings {
        ca: Some(servers.write_ca(dir.path(), "limiters.pem")),
        domain: Some("localhost".into()),
        ..Default::default()
    });
    let agent = agent(&cfg).await;
    assert_eq!(verdict(tcp(&agent.milter[0])).await, Reply::Continue);
    assert!(agent.limiter.stats.fallbacks.load(Ordering::Relaxed) > 0);

    // A CA file that is not PEM stops the start, naming the problem.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    cfg.limiter.tls.as_mut().unwrap().ca = Some(bad);
    let err = mx_agent::agent::Agent::start(&cfg)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("limiter.tls"), "{err}");
    // A missing one too.
    let missing = dir.path().join("missing.pem");
    cfg.limiter.tls.as_mut().unwrap().ca = Some(missing.clone());
    let err = mx_agent::agent::Agent::start(&cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains(&format!("cannot read {}", missing.display())),
        "{err}"
    );
}
