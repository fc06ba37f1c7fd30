//! The Postfix policy service and the socketmap, driven over their wire protocols
//! against a real limiter (in memory) in this process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Policy {
    r: BufReader<TcpStream>,
}

impl Policy {
    async fn open(addr: std::net::SocketAddr) -> Policy {
        Policy {
            r: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// One request (attributes as Postfix sends them); the action answered.
    async fn ask(&mut self, attrs: &[(&str, &str)]) -> String {
        let mut req = String::new();
        for (k, v) in attrs {
            req.push_str(&format!("{k}={v}\n"));
        }
        req.push('\n');
        self.r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).await.unwrap();
        let mut blank = String::new();
        self.r.read_line(&mut blank).await.unwrap();
        assert_eq!(blank, "\n", "an answer ends with a blank line");
        line.trim_end()
            .strip_prefix("action=")
            .expect("action=")
            .to_string()
    }
}

fn req<'a>(state: &'a str, ip: &'a str, port: &'a str, rcpt: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("request", "smtpd_access_policy"),
        ("protocol_state", state),
        ("client_address", ip),
        ("client_port", port),
        ("client_name", "unknown"),
        ("instance", "1a2b.3c4d.1"),
        ("recipient", rcpt),
    ]
}

const LIMITS: &str = "[client_rate]\nwindow = \"1h\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 0\nblock_after = 1\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n[envelope]\nmax_rcpts_per_message = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_service_answers_connect_and_rcpt_stages_on_one_connection() {
    let lim = limiter(LIMITS, "Connect:203.0.113\tREJECT\n").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    // One connection, many requests (Postfix reuses it).
    assert_eq!(
        p.ask(&req("CONNECT", "10.1.0.1", "40001", "")).await,
        "DUNNO"
    );
    assert_eq!(
        p.ask(&req("RCPT", "10.1.0.1", "40001", "a@mx.test")).await,
        "DUNNO"
    );
    assert_eq!(
        p.ask(&req("RCPT", "10.1.0.1", "40001", "b@mx.test")).await,
        "DUNNO"
    );
    assert_eq!(
        p.ask(&req("RCPT", "10.1.0.1", "40001", "c@mx.test")).await,
        "452 4.5.3 Too many recipients"
    );
    // A second session of the address (another port): ClientRate 2 per hour.
    assert_eq!(
        p.ask(&req("CONNECT", "10.1.0.1", "40002", "")).await,
        "DUNNO"
    );
    assert_eq!(
        p.ask(&req("CONNECT", "10.1.0.1", "40003", "")).await,
        "421 4.3.2 Connection rate limit exceeded."
    );
    // The first request of a session may come at any stage (smtpd_delay_reject = yes).
    assert_eq!(
        p.ask(&req("RCPT", "203.0.113.7", "40004", "a@mx.test"))
            .await,
        "550 5.7.1 Access denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_service_survives_garbage_and_oversized_requests() {
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    // Lines without '=' and unknown attributes are ignored; no address: DUNNO.
    p.r.get_mut()
        .write_all(b"this is not a policy request\n\x00\xff\xfe\n\n")
        .await
        .unwrap();
    let mut line = String::new();
    p.r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "action=DUNNO\n");
    // A request past 64 KiB is answered DUNNO and the connection closed.
    let mut big = TcpStream::connect(tcp(&a.policy[0])).await.unwrap();
    let junk = format!("x={}\n", "y".repeat(70_000));
    let _ = big.write_all(junk.as_bytes()).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut rest))
        .await
        .expect("closed");
    // The service goes on.
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    assert_eq!(p.ask(&req("CONNECT", "10.1.1.1", "1", "")).await, "DUNNO");
}

async fn socketmap(addr: std::net::SocketAddr, requests: &[&str]) -> Vec<String> {
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut out = Vec::new();
    for r in requests {
        s.get_mut()
            .write_all(format!("{}:{r},", r.len()).as_bytes())
            .await
            .unwrap();
        out.push(
            String::from_utf8(
                mx_agent::adapters::socketmap::read_netstring(&mut s)
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketmap_answers_bans_in_each_mtas_syntax() {
    let lim = limiter(LIMITS, "Connect:203.0.113\tREJECT\n").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.socketmap[0]);
    // Ban 10.2.0.1 through the limiter: two bad recipients past block_after 1.
    lim.bad_rcpts("10.2.0.1", 2).await;
    let got = socketmap(
        addr,
        &[
            "mxlimit 10.2.0.1",
            "access Connect:10.2.0.1",
            "access connect:10.2.0.2",
            "mxlimit 203.0.113.9",
            "mxlimit mail.example.com",
            "access Connect:10.2.0",
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            "OK 421 4.7.1 Too many invalid recipients or protocol errors from your address; try again later.",
            "OK ERROR:4.7.1:421 Too many invalid recipients or protocol errors from your address; try again later.",
            "NOTFOUND ",
            "OK 550 5.7.1 Access denied",
            "NOTFOUND ",
            "NOTFOUND ",
        ]
    );
    // Lookups count nothing: ClientRate 2 is untouched.
    let mut c = lim.client().await;
    for i in 0..2 {
        let v = c
            .connect(mxlimit_proto::v1::ConnectRequest {
                node: "mx1".into(),
                session_id: format!("s{i}"),
                client_ip: "10.2.0.2".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        assert_eq!(v.reason, "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketmap_refuses_garbage_without_stopping() {
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.socketmap[0]);
    for garbage in [&b"hello"[..], b"99999999:", b"3:abcd", b"5:a b"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed")
            .unwrap();
        assert!(
            rest.is_empty() || rest.starts_with(b"4:PERM") || rest.ends_with(b","),
            "{rest:?}"
        );
    }
    assert_eq!(socketmap(addr, &["m nokey-no-space"]).await, ["NOTFOUND "]);
    assert_eq!(
        socketmap(addr, &["nospace"]).await,
        ["PERM expected \"name key\""]
    );
    let t = Instant::now();
    assert_eq!(socketmap(addr, &["m 10.3.0.1"]).await, ["NOTFOUND "]);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_listen_on_unix_sockets_and_replace_stale_ones() {
    let lim = limiter(LIMITS, "").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.sock");
    // A socket file left by a crash is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut cfg = config("mx1", &[lim.addr]);
    cfg.policy.listen = vec![format!("unix:{}", path.display())];
    let a = agent(&cfg).await;
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut r = BufReader::new(s);
    r.get_mut().write_all(b"request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=10.4.0.1\nclient_port=1\n\n").await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "action=DUNNO\n");
    drop(r);
    a.stop().await;
    assert!(
        !path.exists(),
        "the socket file is removed when the agent stops"
    );
}

/// Postfix never tells a policy service that a session ended: its lease must not be
/// renewed by the agent's heartbeats, only expire after its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sessions_leases_expire_by_their_ttl() {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let lim = limiter(toml, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    assert_eq!(p.ask(&req("CONNECT", "10.6.0.1", "1", "")).await, "DUNNO");
    assert_eq!(
        p.ask(&req("CONNECT", "10.6.0.1", "2", "")).await,
        "421 4.3.2 Too many open connections."
    );
    assert_eq!(
        a.limiter.live_sessions(),
        0,
        "policy sessions are not heartbeated"
    );
    // Heartbeats run every third of the TTL meanwhile; the lease still goes.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(p.ask(&req("CONNECT", "10.6.0.1", "3", "")).await, "DUNNO");
}

/// A client port is reused by a later session: a CONNECT request starts it afresh, so
/// it is counted, and an earlier session's refusal is not replayed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_client_port_is_a_new_session() {
    let toml = "[client_rate]\nwindow = \"1s\"\naddress = 1\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let lim = limiter(toml, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    assert_eq!(
        p.ask(&req("CONNECT", "10.7.0.1", "40001", "")).await,
        "DUNNO"
    );
    assert_eq!(
        p.ask(&req("CONNECT", "10.7.0.1", "40002", "")).await,
        "421 4.3.2 Connection rate limit exceeded."
    );
    // Port 40001 again, within the window: a new session, counted, so refused.
    assert_eq!(
        p.ask(&req("CONNECT", "10.7.0.1", "40001", "")).await,
        "421 4.3.2 Connection rate limit exceeded."
    );
    // Once the window has passed, port 40002 again gets in: its old refusal is gone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        p.ask(&req("CONNECT", "10.7.0.1", "40002", "")).await,
        "DUNNO"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bans_context_answers_refusals_only_and_counts_nothing() {
    // ClientRate 2 per address: were the ban check a Connect, the third request of
    // 10.2.0.1 would be refused.
    let lim = limiter(LIMITS, "Connect:203.0.113\tREJECT\n").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    let bans = |ip: &'static str, port: &'static str| {
        let mut r = req("RCPT", ip, port, "nobody@mx.test");
        r.push(("policy_context", "bans"));
        r
    };
    for port in ["40001", "40002", "40003", "40004"] {
        assert_eq!(p.ask(&bans("10.2.0.1", port)).await, "DUNNO");
    }
    assert!(
        p.ask(&bans("203.0.113.5", "40005"))
            .await
            .starts_with("550 5.7.1"),
        "an access refusal is answered"
    );
    // A ban made elsewhere (two rejected recipients: past block_after 1).
    lim.bad_rcpts("10.2.0.9", 2).await;
    let answer = p.ask(&bans("10.2.0.9", "40006")).await;
    assert!(answer.starts_with("421 4.7.1"), "{answer}");
    // No address: the milter decided that session; nothing to check here.
    assert_eq!(p.ask(&bans("unknown", "40007")).await, "DUNNO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_postfix_names_unknown_is_decided_by_the_fallback() {
    // The limiter admits everything; fail-closed, the agent tempfails the session
    // itself instead of answering DUNNO for want of an address.
    let lim = limiter("", "").await;
    let mut cfg = config("mx1", &[lim.addr]);
    cfg.fallback.mode = mx_agent::config::FailMode::Closed;
    let a = agent(&cfg).await;
    let mut p = Policy::open(tcp(&a.policy[0])).await;
    let answer = p.ask(&req("CONNECT", "unknown", "40001", "")).await;
    assert!(answer.starts_with("421 4.3.2"), "{answer}");
    // A known address still goes to the limiter, which admits it.
    assert_eq!(
        p.ask(&req("CONNECT", "10.3.0.1", "40002", "")).await,
        "DUNNO"
    );
}
