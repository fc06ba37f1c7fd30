//! The milter adapter driven over the milter protocol, as sendmail and Postfix speak
//! it, against a real limiter (in memory) in this process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::milter::{MilterClient, RCPT_REJ, Reply};

const LIMITS: &str = "[client_rate]\nwindow = \"1h\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 1\nblock_after = 3\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\ntarpit_delay = \"300ms\"\n\
[envelope]\nmax_rcpts_per_message = 2\nbad_rcpt_throttle = 0\ngreet_pause = \"0ms\"\n";

/// The limiter calls the agent has made so far.
fn limiter_calls(a: &mx_agent::agent::Agent) -> u64 {
    a.limiter
        .stats
        .calls
        .load(std::sync::atomic::Ordering::Relaxed)
}

async fn session(addr: std::net::SocketAddr, ip: &str) -> (MilterClient, Reply) {
    let mut c = MilterClient::open(addr).await.unwrap();
    let r = c
        .connect("unknown", ip.parse().unwrap(), &[])
        .await
        .unwrap();
    (c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_rejected_recipients_and_skips_the_message() {
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let c = MilterClient::open(tcp(&a.milter[0])).await.unwrap();
    assert_eq!(c.opts & RCPT_REJ, RCPT_REJ, "SMFIP_RCPT_REJ requested");
    assert_ne!(c.opts & 0x10, 0, "no body wanted (SMFIP_NOBODY)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_verdicts_become_replies_and_close_releases_the_lease() {
    let lim = limiter(LIMITS, "Connect:203.0.113\tREJECT\n").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.milter[0]);
    let (c1, r) = session(addr, "10.0.0.1").await;
    assert_eq!(r, Reply::Continue);
    // ClientConn 1: a second session of the address is refused while the first lives.
    let (_c2, r) = session(addr, "10.0.0.1").await;
    assert_eq!(
        r,
        Reply::Code("421 4.3.2 Too many open connections.".into())
    );
    // Close: the lease is released, the next session gets in (ClientRate allows 2).
    c1.quit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (c3, r) = session(addr, "10.0.0.1").await;
        if r == Reply::Continue {
            c3.quit().await.unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was never released: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_c4, r) = session(addr, "10.0.0.1").await;
    assert_eq!(
        r,
        Reply::Code("421 4.3.2 Connection rate limit exceeded.".into())
    );
    let (_c5, r) = session(addr, "203.0.113.9").await;
    assert_eq!(r, Reply::Code("550 5.7.1 Access denied".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_recipients_are_tarpitted_then_banned_and_the_session_closed() {
    let lim = limiter(
        &LIMITS.replace("max_rcpts_per_message = 2", "max_rcpts_per_message = 100"),
        "",
    )
    .await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let (mut c, _) = session(tcp(&a.milter[0]), "10.0.1.1").await;
    assert_eq!(c.mail("a@example.org").await.unwrap(), Reply::Continue);
    assert_eq!(
        c.rejected_rcpt("u1@mx.test").await.unwrap(),
        Reply::Continue
    );
    // Past tarpit_after (1) the reply waits tarpit_delay.
    let t = Instant::now();
    assert_eq!(
        c.rejected_rcpt("u2@mx.test").await.unwrap(),
        Reply::Continue
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "no tarpit: {:?}",
        t.elapsed()
    );
    // A tarpitted source waits on accepted recipients too.
    let t = Instant::now();
    assert_eq!(c.rcpt("alice@mx.test").await.unwrap(), Reply::Continue);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "no tarpit on a valid RCPT: {:?}",
        t.elapsed()
    );
    c.rejected_rcpt("u3@mx.test").await.unwrap();
    // Past block_after (3): banned, and the session is closed with 421.
    let r = c.rejected_rcpt("u4@mx.test").await.unwrap();
    assert_eq!(
        r,
        Reply::Code(
            "421 4.7.1 Too many invalid recipients or protocol errors from your address; try again later.".into()
        )
    );
    assert_eq!(
        c.data().await.unwrap().code(),
        Some(421),
        "every later command is refused"
    );
    // A new session of the banned address is refused at connect.
    let (_c2, r) = session(tcp(&a.milter[0]), "10.0.1.1").await;
    assert_eq!(r.code(), Some(421));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_limits_are_enforced_without_a_call() {
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let (mut c, _) = session(tcp(&a.milter[0]), "10.0.2.1").await;
    c.mail("a@example.org").await.unwrap();
    assert_eq!(c.rcpt("r1@mx.test").await.unwrap(), Reply::Continue);
    assert_eq!(c.rcpt("r2@mx.test").await.unwrap(), Reply::Continue);
    assert_eq!(
        c.rcpt("r3@mx.test").await.unwrap(),
        Reply::Code("452 4.5.3 Too many recipients".into())
    );
    // A new envelope starts counting afresh.
    c.mail("b@example.org").await.unwrap();
    assert_eq!(c.rcpt("r1@mx.test").await.unwrap(), Reply::Continue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greet_pause_delays_the_connect_reply() {
    let lim = limiter(
        "[envelope]\ngreet_pause = \"400ms\"\n",
        "GreetPause:10.0.3.2\t0\n",
    )
    .await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let t = Instant::now();
    let (_c, r) = session(tcp(&a.milter[0]), "10.0.3.1").await;
    assert_eq!(r, Reply::Continue);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    session(tcp(&a.milter[0]), "10.0.3.2").await;
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "GreetPause:10.0.3.2 0: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_are_capped_under_the_mta_timeout() {
    let lim = limiter("[bad_rcpt]\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_after = 0\nnetwork_block_after = 0\n\
                       [envelope]\nbad_rcpt_throttle = 1\nbad_rcpt_delay = \"30s\"\n", "").await;
    let mut cfg = config("mx1", &[lim.addr]);
    cfg.milter.max_delay = mxlimit_core::policy::duration::Span::millis(300);
    let a = agent(&cfg).await;
    let (mut c, _) = session(tcp(&a.milter[0]), "10.0.4.1").await;
    c.mail("a@example.org").await.unwrap();
    c.rejected_rcpt("u1@mx.test").await.unwrap();
    let t = Instant::now();
    assert_eq!(c.rcpt("alice@mx.test").await.unwrap(), Reply::Continue);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "a 30 s delay capped at 300 ms took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_closes_that_connection_only() {
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.milter[0]);
    let mut bad = MilterClient::open(addr).await.unwrap();
    bad.raw(&[0xff, 0xff, 0xff, 0xff, b'X', 1, 2, 3])
        .await
        .unwrap();
    assert!(bad.closed().await, "the milter hangs up on garbage");
    let mut bad = MilterClient::open(addr).await.unwrap();
    bad.raw(&[0, 0, 0, 3, b'C', 0, 0]).await.unwrap();
    assert!(bad.closed().await, "a truncated CONNECT is refused");
    let (_c, r) = session(addr, "10.0.5.1").await;
    assert_eq!(r, Reply::Continue, "the agent serves on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unknown_users_count_as_bad_recipients() {
    let lim = limiter(
        LIMITS
            .replace("max_rcpts_per_message = 2", "max_rcpts_per_message = 100")
            .as_str(),
        "",
    )
    .await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let (mut c, _) = session(tcp(&a.milter[0]), "10.0.6.1").await;
    c.mail("a@example.org").await.unwrap();
    // Relaying denied, greylisting, a temporary lookup failure: the MTA refused them,
    // but a legitimate sender gets those too. block_after is 3: none of these counts.
    for (i, status) in ["5.7.1", "4.2.0", "4.7.1", "4.3.0", "4.5.3"]
        .iter()
        .enumerate()
    {
        let r = c
            .rcpt_with(
                &format!("x{i}@elsewhere.example"),
                &[
                    ("{rcpt_mailer}", "error"),
                    ("{rcpt_host}", status),
                    ("{rcpt_addr}", "no"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r, Reply::Continue, "{status}");
    }
    // Unknown users do count: the 4th past block_after bans.
    for i in 0..3 {
        assert_eq!(
            c.rejected_rcpt(&format!("u{i}@mx.test")).await.unwrap(),
            Reply::Continue
        );
    }
    assert_eq!(
        c.rejected_rcpt("u3@mx.test").await.unwrap().code(),
        Some(421)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_keeps_its_lease_past_the_ttl() {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let lim = limiter(toml, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let (c1, r) = session(tcp(&a.milter[0]), "10.0.7.1").await;
    assert_eq!(r, Reply::Continue);
    // Well past the 1 s TTL: the agent's heartbeats (every third of it) renewed it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c2, r) = session(tcp(&a.milter[0]), "10.0.7.1").await;
    assert_eq!(
        r,
        Reply::Code("421 4.3.2 Too many open connections.".into())
    );
    c1.quit().await.unwrap();
}

/// One milter connect with the family byte and address text as given.
async fn connect_as(
    addr: std::net::SocketAddr,
    family: u8,
    text: Option<&str>,
) -> (MilterClient, Reply) {
    let mut c = MilterClient::open(addr).await.unwrap();
    let r = c
        .connect_as("client.example", family, text, &[])
        .await
        .unwrap();
    (c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_form_the_mtas_send_is_one_source_at_the_limiter() {
    // ClientConn 1 per address: a second live session of the same source is refused,
    // which shows that each written form reached the limiter as that address.
    let lim = limiter(LIMITS, "").await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.milter[0]);
    let too_many = Reply::Code("421 4.3.2 Too many open connections.".into());
    for forms in [
        // sendmail (IPV6_FULL): tagged, every group written; then the usual forms.
        &[
            (b'6', "IPv6:2001:db8:66:0:0:0:0:7"),
            (b'6', "2001:db8:66::7"),
            (b'6', "[IPv6:2001:db8:66::7]"),
        ][..],
        &[
            (b'4', "192.0.2.9"),
            (b'4', "[192.0.2.9]"),
            (b'6', "IPv6:::ffff:192.0.2.9"),
        ],
        &[(b'6', "fe80::5%eth0"), (b'6', "IPv6:fe80::5%2")],
    ] {
        let (first, r) = connect_as(addr, forms[0].0, Some(forms[0].1)).await;
        assert_eq!(r, Reply::Continue, "{forms:?}");
        for (family, text) in &forms[1..] {
            let (_c, r) = connect_as(addr, *family, Some(text)).await;
            assert_eq!(
                r, too_many,
                "{text} is not the same source as {}",
                forms[0].1
            );
        }
        first.quit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_an_address_is_decided_by_the_fallback_not_waved_through() {
    // The limiter would admit everything: a refusal below is this host's own.
    let lim = limiter("[client_conn]\naddress = 0\nnetwork = 0\n", "").await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.toml");
    // This host's own limits: one concurrent session per source.
    std::fs::write(&local, "[client_conn]\naddress = 1\nnetwork = 0\n").unwrap();
    let mut cfg = config("mx1", &[lim.addr]);
    cfg.fallback.policy = Some(local);
    let a = agent(&cfg).await;
    let addr = tcp(&a.milter[0]);
    // Fail-open: every such session of the host counts as one source under the local
    // limits, whatever the MTA wrote.
    let (first, r) = connect_as(addr, b'U', None).await;
    assert_eq!(r, Reply::Continue);
    for (family, text) in [
        (b'U', None),
        (b'4', Some("unknown")),
        (b'6', Some("IPv6:not-an-address")),
        (b'L', Some("/run/smtp.sock")),
    ] {
        let (_c, r) = connect_as(addr, family, text).await;
        assert_eq!(
            r.code(),
            Some(421),
            "family {} {text:?}: {r:?}",
            family as char
        );
    }
    first.quit().await.unwrap();

    // Fail-closed: a temporary failure.
    let mut cfg = config("mx2", &[lim.addr]);
    cfg.fallback.mode = mx_agent::config::FailMode::Closed;
    let a = agent(&cfg).await;
    let (_c, r) = connect_as(tcp(&a.milter[0]), b'U', None).await;
    match &r {
        Reply::Code(c) => assert!(c.starts_with("421 4.3.2"), "{c}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpitted_source_waits_from_the_first_rcpt_of_its_next_session() {
    let lim = limiter(
        &LIMITS.replace("max_rcpts_per_message = 2", "max_rcpts_per_message = 100"),
        "",
    )
    .await;
    let a = agent(&config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.milter[0]);
    // Two unknown users: past tarpit_after (1).
    let (mut c, _) = session(addr, "10.0.9.1").await;
    c.mail("a@example.org").await.unwrap();
    c.rejected_rcpt("u1@mx.test").await.unwrap();
    c.rejected_rcpt("u2@mx.test").await.unwrap();
    c.quit().await.unwrap();
    // A new session (on any MX: the limiter says so at connect): its first recipient,
    // a valid one, waits too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        let (c, r) = session(addr, "10.0.9.1").await;
        if r == Reply::Continue {
            break c;
        }
        // ClientConn 1: the first session's lease is released as it closes.
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.mail("a@example.org").await.unwrap();
    let t = Instant::now();
    assert_eq!(c.rcpt("alice@mx.test").await.unwrap(), Reply::Continue);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "a tarpitted source's first RCPT did not wait: {:?}",
        t.elapsed()
    );
    // A recipient the MTA refused for a reason of its own (relaying denied) waits too.
    let t = Instant::now();
    let r = c
        .rcpt_with(
            "someone@elsewhere.example",
            &[
                ("{rcpt_mailer}", "error"),
                ("{rcpt_host}", "5.7.1"),
                ("{rcpt_addr}", "Relay access denied"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r, Reply::Continue);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "a refused RCPT of a tarpitted source did not wait: {:?}",
        t.elapsed()
    );
    // Another source is not slowed.
    let (mut c, _) = session(addr, "10.0.10.1").await;
    c.mail("a@example.org").await.unwrap();
    let t = Instant::now();
    assert_eq!(c.rcpt("alice@mx.test").await.unwrap(), Reply::Continue);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

/// A refusal the limiter says holds (ClientRate over the network here) is answered by
/// the agent itself, for every address of that network, without a limiter call, and
/// for no longer than the agent's bound: then it asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_refusal_costs_no_limiter_call_until_the_agents_bound() {
    const BOUND: Duration = Duration::from_millis(1500);
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 0\nnetwork = 2\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let lim = limiter(toml, "").await;
    let mut cfg = milter_config("mx1", &[lim.addr]);
    cfg.limiter.hold_max = mxlimit_core::policy::duration::Span(BOUND);
    let a = agent(&cfg).await;
    let addr = tcp(&a.milter[0]);
    let rate = Reply::Code("421 4.3.2 Connection rate limit exceeded.".into());
    // Two sessions fill the network's window; they stay open (no Disconnect calls).
    let mut open = Vec::new();
    for ip in ["10.0.9.1", "10.0.9.2"] {
        let (c, r) = session(addr, ip).await;
        assert_eq!(r, Reply::Continue);
        open.push(c);
    }
    // The agent's hold starts when it sends its Connect: between these two instants.
    let before_refusal = Instant::now();
    let (_c, r) = session(addr, "10.0.9.3").await;
    assert_eq!(r, rate);
    let after_refusal = Instant::now();
    let calls = || limiter_calls(&a);
    let before = calls();
    for i in 4..20 {
        let (_c, r) = session(addr, &format!("10.0.9.{i}")).await;
        assert_eq!(r, rate, "10.0.9.{i}");
    }
    assert!(
        before_refusal.elapsed() < BOUND,
        "the machine stalled; inconclusive"
    );
    assert_eq!(calls(), before, "held refusals call nobody");
    assert_eq!(a.limiter.holds.len(), 1, "one hold: the network");
    // Another network is asked as ever.
    let (_c, r) = session(addr, "10.0.10.1").await;
    assert_eq!(r, Reply::Continue);
    assert_eq!(calls(), before + 1);
    // Past the bound the agent asks again, though the limiter still holds it.
    tokio::time::sleep_until((after_refusal + BOUND).into()).await;
    let (_c, r) = session(addr, "10.0.9.30").await;
    assert_eq!(r, rate);
    assert_eq!(calls(), before + 2, "asked again after the bound");
}

/// Ended sessions' leases go back in batches: sessions that end together cost one
/// `Release` call, and each lease is freed within `release_every` plus that call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_are_released_together_in_one_call_within_the_bound() {
    const EVERY: Duration = Duration::from_millis(300);
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\n";
    let lim = limiter(toml, "").await;
    let mut cfg = milter_config("mx1", &[lim.addr]);
    cfg.limiter.release_every = mxlimit_core::policy::duration::Span(EVERY);
    let a = agent(&cfg).await;
    let addr = tcp(&a.milter[0]);
    let ips: Vec<String> = (1..=5).map(|i| format!("10.0.11.{i}")).collect();
    let mut open = Vec::new();
    for ip in &ips {
        let (c, r) = session(addr, ip).await;
        assert_eq!(r, Reply::Continue);
        open.push(c);
    }
    let stats = &a.limiter.stats;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let ended = Instant::now();
    for c in open {
        c.quit().await.unwrap();
    }
    let bound = EVERY + Duration::from_secs(2);
    while load(&stats.released) < 5 {
        assert!(
            ended.elapsed() < bound,
            "leases not released within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Five ends, one call (two if a batch was sent while they were ending).
    assert!(load(&stats.release_calls) <= 2, "{stats:?}");
    // Freed: each address gets in again at once (ClientConn 1).
    for ip in &ips {
        let (_c, r) = session(addr, ip).await;
        assert_eq!(r, Reply::Continue, "{ip}");
    }
}

/// A network's refusal is promised to the agent for the whole network only where no
/// rule tells its addresses apart: with an exempt address in it, the agent holds the
/// refused address alone, and the exempt one still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_address_in_a_held_network_still_gets_in() {
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 0\nnetwork = 2\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let lim = limiter(toml, "Connect:10.0.12.9\tOK\n").await;
    let a = agent(&milter_config("mx1", &[lim.addr])).await;
    let addr = tcp(&a.milter[0]);
    let rate = Reply::Code("421 4.3.2 Connection rate limit exceeded.".into());
    let mut open = Vec::new();
    for ip in ["10.0.12.1", "10.0.12.2"] {
        let (c, r) = session(addr, ip).await;
        assert_eq!(r, Reply::Continue);
        open.push(c);
    }
    let (_c, r) = session(addr, "10.0.12.3").await;
    assert_eq!(r, rate);
    assert_eq!(a.limiter.holds.len(), 1);
    let calls = || limiter_calls(&a);
    let made = calls();
    let (_c, r) = session(addr, "10.0.12.9").await;
    assert_eq!(r, Reply::Continue, "the exempt address");
    assert_eq!(calls(), made + 1, "asked: the agent holds 10.0.12.3 alone");
    let (_c, r) = session(addr, "10.0.12.3").await;
    assert_eq!(r, rate);
    assert_eq!(calls(), made + 1, "10.0.12.3 held by the agent");
}
