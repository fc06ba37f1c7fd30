//! End to end with real Postfix: two private Postfix MX instances, each with an
//! mx-agent milter, sharing one limiter on one real redis-server; SMTP from many
//! 127.x.y.z source addresses.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mx_agent::agent::Agent;
use mxlimit_core::policy::reload::PolicyHandle;
use testkit::postfix::{Postfix, PostfixOptions};
use testkit::smtp::{Reply, Smtp};
use testkit::{Limiter, RedisServer};

/// The cluster: Redis, one limiter, two agents and two Postfix instances.
pub struct Cluster {
    pub redis: RedisServer,
    pub limiter: Option<Limiter>,
    pub agents: Vec<Agent>,
    pub mx: Vec<Postfix>,
}

pub async fn cluster(toml: &str, access: &str, n: usize) -> Cluster {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    let limiter = Limiter::start(
        store,
        Arc::new(PolicyHandle::fixed(testkit::policy(toml, access))),
    )
    .await;
    let mut agents = Vec::new();
    let mut mx = Vec::new();
    for i in 1..=n {
        let mut cfg = config(&format!("mx{i}"), &[limiter.addr]);
        cfg.limiter.deadline = mxlimit_core::policy::duration::Span::millis(50);
        cfg.policy.listen.clear();
        cfg.socketmap.listen.clear();
        let a = agent(&cfg).await;
        let milter = format!("inet:{}", tcp(&a.milter[0]));
        mx.push(Postfix::start(
            &format!("mx{i}"),
            &PostfixOptions {
                milter: Some(milter),
                mailboxes: vec!["alice@mx.test".into()],
                ipv6: true,
                ..Default::default()
            },
        ));
        agents.push(a);
    }
    Cluster {
        redis,
        limiter: Some(limiter),
        agents,
        mx,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A session up to RCPT: the replies to the greeting, EHLO, MAIL and each RCPT, and the
/// open connection (if the server did not close it).
pub async fn rcpts(
    server: SocketAddr,
    from_ip: &str,
    rcpts: &[&str],
) -> (Vec<Reply>, Option<Smtp>) {
    let (mut s, greeting) = Smtp::connect(ip(from_ip), server)
        .await
        .expect("TCP connect");
    let mut out = vec![greeting];
    if out[0].code != 220 {
        return (out, None);
    }
    for cmd in [
        "EHLO client.example".to_string(),
        "MAIL FROM:<sender@example.org>".to_string(),
    ]
    .into_iter()
    .chain(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")))
    {
        let r = s.cmd(&cmd).await.expect("SMTP command");
        let stop = r.code == 421 || r.code == 0;
        out.push(r);
        if stop {
            return (out, None);
        }
    }
    (out, Some(s))
}

/// The first reply of a session that is not a success, if any (greeting, EHLO, MAIL).
pub async fn refused_at_connect(server: SocketAddr, from_ip: &str) -> Option<Reply> {
    let (replies, _) = rcpts(server, from_ip, &[]).await;
    replies.into_iter().find(|r| r.code >= 400 || r.code == 0)
}

const ATTACK_POLICY: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 100\nblock_after = 100\nnetwork_tarpit_after = 3\nnetwork_block_after = 6\n\
tarpit_delay = \"700ms\"\nblock_for = \"1h\"\n[envelope]\nbad_rcpt_throttle = 0\n";

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dictionary_attack_over_two_postfix_mx_is_tarpitted_then_banned_on_both() {
    let c = cluster(ATTACK_POLICY, "", 2).await;
    // A legitimate sender keeps delivering throughout.
    let legit = |n: usize| {
        let server = c.mx[n % 2].addr();
        async move {
            let (replies, s) = rcpts(server, "127.68.0.1", &["alice@mx.test"]).await;
            let mut s = s.expect("legitimate session open");
            let r = s
                .message("sender@example.org", "alice@mx.test")
                .await
                .unwrap();
            (replies, r)
        }
    };
    // One unknown user from each of 7 addresses of 127.66.0.0/24, alternating MX hosts.
    let mut bad = Vec::new();
    let mut last_session = None;
    for i in 0..7 {
        let server = c.mx[i % 2].addr();
        let (replies, s) = rcpts(
            server,
            &format!("127.66.0.{}", i + 1),
            &[&format!("nobody{i}@mx.test")],
        )
        .await;
        assert_eq!(
            replies[..3].iter().map(|r| r.code).collect::<Vec<_>>(),
            [220, 250, 250],
            "{replies:?}"
        );
        bad.push(replies[3].clone());
        last_session = s;
        let (lr, msg) = legit(i).await;
        assert!(
            lr.iter().all(|r| r.code < 300) && msg.code == 250,
            "legitimate mail refused: {lr:?} {msg:?}"
        );
        assert!(
            lr.iter().all(|r| r.took < Duration::from_millis(700)),
            "legitimate mail delayed: {lr:?}"
        );
    }
    // Every bad RCPT gets Postfix's own 550 (Postfix keeps its reply for a recipient
    // it rejected); past network_tarpit_after (3) the reply waits tarpit_delay.
    assert!(bad.iter().all(|r| r.code == 550), "{bad:?}");
    assert!(
        bad[..3].iter().all(|r| r.took < Duration::from_millis(700)),
        "{bad:?}"
    );
    assert!(
        bad[3..6]
            .iter()
            .all(|r| r.took >= Duration::from_millis(700)),
        "tarpit: {bad:?}"
    );
    // The 7th (past network_block_after, 6) bans the network: the session that made it
    // is closed with 421 at its next command.
    let mut s = last_session.expect("the 7th session is still open");
    let r = s.cmd("RCPT TO:<alice@mx.test>").await.unwrap();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(
        r.text
            .contains("Too many invalid recipients or protocol errors from your network"),
        "{}",
        r.text
    );
    // Banned on BOTH MX hosts, for every address of the network, at connect.
    for (n, from) in [
        (0, "127.66.0.1"),
        (1, "127.66.0.200"),
        (0, "127.66.0.201"),
        (1, "127.66.0.7"),
    ] {
        let r = refused_at_connect(c.mx[n].addr(), from)
            .await
            .expect("refused");
        assert_eq!(r.code, 421, "mx{} {from}: {r:?}", n + 1);
    }
    let (lr, msg) = legit(7).await;
    assert!(
        lr.iter().all(|r| r.code < 300) && msg.code == 250,
        "{lr:?} {msg:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_conn_holds_across_two_postfix_mx_and_frees_on_disconnect() {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 2\nnetwork = 0\n";
    let c = cluster(toml, "", 2).await;
    let from = "127.67.0.1";
    let (r1, s1) = rcpts(c.mx[0].addr(), from, &[]).await;
    let (r2, _s2) = rcpts(c.mx[1].addr(), from, &[]).await;
    assert!(r1.iter().chain(&r2).all(|r| r.code < 300), "{r1:?} {r2:?}");
    // A third concurrent session, on either MX, is refused.
    // (Postfix answers a milter's refusal at connect with its own text.)
    let r = refused_at_connect(c.mx[0].addr(), from)
        .await
        .expect("third session refused");
    assert_eq!(r.code, 421, "{r:?}");
    // Its log has the milter's reason. Postfix logs through postlogd, which may write
    // the line after the client has its reply: wait for it, within a bound.
    let want =
        "milter-reject: CONNECT from unknown[127.67.0.1]: 421 4.3.2 Too many open connections.";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c.mx[0].log().contains(want) {
        assert!(std::time::Instant::now() < deadline, "{}", c.mx[0].log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another address is not affected.
    assert_eq!(
        refused_at_connect(c.mx[0].addr(), "127.67.0.2")
            .await
            .map(|r| r.code),
        None
    );
    // The first session ends: its lease is freed (Postfix tells the milter on close).
    let mut s1 = s1.unwrap();
    assert_eq!(s1.cmd("QUIT").await.unwrap().code, 221);
    drop(s1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (r, s) = rcpts(c.mx[1].addr(), from, &[]).await;
        if r.iter().all(|r| r.code < 300) {
            drop(s);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was never freed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_keeps_flowing_when_the_limiter_dies_and_each_step_gains_at_most_the_deadline() {
    let mut c = cluster("", "", 2).await;
    let deadline = Duration::from_millis(50);
    // Generous for Postfix and the milter themselves; the deadline is what is bounded.
    let bound = deadline + Duration::from_millis(450);
    for k in 0..8 {
        if k == 3 {
            c.limiter.take().unwrap().stop().await;
        }
        let from = format!("127.69.0.{}", k + 1);
        let (replies, s) = rcpts(c.mx[k % 2].addr(), &from, &["alice@mx.test"]).await;
        let mut s = s.unwrap_or_else(|| panic!("session {k} refused: {replies:?}"));
        let msg = s
            .message("sender@example.org", "alice@mx.test")
            .await
            .unwrap();
        assert!(
            replies.iter().all(|r| r.code < 300) && msg.code == 250,
            "message {k}: {replies:?} {msg:?}"
        );
        for r in &replies {
            assert!(
                r.took < bound,
                "message {k}: a step took {:?}: {r:?}",
                r.took
            );
        }
    }
    let fallbacks: u64 = c
        .agents
        .iter()
        .map(|a| {
            a.limiter
                .stats
                .fallbacks
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(
        fallbacks >= 5,
        "the agents decided locally {fallbacks} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_keeps_flowing_when_the_limiter_hangs_and_each_step_gains_at_most_the_deadline() {
    let mut c = cluster("", "", 2).await;
    let deadline = Duration::from_millis(50);
    let mut slowest_before = Duration::ZERO;
    for k in 0..10 {
        if k == 3 {
            // The limiter is replaced by a process that accepts connections and never
            // answers: every call now waits for its deadline, the worst case.
            let lim = c.limiter.take().unwrap();
            let at = lim.addr;
            lim.stop().await;
            let hole = tokio::net::TcpListener::bind(at).await.unwrap();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = hole.accept().await {
                    held.push(s);
                }
            });
        }
        let from = format!("127.73.0.{}", k + 1);
        let (replies, s) = rcpts(c.mx[k % 2].addr(), &from, &["alice@mx.test"]).await;
        let mut s = s.unwrap_or_else(|| panic!("session {k} refused: {replies:?}"));
        let msg = s
            .message("sender@example.org", "alice@mx.test")
            .await
            .unwrap();
        assert!(
            replies.iter().all(|r| r.code < 300) && msg.code == 250,
            "message {k}: {replies:?} {msg:?}"
        );
        let slowest = replies.iter().map(|r| r.took).max().unwrap();
        if k < 3 {
            slowest_before = slowest_before.max(slowest);
        } else {
            // What the agent may add: the deadline (plus scheduling on a busy machine).
            let bound = slowest_before + deadline + Duration::from_millis(150);
            assert!(
                slowest < bound,
                "message {k}: a step took {slowest:?}, more than {bound:?}: {replies:?}"
            );
        }
    }
}

/// What docs/MTA.md's Postfix wiring rests on, against real Postfix with nothing
/// listening where the agent should be: a socketmap in the restrictions tempfails
/// every RCPT; the policy service with default_action=DUNNO lets mail through, at a
/// cost of 1 s per check unless try_limit=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_with_its_agent_gone_socketmap_tempfails_policy_dunno_passes() {
    let dead = testkit::free_port();
    let with = |restriction: String| {
        Postfix::start(
            "mx9",
            &PostfixOptions {
                mailboxes: vec!["alice@mx.test".into()],
                main_cf: vec![format!("smtpd_recipient_restrictions = {restriction}")],
                ..Default::default()
            },
        )
    };
    let rcpt = async |pf: &Postfix| {
        let (replies, _) = rcpts(pf.addr(), "127.74.0.1", &["alice@mx.test"]).await;
        replies[3].clone()
    };
    let pf = with(format!(
        "check_client_access socketmap:inet:127.0.0.1:{dead}:mxlimit"
    ));
    let r = rcpt(&pf).await;
    assert!(
        r.code == 451 && r.text.contains("4.3.5") && r.text.contains("Server configuration error"),
        "{r:?}"
    );
    drop(pf);
    let pf = with(format!(
        "check_policy_service {{ inet:127.0.0.1:{dead}, default_action=DUNNO }}"
    ));
    let r = rcpt(&pf).await;
    assert!(r.code == 250 && r.took >= Duration::from_secs(1), "{r:?}");
    drop(pf);
    let pf = with(format!(
        "check_policy_service {{ inet:127.0.0.1:{dead}, default_action=DUNNO, try_limit=1, timeout=10s }}"
    ));
    let r = rcpt(&pf).await;
    assert!(r.code == 250 && r.took < Duration::from_secs(1), "{r:?}");
}

/// Through real Postfix, from IPv4 and IPv6: a source over its ClientRate is refused by
/// the limiter once per MX; every reconnect after that is refused by that MX's agent
/// from its hold, without a limiter call, with Postfix's same 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_refused_source_reconnecting_costs_its_mx_no_limiter_call_ipv4_and_ipv6() {
    testkit::ipv6::route_on_lo("2001:db8:68::".parse().unwrap());
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 1\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let c = cluster(toml, "", 2).await;
    let held = |n: usize| {
        c.agents[n]
            .limiter
            .stats
            .held
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for (from, v6) in [("127.68.0.1", false), ("2001:db8:68::1", true)] {
        let at = |n: usize| if v6 { c.mx[n].addr6() } else { c.mx[n].addr() };
        // Admitted once, and kept open.
        let (r, _open) = rcpts(at(0), from, &[]).await;
        assert!(r.iter().all(|r| r.code < 300), "{from}: {r:?}");
        for n in [0, 1] {
            let before = held(n);
            // The limiter refuses (on mx2 from its own hold: the agent asks it) ...
            let first = refused_at_connect(at(n), from).await.expect("refused");
            assert_eq!(first.code, 421, "{from} at mx{}: {first:?}", n + 1);
            assert_eq!(held(n), before, "{from} at mx{}: asked the limiter", n + 1);
            // ... and the agent holds it: the same reply, no call.
            for _ in 0..3 {
                let again = refused_at_connect(at(n), from).await.expect("refused");
                assert_eq!(again.code, 421, "{from}: {again:?}");
            }
            assert_eq!(held(n), before + 3, "{from} at mx{}: held", n + 1);
        }
    }
}
