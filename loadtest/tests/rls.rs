//! `bench --rls` against an Envoy rate limit service written here: what each request
//! carries (the domain, one descriptor with the address and its /24, one hit), and that
//! the report counts every answer the server gave, OK, OVER_LIMIT and errors apart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadtest::bench::rls::proto::rate_limit_response::Code;
use loadtest::bench::rls::proto::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use loadtest::bench::rls::proto::{RateLimitRequest, RateLimitResponse};
use loadtest::bench::{Api, BenchOptions, run};
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_loadtest");

/// Records every request and answers by the client address's last octet: a multiple of
/// `over_every` is over the limit, of `fail_every` an error (UNAVAILABLE), else OK.
#[derive(Clone, Default)]
struct Rls {
    over_every: Option<u8>,
    fail_every: Option<u8>,
    seen: Arc<Mutex<Vec<RateLimitRequest>>>,
    /// What it answered: "ok", "over_limit", "error".
    answered: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let r = request.into_inner();
        let last = r
            .descriptors
            .first()
            .and_then(|d| d.entries.first())
            .and_then(|e| e.value.parse::<Ipv4Addr>().ok())
            .map_or(0, |ip| ip.octets()[3]);
        self.seen.lock().unwrap().push(r);
        let every = |n: Option<u8>| n.is_some_and(|n| last.is_multiple_of(n));
        let (name, answer) = if every(self.fail_every) {
            ("error", Err(Status::unavailable("test: fails this one")))
        } else if every(self.over_every) {
            ("over_limit", Ok(Code::OverLimit))
        } else {
            ("ok", Ok(Code::Ok))
        };
        *self.answered.lock().unwrap().entry(name).or_default() += 1;
        answer.map(|code| {
            Response::new(RateLimitResponse {
                overall_code: code as i32,
            })
        })
    }
}

impl Rls {
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(self.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(async move { server.await.expect("test RLS server") });
        addr
    }

    fn answered(&self, name: &str) -> u64 {
        self.answered
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// Every request is one admission of one source, as an Envoy would ask for it.
fn assert_one_admission_each(seen: &[RateLimitRequest], domain: &str) -> BTreeSet<String> {
    let mut networks = BTreeSet::new();
    for r in seen {
        assert_eq!((r.domain.as_str(), r.hits_addend), (domain, 1), "{r:?}");
        assert_eq!(r.descriptors.len(), 1, "{r:?}");
        let e = &r.descriptors[0].entries;
        assert_eq!(e.len(), 2, "{r:?}");
        assert_eq!(
            (e[0].key.as_str(), e[1].key.as_str()),
            ("client_ip", "client_net")
        );
        let ip: Ipv4Addr = e[0].value.parse().unwrap();
        let [a, b, c, d] = ip.octets();
        assert!(
            a == 10 && d >= 1,
            "the bench's sources are in 10.0.0.0/8: {r:?}"
        );
        assert_eq!(e[1].value, format!("{a}.{b}.{c}"), "client_net is the /24");
        networks.insert(e[1].value.clone());
    }
    networks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_one_descriptor_per_admission_and_counts_every_answer() {
    let server = Rls {
        over_every: Some(7),
        fail_every: Some(11),
        ..Rls::default()
    };
    let addr = server.serve().await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["bench", "--rls", "--target", &addr.to_string()])
            .args(["--duration", "1s", "--concurrency", "8", "--nodes", "2"])
            .args(["--networks", "40", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let seen = server.seen.lock().unwrap().clone();
    let networks = assert_one_admission_each(&seen, "mail");
    assert_eq!(
        networks.len(),
        40,
        "the addresses spread over --networks /24s"
    );
    let (ok, over, failed) = (
        server.answered("ok"),
        server.answered("over_limit"),
        server.answered("error"),
    );
    assert!(ok > 100 && over > 0 && failed > 0, "{ok} {over} {failed}");
    assert_eq!(seen.len() as u64, ok + over + failed);

    // One answered call is one session, one decision and one admission; an OVER_LIMIT
    // is an answer too, counted apart; a failed call is an error, not a decision.
    assert_eq!(r["api"], "rls", "{r}");
    assert_eq!(r["sessions"], ok + over, "{r}");
    assert_eq!(r["decisions"], ok + over, "{r}");
    assert_eq!(
        r["connect_verdicts"],
        serde_json::json!({ "ok": ok, "over_limit": over }),
        "{r}"
    );
    assert_eq!(
        r["errors"],
        serde_json::json!({ "Unavailable": failed }),
        "{r}"
    );
    let latency = r["latency"].as_object().unwrap();
    assert_eq!(
        latency.keys().collect::<Vec<_>>(),
        ["should_rate_limit"],
        "{r}"
    );
    assert_eq!(latency["should_rate_limit"]["count"], ok + over, "{r}");
    // One whole second, and what ended in it is no more than the total.
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{r}");
    let first = timeline[0]["decisions"].as_u64().unwrap();
    assert!(first > 0 && first <= ok + over, "{r}");
    assert_eq!(timeline[0]["sessions"], first, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_each_admission_once_in_the_domain_asked() {
    let server = Rls::default();
    let addr = server.serve().await;
    let channel = loadtest::lab::channel(addr).await.unwrap();
    let r = run(
        &[channel],
        &BenchOptions {
            nodes: 1,
            concurrency: 1,
            rate: Some(200.0),
            duration: Duration::from_secs(1),
            rcpts: 0,
            bad_share: 0.0,
            networks: 4,
            progress: false,
            release_every: None,
            api: Api::Rls {
                domain: "elsewhere".into(),
            },
        },
    )
    .await;
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    assert_eq!(assert_one_admission_each(&seen, "elsewhere").len(), 4);
    assert_eq!((r.sessions, r.decisions), (200, 200), "{r:?}");
    assert_eq!(r.connect_verdicts, BTreeMap::from([("ok".into(), 200)]));
    assert!(r.errors.is_empty(), "{r:?}");
    for h in ["should_rate_limit", "start lag"] {
        assert_eq!(r.latency[h].count, 200, "{h}: {r:?}");
    }
    assert!(r.text().contains("Envoy RLS, open loop, 200 sessions/s"));
}

#[test]
fn rls_needs_a_target_and_takes_no_recipients() {
    let fails = |args: &[&str], says: &str| {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    };
    fails(&["bench", "--rls"], "--target");
    fails(
        &["bench", "--rls", "--target", "127.0.0.1:9", "--rcpts", "1"],
        "no recipients",
    );
}
