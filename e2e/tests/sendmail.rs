//! End to end with real sendmail (and Postfix alongside): the attack through sendmail
//! with the milter; the ban enforced by sendmail's own access map through the
//! socketmap, and by Postfix through its policy service and socketmap.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_core::policy::duration::Span;
use mxlimit_core::policy::reload::PolicyHandle;
use testkit::postfix::{Postfix, PostfixOptions};
use testkit::sendmail::{Sendmail, SendmailOptions};
use testkit::smtp::{Reply, Smtp};
use testkit::{Limiter, RedisServer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn limiter_on_redis(redis: &RedisServer, toml: &str) -> Limiter {
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    Limiter::start(
        store,
        Arc::new(PolicyHandle::fixed(testkit::policy(toml, ""))),
    )
    .await
}

/// Greeting, EHLO, MAIL and the RCPTs; stops at a 421 or a closed connection.
async fn session(server: SocketAddr, from: &str, rcpts: &[&str]) -> (Vec<Reply>, Option<Smtp>) {
    let (mut s, greeting) = Smtp::connect(ip(from), server).await.expect("TCP connect");
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

fn first_refusal(replies: &[Reply]) -> Option<&Reply> {
    replies.iter().find(|r| r.code >= 400 || r.code == 0)
}

/// One unknown user from each of 5 addresses of one network through `server`, as
/// [`ATTACK`] limits it: the first two answered at once, the 3rd and 4th tarpitted, the
/// 5th bans the network (sendmail closes that session on the milter's 421, at once or
/// at the next command).
async fn five_unknown_users(server: SocketAddr, source: impl Fn(usize) -> String) {
    let mut bad = Vec::new();
    let mut last = None;
    for i in 0..5 {
        let (r, s) = session(server, &source(i), &[&format!("nobody{i}@mx.test")]).await;
        assert_eq!(
            r[..3].iter().map(|r| r.code).collect::<Vec<_>>(),
            [220, 250, 250],
            "{r:?}"
        );
        bad.push(r[3].clone());
        last = s;
    }
    assert!(
        bad.iter()
            .all(|r| r.code == 550 && r.text.contains("User unknown")),
        "{bad:?}"
    );
    assert!(
        bad[..2].iter().all(|r| r.took < Duration::from_millis(600)),
        "{bad:?}"
    );
    assert!(
        bad[2..4]
            .iter()
            .all(|r| r.took >= Duration::from_millis(600)),
        "tarpit: {bad:?}"
    );
    let mut s = last.expect("open");
    let next = s.cmd("RCPT TO:<root@mx.test>").await.unwrap();
    assert!(
        next.code == 421 || next.code == 0,
        "the session goes on: {next:?}"
    );
}

const ATTACK: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 100\nblock_after = 100\nnetwork_tarpit_after = 2\nnetwork_block_after = 4\n\
tarpit_delay = \"600ms\"\nblock_for = \"1h\"\n[envelope]\nbad_rcpt_throttle = 0\n";

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dictionary_attack_through_sendmail_is_banned_on_sendmail_and_postfix() {
    let redis = RedisServer::start();
    let lim = limiter_on_redis(&redis, ATTACK).await;
    let mut cfg = config("mx3", &[lim.addr]);
    cfg.limiter.deadline = Span::millis(100);
    let a3 = agent(&cfg).await;
    let sm = Sendmail::start(
        "mx3",
        &SendmailOptions {
            milter: Some(format!("inet:{}@127.0.0.1", tcp(&a3.milter[0]).port())),
            socketmap: Some(format!("inet:{}@127.0.0.1", tcp(&a3.socketmap[0]).port())),
            ..Default::default()
        },
    );
    let mut cfg = config("mx4", &[lim.addr]);
    cfg.limiter.deadline = Span::millis(100);
    let a4 = agent(&cfg).await;
    let pf = Postfix::start(
        "mx4",
        &PostfixOptions {
            policy: Some(format!("inet:{}", tcp(&a4.policy[0]))),
            socketmap: Some(format!("inet:{}", tcp(&a4.socketmap[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ..Default::default()
        },
    );

    // A legitimate sender first: sendmail delivers to root@mx.test.
    let (r, s) = session(sm.addr(), "127.71.0.1", &["root@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
    assert_eq!(
        s.unwrap()
            .message("sender@example.org", "root@mx.test")
            .await
            .unwrap()
            .code,
        250
    );

    // The attack: unknown users from 5 addresses of 127.70.0.0/24 through sendmail.
    five_unknown_users(sm.addr(), |i| format!("127.70.0.{}", i + 1)).await;

    // sendmail refuses the whole network at connect ...
    let (r, _) = session(sm.addr(), "127.70.0.99", &[]).await;
    let refusal = first_refusal(&r).expect("refused").clone();
    assert_eq!(refusal.code, 421, "{r:?}");
    assert!(
        refusal.text.contains("Too many invalid recipients"),
        "{r:?}"
    );
    // ... and so does a sendmail with no milter at all: its own access map asks the
    // socketmap.
    let bare = Sendmail::start(
        "mx6",
        &SendmailOptions {
            milter: None,
            socketmap: Some(format!("inet:{}@127.0.0.1", tcp(&a3.socketmap[0]).port())),
            ..Default::default()
        },
    );
    let (r, _) = session(bare.addr(), "127.70.0.97", &[]).await;
    let refusal = first_refusal(&r)
        .expect("refused by the access map")
        .clone();
    assert_eq!(refusal.code, 421, "{r:?}");
    assert!(
        refusal
            .text
            .contains("Too many invalid recipients or protocol errors from your network"),
        "{r:?}"
    );
    let (r, _) = session(bare.addr(), "127.71.0.1", &["root@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
    // So does Postfix on another host, with its socketmap (our text) ...
    let (r, _) = session(pf.addr(), "127.70.0.98", &[]).await;
    let refusal = first_refusal(&r).expect("refused").clone();
    assert_eq!(refusal.code, 421, "{r:?}");
    assert!(
        refusal
            .text
            .contains("Too many invalid recipients or protocol errors from your network"),
        "{r:?}"
    );
    // ... while the legitimate sender still gets through both.
    let (r, s) = session(pf.addr(), "127.71.0.1", &["alice@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
    assert_eq!(
        s.unwrap()
            .message("sender@example.org", "alice@mx.test")
            .await
            .unwrap()
            .code,
        250
    );
    let (r, _) = session(sm.addr(), "127.71.0.1", &["root@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_policy_delegation_enforces_client_rate_and_max_rcpts() {
    let redis = RedisServer::start();
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [envelope]\nmax_rcpts_per_message = 2\n";
    let lim = limiter_on_redis(&redis, toml).await;
    let a = agent(&config("mx5", &[lim.addr])).await;
    let pf = Postfix::start(
        "mx5",
        &PostfixOptions {
            policy: Some(format!("inet:{}", tcp(&a.policy[0]))),
            mailboxes: vec![
                "alice@mx.test".into(),
                "bob@mx.test".into(),
                "carol@mx.test".into(),
            ],
            ..Default::default()
        },
    );
    let (r, _) = session(
        pf.addr(),
        "127.72.0.1",
        &["alice@mx.test", "bob@mx.test", "carol@mx.test"],
    )
    .await;
    assert_eq!(
        r.iter().map(|r| r.code).collect::<Vec<_>>(),
        [220, 250, 250, 250, 250, 452],
        "{r:?}"
    );
    assert!(
        r[5].text.contains("4.5.3") && r[5].text.contains("Too many recipients"),
        "{r:?}"
    );
    let (r, _) = session(pf.addr(), "127.72.0.1", &[]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
    // The third connection of the address within the hour: refused at connect, with
    // sendmail's text (Postfix keeps a policy service's text, with its own prefix).
    let (r, _) = session(pf.addr(), "127.72.0.1", &[]).await;
    let refusal = first_refusal(&r).expect("refused");
    assert_eq!(refusal.code, 421, "{r:?}");
    assert!(
        refusal.text.contains("4.3.2") && refusal.text.contains("Connection rate limit exceeded."),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_dictionary_attack_through_sendmail_is_tarpitted_then_banned() {
    // sendmail names IPv6 clients `IPv6:2001:db8:…` (all groups written out) in the
    // milter's connect info; every address below must reach the limiter as itself.
    testkit::ipv6::route_on_lo("2001:db8:66::".parse().unwrap());
    testkit::ipv6::route_on_lo("2001:db8:67::".parse().unwrap());
    let redis = RedisServer::start();
    let lim = limiter_on_redis(&redis, ATTACK).await;
    let mut cfg = config("mx3", &[lim.addr]);
    cfg.limiter.deadline = Span::millis(100);
    let a = agent(&cfg).await;
    let sm = Sendmail::start(
        "mx3",
        &SendmailOptions {
            milter: Some(format!("inet:{}@127.0.0.1", tcp(&a.milter[0]).port())),
            socketmap: Some(format!("inet:{}@127.0.0.1", tcp(&a.socketmap[0]).port())),
            ipv6: true,
            ..Default::default()
        },
    );
    let legit = "2001:db8:67::1";
    let (r, _) = session(sm.addr6(), legit, &["root@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");

    // Unknown users from 5 addresses of 2001:db8:66::/64.
    five_unknown_users(sm.addr6(), |i| format!("2001:db8:66::{:x}", 0x100 + i)).await;
    // The whole /64 is refused at connect, the legitimate /64 is not.
    let (r, _) = session(sm.addr6(), "2001:db8:66::ffff:1", &[]).await;
    let refusal = first_refusal(&r).expect("refused").clone();
    assert_eq!(refusal.code, 421, "{r:?}");
    assert!(
        refusal.text.contains("Too many invalid recipients"),
        "{r:?}"
    );
    let (r, _) = session(sm.addr6(), legit, &["root@mx.test"]).await;
    assert!(first_refusal(&r).is_none(), "{r:?}");
}
