//! The MTA's log as an adapter, through real MTAs: refusals no milter is told of,
//! counted at the limiter from the log and banned on every MX.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::postfix::{Postfix, PostfixOptions};
use testkit::sendmail::{Sendmail, SendmailOptions};
use testkit::smtp::Smtp;

const POLICY: &str = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_after = 2\nnetwork_block_after = 0\nblock_for = \"1h\"\n\
[envelope]\nbad_rcpt_throttle = 0\n";

use common::smtp_session as session;

/// The seed operator's setup: sendmail refuses a domain's unknown users with a
/// virtusertable catch-all (`553 5.3.0 User unknown`), which no milter is told of.
/// The agent follows sendmail's log; three such refusals (past block_after = 2) ban the source
/// cluster-wide, so a Postfix MX of the same cluster refuses it at connect. IPv4 and
/// IPv6 attackers; a legitimate client of the same networks is not refused.
// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_virtusertable_refusals_from_the_log_ban_on_every_mx() {
    testkit::ipv6::route_on_lo("2001:db8:73::".parse().unwrap());
    let limiter = limiter(POLICY, "").await;
    let sm = Sendmail::start(
        "logs1",
        &SendmailOptions {
            ipv6: true,
            log: true,
            virtusertable: Some("root@mx.test\troot\n@mx.test\terror:nouser User unknown\n".into()),
            ..Default::default()
        },
    );
    // mx1 (sendmail) has no milter: its agent reads its log. mx2 (Postfix) has the
    // agent's milter, as recommended.
    let a1 = agent(&log_config(
        "mx1",
        &[limiter.addr],
        &[sm.log_path().into()],
        &[],
    ))
    .await;
    let a2 = agent(&milter_config("mx2", &[limiter.addr])).await;
    let pf = Postfix::start(
        "logs2",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a2.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ipv6: true,
            ..Default::default()
        },
    );

    for (attacker, at_sendmail, at_postfix) in [
        ("127.0.0.83", sm.addr(), pf.addr()),
        ("2001:db8:73::5", sm.addr6(), pf.addr6()),
    ] {
        let before = session(at_postfix, attacker, &[]).await;
        assert!(
            before.iter().all(|r| r.code < 400),
            "{attacker} before: {before:?}"
        );
        let unknown: Vec<String> = (0..3).map(|i| format!("nobody{i}@mx.test")).collect();
        let r = session(at_sendmail, attacker, &unknown).await;
        assert!(r[3..].iter().all(|r| r.code == 553), "{attacker}: {r:?}");
        // Counted from the log once sendmail wrote the session's from= line; then
        // banned at Postfix's connect.
        until_refused(at_postfix, attacker, "Postfix", || sm.log()).await;
    }
    // A legitimate sender of the same networks delivers at both.
    for (client, server) in [
        ("127.0.0.84", sm.addr()),
        ("127.0.0.84", pf.addr()),
        ("2001:db8:73::6", pf.addr6()),
    ] {
        let rcpt = if server == sm.addr() {
            "root@mx.test"
        } else {
            "alice@mx.test"
        };
        let r = session(server, client, &[rcpt.to_string()]).await;
        assert!(r.iter().all(|r| r.code < 300), "{client}: {r:?}");
    }
    a1.stop().await;
    a2.stop().await;
}

/// Never twice: a Postfix whose milter and whose log both go to one agent. The milter
/// reports each unknown recipient; the same refusals read from the log are known and
/// not sent again. With block_after = 3, three refusals counted once do not ban
/// (counted twice they would); a fourth does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_milter_reported_is_not_counted_again_from_the_log() {
    let limiter = limiter(
        &POLICY.replace("block_after = 2\n", "block_after = 3\n"),
        "",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The agent is told of the log before Postfix (and its directory) exists: a name
    // of ours, made a link to Postfix's maillog_file once it does. The follower waits
    // for a file that is not there yet and reads it from its start.
    let log = dir.path().join("maillog");
    let a = agent(&log_config(
        "mx1",
        &[limiter.addr],
        std::slice::from_ref(&log),
        &["milter"],
    ))
    .await;
    let pf = Postfix::start(
        "logs3",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ..Default::default()
        },
    );
    std::os::unix::fs::symlink(pf.dir().join("maillog"), &log).unwrap();
    let attacker = "127.0.0.85";
    let unknown: Vec<String> = (0..3).map(|i| format!("nobody{i}@mx.test")).collect();
    let r = session(pf.addr(), attacker, &unknown).await;
    assert!(r[3..].iter().all(|r| r.code == 550), "{r:?}");
    // The log's three refusals, each known as the milter's.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.logs.duplicates.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            Instant::now() < deadline,
            "the log's refusals never came: {:?}\n{}",
            a.logs,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.logs.reported.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Counted once: three do not go past block_after = 3.
    let r = session(pf.addr(), attacker, &[]).await;
    assert!(
        r.iter().all(|r| r.code < 400),
        "banned, so counted twice: {r:?}"
    );
    // The fourth does.
    session(pf.addr(), attacker, &["nobody3@mx.test".to_string()]).await;
    let r = session(pf.addr(), attacker, &[]).await;
    assert!(
        r.iter().any(|r| r.code == 421),
        "not banned after four: {r:?}"
    );
    a.stop().await;
}

/// Early talkers, cluster-wide: a client that sends EHLO before the banner at a Postfix
/// MX with postscreen (postscreen logs `PREGREET` and keeps it from smtpd) is refused
/// at connect on every MX afterwards: at a sendmail MX, and at the postscreen MX itself
/// once it behaves (its smtpd's milter asks the same limiter). The agent of the
/// postscreen MX follows its log. With pregreet's `network_ban_at = 2` (the default is
/// 3), a second early talker of a network bans the network: an address of it that
/// never talked is refused too. IPv4 and IPv6; a legitimate sender of another network
/// delivers at both MXes.
// Long on purpose: one attack whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_talker_at_postscreen_is_refused_at_connect_on_every_mx() {
    for net in ["2001:db8:74::", "2001:db8:75::"] {
        testkit::ipv6::route_on_lo(net.parse().unwrap());
    }
    let policy = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
[offences.pregreet]\nban_at = 1\nnetwork_ban_at = 2\nblock_for = \"2h\"\n";
    let limiter = limiter(policy, "").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("maillog");
    // mx1: postscreen in front of smtpd, whose milter is mx1's agent; the agent also
    // follows mx1's log (a link made once Postfix's directory exists).
    let a1 = agent(&log_config(
        "mx1",
        &[limiter.addr],
        std::slice::from_ref(&log),
        &["milter"],
    ))
    .await;
    let pf = Postfix::start(
        "early1",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a1.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ipv6: true,
            postscreen: true,
            ..Default::default()
        },
    );
    std::os::unix::fs::symlink(pf.dir().join("maillog"), &log).unwrap();
    // mx2: sendmail with its agent's milter.
    let a2 = agent(&milter_config("mx2", &[limiter.addr])).await;
    let sm = Sendmail::start(
        "early2",
        &SendmailOptions {
            milter: Some(format!("inet:{}@127.0.0.1", tcp(&a2.milter[0]).port())),
            ipv6: true,
            ..Default::default()
        },
    );
    for (talker, second, unseen, legit) in [
        ("127.0.74.1", "127.0.74.2", "127.0.74.3", "127.0.75.5"),
        (
            "2001:db8:74::1",
            "2001:db8:74::2",
            "2001:db8:74::3",
            "2001:db8:75::5",
        ),
    ] {
        let (at_pf, at_sm) = if talker.contains(':') {
            (pf.addr6(), sm.addr6())
        } else {
            (pf.addr(), sm.addr())
        };
        let before = session(at_sm, talker, &[]).await;
        assert!(
            before.iter().all(|r| r.code < 400),
            "{talker} before: {before:?}"
        );

        // Talks first at postscreen: never reaches smtpd, so no milter hears of it.
        let (_s, greeting) =
            Smtp::connect_talking_first(talker.parse().unwrap(), at_pf, "EHLO early.example")
                .await
                .unwrap();
        // postscreen's multi-line banner, which it sends in parts to catch early talkers.
        assert!(greeting.text.starts_with("220-"), "{greeting:?}");
        drop(_s);
        until_refused(at_sm, talker, "sendmail", || pf.log()).await;
        // At the postscreen MX too, once it waits for the banner like an MTA.
        until_refused(at_pf, talker, "Postfix behind postscreen", || pf.log()).await;
        // One early talker does not ban its network.
        let r = session(at_sm, unseen, &[]).await;
        assert!(
            r.iter().all(|r| r.code < 400),
            "{unseen} refused after one talker: {r:?}"
        );

        // A second one does, at every MX.
        let (_s, _) =
            Smtp::connect_talking_first(second.parse().unwrap(), at_pf, "EHLO early2.example")
                .await
                .unwrap();
        drop(_s);
        until_refused(at_sm, unseen, "sendmail", || pf.log()).await;
        until_refused(at_pf, unseen, "Postfix behind postscreen", || pf.log()).await;

        // A legitimate sender of another network delivers at both.
        for (server, rcpt) in [(at_sm, "root@mx.test"), (at_pf, "alice@mx.test")] {
            let r = session(server, legit, &[rcpt.to_string()]).await;
            assert!(
                r.iter().all(|r| r.code < 300),
                "{legit}: {r:?}\nmx1's log:\n{}",
                pf.log()
            );
        }
    }
    assert!(
        pf.log().contains("PREGREET"),
        "postscreen logged no PREGREET:\n{}",
        pf.log()
    );
    assert_eq!(
        a1.logs.offences.load(std::sync::atomic::Ordering::Relaxed),
        4,
        "four early talkers, each reported once"
    );
    a1.stop().await;
    a2.stop().await;
}

/// Polls `ok` until it holds, for at most 20 s; the message shows `show()`.
async fn wait_for(what: &str, ok: impl Fn() -> bool, show: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: {}", show());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Log rotation during an attack loses no event and counts none twice. The seed's
/// sendmail (virtusertable catch-all, refusals only its log tells of) is attacked in
/// four sessions of two unknown users each, and its log rotated between them:
/// - as logrotate rotates rsyslog's files: renamed, a new file made, and the logger
///   writing on to the renamed one until its HUP, while the agent already reads the
///   new file;
/// - then cut in place (`copytruncate`).
///
/// Every refusal is reported once; with block_after = 7 the source is not banned
/// after six, and the eighth bans it at a Postfix MX of the same cluster.
// Long on purpose: one attack whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rotation_during_an_attack_loses_no_event() {
    let limiter = limiter(
        &POLICY.replace("block_after = 2\n", "block_after = 7\n"),
        "",
    )
    .await;
    let sm = Sendmail::start(
        "rotate1",
        &SendmailOptions {
            log: true,
            virtusertable: Some("root@mx.test\troot\n@mx.test\terror:nouser User unknown\n".into()),
            ..Default::default()
        },
    );
    let a1 = agent(&log_config(
        "mx1",
        &[limiter.addr],
        &[sm.log_path().into()],
        &[],
    ))
    .await;
    let a2 = agent(&milter_config("mx2", &[limiter.addr])).await;
    let pf = Postfix::start(
        "rotate2",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a2.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let stats = a1.logs.clone();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let show = || format!("{stats:?}\nsendmail's log:\n{}", sm.log());
    let attacker = "127.0.86.1";
    for step in 0..4u64 {
        match step {
            // logrotate with `create`: the agent takes up the new file while the
            // logger goes on with the old one.
            1 => {
                sm.rotate_log(&dir.path().join("maillog.1"));
                wait_for("the rotation seen", || load(&stats.reopened) >= 1, show).await;
            }
            // postrotate's HUP: the logger writes to the new file.
            2 => {
                assert_eq!(
                    std::fs::read_to_string(sm.log_path()).unwrap(),
                    "",
                    "the logger wrote to the new file before its HUP"
                );
                sm.reopen_log();
            }
            // copytruncate, after six refusals: not banned yet.
            3 => {
                assert_ne!(std::fs::read_to_string(sm.log_path()).unwrap(), "");
                let before = load(&stats.reopened);
                sm.copytruncate_log(&dir.path().join("maillog.2"));
                wait_for(
                    "the truncation seen",
                    || load(&stats.reopened) > before,
                    show,
                )
                .await;
                let r = session(pf.addr(), attacker, &[]).await;
                assert!(r.iter().all(|r| r.code < 400), "banned after six: {r:?}");
            }
            _ => {}
        }
        let rcpts: Vec<String> = (0..2)
            .map(|i| format!("nobody{step}-{i}@mx.test"))
            .collect();
        let r = session(sm.addr(), attacker, &rcpts).await;
        assert!(r[3..].iter().all(|r| r.code == 553), "{r:?}");
        let reported = 2 * (step + 1);
        wait_for(
            &format!("{reported} reported"),
            || load(&stats.reported) == reported,
            show,
        )
        .await;
    }
    until_refused(pf.addr(), attacker, "Postfix", || sm.log()).await;
    assert_eq!(load(&stats.duplicates), 0, "{stats:?}");
    a1.stop().await;
    a2.stop().await;
}

/// The systemd journal, where the MTA logs there: the seed's sendmail (virtusertable
/// catch-all) logs to a private journald, and the agent reads it with journalctl.
/// Stopped and started again, the agent goes on from the cursor it kept, so the
/// refusals made while it was down count too: two before, two while it was down, and
/// with block_after = 3 the fourth bans the source at a Postfix MX.
// Long on purpose: one attack whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_read_and_resumed_after_a_restart() {
    let journald = testkit::journald::Journald::start();
    let limiter = limiter(
        &POLICY.replace("block_after = 2\n", "block_after = 3\n"),
        "",
    )
    .await;
    let sm = Sendmail::start(
        "journal1",
        &SendmailOptions {
            syslog: Some(journald.dev_log()),
            virtusertable: Some("root@mx.test\troot\n@mx.test\terror:nouser User unknown\n".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg1 = log_config("mx1", &[limiter.addr], &[], &[]);
    cfg1.logs.journal = true;
    cfg1.logs.journal_directory = Some(journald.directory());
    cfg1.logs.journal_cursor = Some(dir.path().join("cursor"));
    let a2 = agent(&milter_config("mx2", &[limiter.addr])).await;
    let pf = Postfix::start(
        "journal2",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a2.milter[0]))),
            mailboxes: vec!["alice@mx.test".into()],
            ..Default::default()
        },
    );
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let journal = || {
        let out = std::process::Command::new("journalctl")
            .args(["--no-pager", "--directory"])
            .arg(journald.directory())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a1 = agent(&cfg1).await;
    // Without a cursor yet, reading starts at the end: a line of the mail facility
    // marks when journalctl reads.
    let marker = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let stats = a1.logs.clone();
    wait_for(
        "the journal read",
        || {
            let _ = marker.send_to(b"<22>mxtest: reading?", journald.dev_log());
            load(&stats.lines) > 0
        },
        &journal,
    )
    .await;

    let attacker = "127.0.87.1";
    let unknown = |from: usize| -> Vec<String> {
        (from..from + 2)
            .map(|i| format!("nobody{i}@mx.test"))
            .collect()
    };
    let r = session(sm.addr(), attacker, &unknown(0)).await;
    assert!(r[3..].iter().all(|r| r.code == 553), "{r:?}");
    wait_for("two reported", || load(&stats.reported) == 2, &journal).await;
    a1.stop().await;
    assert!(dir.path().join("cursor").is_file(), "no cursor kept");

    // While the agent is down.
    let r = session(sm.addr(), attacker, &unknown(2)).await;
    assert!(r[3..].iter().all(|r| r.code == 553), "{r:?}");
    let r = session(pf.addr(), attacker, &[]).await;
    assert!(r.iter().all(|r| r.code < 400), "banned after two: {r:?}");

    let a1 = agent(&cfg1).await;
    let stats = a1.logs.clone();
    wait_for(
        "the two made while down reported",
        || load(&stats.reported) == 2,
        || format!("{stats:?}\n{}", journal()),
    )
    .await;
    until_refused(pf.addr(), attacker, "Postfix", || sm.log()).await;
    // Resumed after the last entry read before the stop: the first two, which would
    // have come before the ban's, were not read again.
    assert_eq!(load(&stats.reported), 2, "{stats:?}");
    a1.stop().await;
    a2.stop().await;
}

/// sendmail's own early-talker check (`FEATURE(greet_pause)`): a client that sends
/// EHLO before the greeting is refused by sendmail, which logs "pre-greeting traffic";
/// the agent following sendmail's log reports the offence, and the client is refused
/// at connect at a Postfix MX of the same cluster (pregreet's default: one bans the
/// address). IPv4 and IPv6; a client that waits for the greeting is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_talker_at_sendmail_is_banned_on_every_mx() {
    testkit::ipv6::route_on_lo("2001:db8:88::".parse().unwrap());
    let limiter = limiter(POLICY, "").await;
    let sm = Sendmail::start(
        "greet1",
        &SendmailOptions {
            log: true,
            ipv6: true,
            greet_pause_ms: Some(1000),
            ..Default::default()
        },
    );
    let a1 = agent(&log_config(
        "mx1",
        &[limiter.addr],
        &[sm.log_path().into()],
        &[],
    ))
    .await;
    let a2 = agent(&milter_config("mx2", &[limiter.addr])).await;
    let pf = Postfix::start(
        "greet2",
        &PostfixOptions {
            milter: Some(format!("inet:{}", tcp(&a2.milter[0]))),
            ipv6: true,
            ..Default::default()
        },
    );
    for (talker, at_sm, at_pf) in [
        ("127.0.88.1", sm.addr(), pf.addr()),
        ("2001:db8:88::1", sm.addr6(), pf.addr6()),
    ] {
        let before = session(at_pf, talker, &[]).await;
        assert!(before.iter().all(|r| r.code < 400), "{before:?}");
        let (_s, greeting) =
            Smtp::connect_talking_first(talker.parse().unwrap(), at_sm, "EHLO early.example")
                .await
                .unwrap();
        assert_eq!(
            greeting.code, 554,
            "sendmail served an early talker: {greeting:?}"
        );
        drop(_s);
        until_refused(at_pf, talker, "Postfix", || sm.log()).await;
    }
    assert!(sm.log().contains("pre-greeting traffic"), "{}", sm.log());
    let r = session(sm.addr(), "127.0.89.1", &["root@mx.test".to_string()]).await;
    assert!(r.iter().all(|r| r.code < 300), "{r:?}");
    assert_eq!(
        a1.logs.offences.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    a1.stop().await;
    a2.stop().await;
}
