//! Host and domain rules against a real DNS server (dnsmasq): the PTR name counts only
//! when it resolves back to the address; lookups are cached, happen only when name rules
//! exist, and never stall a decision.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use mxlimit_proto::v1::Action;

use support::*;

const ACCESS: &str = "ClientRate:67.92.16\t2\nClientRate:customerdomain.com\t0\n";

fn dns_policy(server: &str, deadline: &str) -> String {
    format!(
        "[client_rate]\nwindow = \"1h\"\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
         [dns]\nservers = [\"{server}\"]\ndeadline = \"{deadline}\"\ntimeout = \"5s\"\n"
    )
}

fn records() -> [&'static str; 2] {
    [
        // 67.92.16.9 <-> mx.customerdomain.com: confirmed.
        "--host-record=mx.customerdomain.com,67.92.16.9",
        // 67.92.16.10 claims a name that does not resolve back: not confirmed.
        "--ptr-record=10.16.92.67.in-addr.arpa,liar.customerdomain.com",
    ]
}

async fn limiter(
    toml: &str,
    access: &str,
) -> (
    Limiter,
    mxlimit_proto::v1::limiter_client::LimiterClient<tonic::transport::Channel>,
) {
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let l = Limiter::start(store, Arc::new(PolicyHandle::fixed(policy(toml, access)))).await;
    let c = l.client().await;
    (l, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_confirmed_name_matches_and_an_unconfirmed_one_does_not() {
    let dns = DnsServer::start(&records());
    let (_l, mut c) = limiter(&dns_policy(&dns.addr(), "1s"), ACCESS).await;
    for i in 0..5 {
        let v = connect(&mut c, "mx1", &format!("ok{i}"), "67.92.16.9").await;
        assert_eq!(
            (action(&v), v.rule.as_str()),
            (Action::Accept, "ClientRate:customerdomain.com"),
            "{i}"
        );
    }
    let got: Vec<Action> = [
        connect(&mut c, "mx1", "l1", "67.92.16.10").await,
        connect(&mut c, "mx1", "l2", "67.92.16.10").await,
        connect(&mut c, "mx1", "l3", "67.92.16.10").await,
    ]
    .iter()
    .map(action)
    .collect();
    assert_eq!(
        got,
        [Action::Accept, Action::Accept, Action::Disconnect],
        "liar.customerdomain.com is not confirmed"
    );
    // Five sessions of 67.92.16.9, one lookup: the name is cached; so is a failure.
    assert_eq!(dns.queries("9.16.92.67.in-addr.arpa"), 1, "{}", dns.log());
    assert_eq!(dns.queries("10.16.92.67.in-addr.arpa"), 1, "{}", dns.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_looked_up_only_when_name_rules_exist() {
    let dns = DnsServer::start(&records());
    let (_l, mut c) = limiter(&dns_policy(&dns.addr(), "1s"), "ClientRate:67.92.16\t2\n").await;
    for i in 0..3 {
        connect(&mut c, "mx1", &format!("s{i}"), "67.92.16.9").await;
    }
    assert_eq!(dns.queries("9.16.92.67.in-addr.arpa"), 0);
    // A name the MTA sends is used as is, without a lookup.
    let (_l2, mut c2) = limiter(&dns_policy(&dns.addr(), "1s"), ACCESS).await;
    let mut req = connect_req("mx1", "n", "67.92.16.99");
    req.client_name = "relay.customerdomain.com".into();
    let v = c2.connect(req).await.unwrap().into_inner().verdict.unwrap();
    assert_eq!(v.rule, "ClientRate:customerdomain.com");
    assert_eq!(dns.queries("99.16.92.67.in-addr.arpa"), 0);
}

/// A UDP relay that holds every query for `delay` before passing it to `upstream`.
async fn slow_relay(upstream: String, delay: Duration) -> String {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let query = buf[..n].to_vec();
            let (sock, upstream) = (sock.clone(), upstream.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                up.send_to(&query, &upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                if let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_secs(5), up.recv(&mut reply)).await
                {
                    let _ = sock.send_to(&reply[..m], from).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dns_never_stalls_a_decision_and_its_answer_serves_the_next_session() {
    let dns = DnsServer::start(&records());
    let relay = slow_relay(dns.addr(), Duration::from_millis(400)).await;
    let (_l, mut c) = limiter(&dns_policy(&relay, "50ms"), ACCESS).await;
    let started = Instant::now();
    let v = connect(&mut c, "mx1", "first", "67.92.16.9").await;
    let took = started.elapsed();
    // Past the 50 ms deadline the decision goes on without a name: the address rule.
    assert_eq!(v.rule, "ClientRate:67.92.16");
    assert!(
        took < Duration::from_millis(400),
        "the decision waited {took:?} for a DNS answer that takes 800 ms (two queries, 400 ms each)"
    );
    // The lookup goes on in the background; a later session of the client gets the name.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        let v = connect(&mut c, "mx1", &format!("later{i}"), "67.92.16.9").await;
        disconnect(&mut c, "mx1", &format!("later{i}"), "67.92.16.9").await;
        if v.rule == "ClientRate:customerdomain.com" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background lookup never filled the cache"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dns_server_means_no_name() {
    // A port where nothing answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (_l, mut c) = limiter(&dns_policy(&addr, "50ms"), ACCESS).await;
    let started = Instant::now();
    let got: Vec<Action> = [
        connect(&mut c, "mx1", "a", "67.92.16.9").await,
        connect(&mut c, "mx1", "b", "67.92.16.9").await,
        connect(&mut c, "mx1", "c", "67.92.16.9").await,
    ]
    .iter()
    .map(action)
    .collect();
    assert_eq!(got, [Action::Accept, Action::Accept, Action::Disconnect]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "decisions waited on a dead DNS server"
    );
}
