//! Exim (Debian's exim4-daemon-light 4.96) wired with the shipped ACLs
//! (`examples/exim4/mxlimit_acl.conf`): connect and RCPT decisions from mx-agent's
//! policy service over `${readsocket}`, unknown users counted, tarpit and bans
//! honoured, in one cluster with Postfix and sendmail; mail flows while the agent is
//! down; Exim's early talkers, read from its mainlog, ban on every MX.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use testkit::exim::{Exim, EximOptions};
use testkit::postfix::{Postfix, PostfixOptions};
use testkit::sendmail::{Sendmail, SendmailOptions};
use testkit::smtp::{Reply, Smtp};

/// Not the defaults: bans past 3 unknown users per address, a 400 ms tarpit past 1.
const POLICY: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 1\nnetwork_tarpit_after = 0\nblock_after = 3\nnetwork_block_after = 0\n\
tarpit_delay = \"400ms\"\nblock_for = \"1h\"\n[envelope]\nbad_rcpt_throttle = 0\n";

use common::smtp_session as session;

/// A message delivered end to end: the reply to its final dot.
async fn deliver(server: SocketAddr, from: &str, to: &str) -> Vec<Reply> {
    let (mut s, greeting) = Smtp::connect(from.parse().unwrap(), server)
        .await
        .expect("TCP connect");
    let mut replies = vec![greeting];
    for cmd in [
        "EHLO client.example".to_string(),
        "MAIL FROM:<a@client.example>".into(),
        format!("RCPT TO:<{to}>"),
    ] {
        replies.push(s.cmd(&cmd).await.unwrap());
    }
    replies.push(s.message("a@client.example", to).await.unwrap());
    let _ = s.cmd("QUIT").await;
    replies
}

struct Fleet {
    _dir: tempfile::TempDir,
    exim: Exim,
    postfix: Postfix,
    sendmail: Sendmail,
    agents: Vec<mx_agent::agent::Agent>,
}

/// Three MX hosts of one cluster: Exim with the shipped ACLs (its agent's policy
/// service, and its mainlog followed), Postfix and sendmail with their agents'
/// milters.
async fn fleet(limiter: SocketAddr, name: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let mainlog = dir.path().join("mainlog");
    let a1 = agent(&log_config(
        "mx1",
        &[limiter],
        std::slice::from_ref(&mainlog),
        &["policy"],
    ))
    .await;
    let exim = Exim::start(
        &format!("{name}1"),
        &EximOptions {
            policy: Some(format!("inet:{}", tcp(&a1.policy[0]))),
            mailboxes: vec!["alice".into()],
            ipv6: true,
            ..Default::default()
        },
    );
    // The follower waits for the link's target and reads it from its start.
    std::os::unix::fs::symlink(exim.mainlog_path(), &mainlog).unwrap();
    let a2 = agent(&milter_config("mx2", &[limiter])).await;
    let postfix = Postfix::start(
        &format!("{name}2"),
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a2.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ipv6: true,
            ..Default::default()
        },
    );
    let a3 = agent(&milter_config("mx3", &[limiter])).await;
    let sendmail = Sendmail::start(
        &format!("{name}3"),
        &SendmailOptions {
            milter: Some(format!("inet:{}@127.0.0.1", tcp(&a3.milter[0]).port())),
            ipv6: true,
            ..Default::default()
        },
    );
    Fleet {
        _dir: dir,
        exim,
        postfix,
        sendmail,
        agents: vec![a1, a2, a3],
    }
}

impl Fleet {
    /// The three MXes, for a client of this family.
    fn mxes(&self, v6: bool) -> [(SocketAddr, &'static str); 3] {
        if v6 {
            [
                (self.exim.addr6(), "Exim"),
                (self.postfix.addr6(), "Postfix"),
                (self.sendmail.addr6(), "sendmail"),
            ]
        } else {
            [
                (self.exim.addr(), "Exim"),
                (self.postfix.addr(), "Postfix"),
                (self.sendmail.addr(), "sendmail"),
            ]
        }
    }

    async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
    }
}

/// A dictionary attack on the Exim MX: each unknown user is counted by the shipped
/// RCPT ACL before Exim refuses it, past tarpit_after = 1 the refusals come late (the
/// tarpit), the fourth bans the source (block_after = 3) and the session's next RCPT
/// gets 421. The source is then refused at connect by Exim, Postfix and sendmail. The
/// other way round, a source banned for unknown users at Postfix is refused at
/// connect by Exim. IPv4 and IPv6; a legitimate sender delivers through Exim.
// Long on purpose: one attack whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_counts_tarpits_and_bans_with_postfix_and_sendmail() {
    for net in ["2001:db8:80::", "2001:db8:81::", "2001:db8:82::"] {
        testkit::ipv6::route_on_lo(net.parse().unwrap());
    }
    let limiter = limiter(POLICY, "").await;
    let f = fleet(limiter.addr, "ex").await;
    for (attacker, other, legit) in [
        ("127.0.80.1", "127.0.81.1", "127.0.82.5"),
        ("2001:db8:80::1", "2001:db8:81::1", "2001:db8:82::5"),
    ] {
        let v6 = attacker.contains(':');
        let mxes = f.mxes(v6);
        let (exim, postfix) = (mxes[0].0, mxes[1].0);
        let unknown: Vec<String> = (0..5).map(|i| format!("nobody{i}@mx.test")).collect();
        let r = session(exim, attacker, &unknown).await;
        let rcpts = &r[3..];
        assert_eq!(
            rcpts.iter().map(|r| r.code).collect::<Vec<_>>(),
            [550, 550, 550, 550, 421],
            "{attacker}: {r:?}\n{}",
            f.exim.log()
        );
        assert!(
            rcpts[0].text.contains("Unknown user"),
            "Exim's own reply: {r:?}"
        );
        // The tarpit: past the first, each refusal waited the agent's 400 ms, once
        // (the ACL asks twice about an unknown user).
        assert!(rcpts[0].took < Duration::from_millis(300), "{r:?}");
        for t in &rcpts[1..4] {
            assert!(t.took >= Duration::from_millis(400), "not tarpitted: {r:?}");
            assert!(
                t.took < Duration::from_millis(750),
                "tarpitted twice: {r:?}"
            );
        }
        assert!(
            rcpts[4]
                .text
                .contains("Too many invalid recipients or protocol errors"),
            "{r:?}"
        );
        for (mx, what) in mxes {
            until_refused(mx, attacker, what, || f.exim.log()).await;
        }

        // Banned at Postfix (its milter counts), refused at Exim's connect.
        let r = session(postfix, other, &unknown[..4]).await;
        assert!(r[3..].iter().all(|r| r.code == 550), "{other}: {r:?}");
        until_refused(exim, other, "Exim", || f.exim.log()).await;

        let r = deliver(exim, legit, "alice@mx.test").await;
        assert!(
            r.iter().all(|r| r.code < 400) && r.last().unwrap().code == 250,
            "{legit}: {r:?}\n{}",
            f.exim.log()
        );
    }
    // Never twice: the mainlog's copies of the eight refusals the ACL counted are
    // known to the agent and not sent again.
    let logs = &f.agents[0].logs;
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.duplicates.load(Ordering::Relaxed) < 8 {
        assert!(
            Instant::now() < deadline,
            "the log's copies never came: {logs:?}\n{}",
            f.exim.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(logs.reported.load(Ordering::Relaxed), 0, "{logs:?}");
    f.stop().await;
}

/// Exim's early talkers: a client that sends EHLO before the banner is dropped by
/// Exim (`smtp_enforce_sync`, on by default) with a synchronization error in its
/// mainlog; the agent following the log reports the offence, and the client is
/// refused at connect at Exim, Postfix and sendmail (pregreet's default: one bans
/// the address). IPv4 and IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_talker_at_exim_is_refused_on_every_mx() {
    testkit::ipv6::route_on_lo("2001:db8:84::".parse().unwrap());
    let limiter = limiter(POLICY, "").await;
    let f = fleet(limiter.addr, "exsync").await;
    for talker in ["127.0.84.1", "2001:db8:84::1"] {
        let mxes = f.mxes(talker.contains(':'));
        let before = session(mxes[1].0, talker, &[]).await;
        assert!(before.iter().all(|r| r.code < 400), "{before:?}");
        let (_s, greeting) =
            Smtp::connect_talking_first(talker.parse().unwrap(), mxes[0].0, "EHLO early.example")
                .await
                .unwrap();
        assert_ne!(
            greeting.code / 100,
            2,
            "Exim greeted an early talker: {greeting:?}"
        );
        drop(_s);
        for (mx, what) in mxes {
            until_refused(mx, talker, what, || f.exim.log()).await;
        }
    }
    assert!(
        f.exim
            .log()
            .contains("input sent without waiting for greeting"),
        "{}",
        f.exim.log()
    );
    f.stop().await;
}

/// Mail flows through Exim while its agent is down: the shipped ACLs' `${readsocket}`
/// fails at once on a closed port and yields DUNNO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_flows_through_exim_while_the_agent_is_down() {
    let limiter = limiter(POLICY, "").await;
    let mut cfg = config("mx1", &[limiter.addr]);
    cfg.milter.listen.clear();
    cfg.socketmap.listen.clear();
    let a = agent(&cfg).await;
    let policy = tcp(&a.policy[0]);
    let exim = Exim::start(
        "exdown",
        &EximOptions {
            policy: Some(format!("inet:{policy}")),
            mailboxes: vec!["alice".into()],
            ..Default::default()
        },
    );
    let r = deliver(exim.addr(), "127.0.83.1", "alice@mx.test").await;
    assert_eq!(r.last().unwrap().code, 250, "{r:?}");
    a.stop().await;
    assert!(
        std::net::TcpStream::connect(policy).is_err(),
        "the agent still listens"
    );
    let t = Instant::now();
    let r = deliver(exim.addr(), "127.0.83.1", "alice@mx.test").await;
    assert_eq!(r.last().unwrap().code, 250, "{r:?}\n{}", exim.log());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        t.elapsed()
    );
    // Unknown users are still refused, by Exim alone.
    let r = session(exim.addr(), "127.0.83.1", &["nobody@mx.test".to_string()]).await;
    assert_eq!(r.last().unwrap().code, 550, "{r:?}");
}

/// A wedged agent (its port accepts connections, nobody answers) costs each request
/// `MXLIMIT_TIMEOUT`, here 1s, and then mail flows: once at connect, once at an
/// accepted RCPT, twice at an unknown user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_flows_through_exim_past_a_wedged_agent() {
    // The kernel completes the handshakes of its backlog; nothing ever reads.
    let wedged = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let exim = Exim::start(
        "exwedged",
        &EximOptions {
            policy: Some(format!("inet:{}", wedged.local_addr().unwrap())),
            mailboxes: vec!["alice".into()],
            timeout: Some("1s".into()),
            ..Default::default()
        },
    );
    let r = deliver(exim.addr(), "127.0.83.2", "alice@mx.test").await;
    assert_eq!(r.last().unwrap().code, 250, "{r:?}\n{}", exim.log());
    let waited =
        |r: &Reply| r.took >= Duration::from_millis(900) && r.took < Duration::from_secs(3);
    assert!(waited(&r[0]), "connect: {r:?}");
    assert!(waited(&r[3]), "RCPT: {r:?}");
    let r = session(exim.addr(), "127.0.83.2", &["nobody@mx.test".to_string()]).await;
    let unknown = r.last().unwrap();
    assert_eq!(unknown.code, 550, "{r:?}");
    assert!(
        unknown.took >= Duration::from_millis(1900) && unknown.took < Duration::from_secs(5),
        "{r:?}"
    );
    drop(wedged);
}
