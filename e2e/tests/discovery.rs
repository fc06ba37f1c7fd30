//! Limiters found through DNS (a headless Service's A records): calls are balanced
//! over every address, and the set follows DNS as it changes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mxlimit_core::policy::duration::Span;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::MemoryStore;
use testkit::milter::{MilterClient, Reply};
use testkit::{DnsServer, Limiter};

/// A limiter on `ip:port` that refuses 10.50.0.0/24 (`refuse`) or not. Limiters share
/// their store, as in production (one Redis behind every limiter): a session's
/// release may reach another limiter than its Connect did.
async fn limiter_at(ip: &str, port: u16, refuse: bool, store: Arc<MemoryStore>) -> Limiter {
    let access = if refuse {
        "Connect:10.50.0\tREJECT\n"
    } else {
        ""
    };
    let policy = Arc::new(PolicyHandle::fixed(testkit::policy(
        "[client_rate]\naddress = 0\nnetwork = 0\n",
        access,
    )));
    Limiter::start_at(store, policy, format!("{ip}:{port}").parse().unwrap()).await
}

async fn verdict(milter: SocketAddr, i: u32) -> Reply {
    let mut c = MilterClient::open(milter).await.unwrap();
    c.connect(
        "unknown",
        format!("10.50.0.{}", 1 + i % 200).parse().unwrap(),
        &[],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_address_and_follow_dns_changes() {
    let port = testkit::free_port();
    let store = Arc::new(MemoryStore::new(Default::default()));
    let _a = limiter_at("127.0.0.1", port, true, store.clone()).await;
    let _b = limiter_at("127.0.0.2", port, false, store).await;
    let mut dns = DnsServer::start(&[
        "--host-record=limiters.test,127.0.0.1",
        "--host-record=limiters.test,127.0.0.2",
    ]);
    let mut cfg = config("mx1", &[]);
    cfg.limiter.endpoints.clear();
    cfg.limiter.dns = Some(format!("limiters.test:{port}"));
    cfg.limiter.dns_servers = vec![dns.addr()];
    cfg.limiter.resolve_every = Span::millis(200);
    cfg.limiter.deadline = Span::millis(500);
    let agent = agent(&cfg).await;
    let milter = tcp(&agent.milter[0]);

    // Both limiters answer: the refusing one and the accepting one.
    let (mut refused, mut accepted) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while refused == 0 || accepted == 0 {
        match verdict(milter, i).await {
            Reply::Code(c) if c.starts_with("550") => refused += 1,
            Reply::Continue => accepted += 1,
            other => panic!("{other:?}"),
        }
        i += 1;
        assert!(
            Instant::now() < deadline,
            "one limiter never answered: {refused} refused, {accepted} accepted"
        );
    }
    assert_eq!(
        agent
            .limiter
            .stats
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // DNS drops 127.0.0.1: soon only the accepting limiter answers.
    dns.restart(&["--host-record=limiters.test,127.0.0.2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut in_a_row = 0;
    while in_a_row < 30 {
        match verdict(milter, i).await {
            Reply::Continue => in_a_row += 1,
            _ => in_a_row = 0,
        }
        i += 1;
        assert!(
            Instant::now() < deadline,
            "the removed limiter is still asked"
        );
    }
}
