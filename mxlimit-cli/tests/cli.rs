//! The `mxlimit` binary against a real limiter: the operator's daily tasks, exact
//! output, and clear errors.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_server::admin::KeeperOptions;
use limiter_server::admin::auth::{AdminAuth, AuthConfig};
use limiter_server::server::ServeOptions;
use mxlimit_core::policy::reload::{PolicyHandle, PolicySource};
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use testkit::Limiter;

const TOKEN: &str = "cli-test-token-0123456789";

async fn limiter(policy: Arc<PolicyHandle>) -> Limiter {
    let options = ServeOptions {
        admin: Some(
            AdminAuth::new(AuthConfig {
                token: Some(TOKEN.into()),
                ..Default::default()
            })
            .unwrap(),
        ),
        keeper: KeeperOptions {
            every: Duration::from_millis(50),
            keep: 1000,
        },
        ..Default::default()
    };
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    Limiter::start_with(store, policy, "127.0.0.1:0".parse().unwrap(), options).await
}

/// Runs `mxlimit` against `l` with the token in the environment (or not).
async fn mxlimit(l: &Limiter, token: bool, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"));
    cmd.env_remove("MXLIMIT_ADMIN_TOKEN")
        .env_remove("MXLIMIT_ADMIN_TOKEN_FILE")
        .env("MXLIMIT_SERVER", format!("http://{}", l.addr))
        .args(args);
    if token {
        cmd.env("MXLIMIT_ADMIN_TOKEN", TOKEN);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn out(o: &Output) -> String {
    assert!(
        o.status.success(),
        "mxlimit failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "mxlimit should have failed");
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A limiter that counts bad recipients for the top lists and bans nobody, so that
/// every attacker stays in the lists.
async fn counting_limiter() -> Limiter {
    let never_ban = "[bad_rcpt]\nblock_after = 0\nnetwork_block_after = 0\n";
    limiter(Arc::new(PolicyHandle::fixed(testkit::policy(
        never_ban, "",
    ))))
    .await
}

/// Runs `mxlimit ARGS --json` until its answer has `n` entries at `field` (the whole
/// answer when `field` is empty): the limiter's keeper indexes what happened every
/// 50 ms here.
async fn until_listed(l: &Limiter, args: &[&str], field: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&out(&mxlimit(l, true, &args).await)).unwrap();
        let list = if field.is_empty() { &v } else { &v[field] };
        if list.as_array().map(Vec::len) == Some(n) {
            return v;
        }
        assert!(Instant::now() < deadline, "{args:?} never listed {n}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_is_attacking_and_the_access_files_for_sendmail_and_postfix() {
    let l = counting_limiter().await;
    l.bad_rcpts("206.81.85.10", 3).await;
    l.bad_rcpts("206.81.85.11", 2).await;
    l.bad_rcpts("2001:db8:1:2::5", 1).await;

    let json = until_listed(&l, &["top", "--window", "1h"], "sources", 2).await;
    assert_eq!(json["window_ms"], 3_600_000);
    assert_eq!(json["sources"][0]["source"], "206.81.85.0/24");
    assert_eq!(json["sources"][0]["bad_recipients"], 5);
    assert_eq!(json["sources"][1]["source"], "2001:db8:1:2::/64");

    let table = out(&mxlimit(&l, true, &["top", "--window", "1h", "--by", "addr"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "top sources of the last 1h (cluster-wide)");
    assert!(lines[1].starts_with("#  SOURCE"), "{table}");
    assert!(
        lines[2].contains("206.81.85.10") && lines[2].trim_end().ends_with('0'),
        "{table}"
    );
    assert_eq!(lines.len(), 5, "{table}");

    let sendmail = out(&mxlimit(
        &l,
        true,
        &["export", "--format", "sendmail", "--window", "1h"],
    )
    .await);
    let entries: Vec<&str> = sendmail.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        [
            "Connect:206.81.85\tREJECT",
            "Connect:IPv6:2001:db8:1:2\tREJECT"
        ]
    );
    let postfix = out(&mxlimit(
        &l,
        true,
        &[
            "export",
            "--format",
            "postfix-cidr",
            "--window",
            "1h",
            "--min",
            "2",
        ],
    )
    .await);
    let entries: Vec<&str> = postfix.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(entries, ["206.81.85.0/24 REJECT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_explain_list_and_unblock_a_network() {
    let l = limiter(Arc::new(PolicyHandle::fixed(testkit::policy("", "")))).await;
    let o = out(&mxlimit(
        &l,
        true,
        &[
            "block",
            "198.51.100.0/24",
            "--for",
            "2h",
            "--reason",
            "dictionary attack",
        ],
    )
    .await);
    assert_eq!(
        o,
        "blocked 198.51.100.0/24 on every MX for 2h (dictionary attack)\n"
    );

    let e = out(&mxlimit(&l, true, &["explain", "198.51.100.7"]).await);
    assert!(
        e.starts_with("198.51.100.7 in network 198.51.100.0/24\n"),
        "{e}"
    );
    assert!(e.contains("Connect now: DISCONNECT 421 4.7.1 Blocked by the mail administrator: dictionary attack [reason blocked, rule Block:198.51.100.0/24]"), "{e}");
    assert!(
        e.contains("Blocked by an operator: 198.51.100.0/24 for 1h59m"),
        "{e}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&out(&mxlimit(&l, true, &["blocks", "--json"]).await)).unwrap();
    assert_eq!(v[0]["target"], "198.51.100.0/24");
    assert_eq!(v[0]["kind"], "block");
    assert_eq!(v[0]["reason"], "dictionary attack");

    let o = out(&mxlimit(&l, true, &["unblock", "198.51.100.0/24"]).await);
    assert_eq!(o, "198.51.100.0/24: operator block lifted\n");
    let e: serde_json::Value = serde_json::from_str(&out(&mxlimit(
        &l,
        true,
        &["explain", "198.51.100.7", "--json"],
    )
    .await))
    .unwrap();
    assert_eq!(e["connect"]["action"], "ACTION_ACCEPT");
    assert_eq!(
        out(&mxlimit(&l, true, &["blocks"]).await),
        "no blocks or bans in force\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_success_and_a_broken_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(&access, "Connect:192.0.2.1 REJECT\n").unwrap();
    let policy = PolicyHandle::open(PolicySource {
        policy_file: None,
        access_files: vec![access.clone()],
    })
    .unwrap();
    let l = limiter(Arc::new(policy)).await;
    let o = out(&mxlimit(&l, true, &["reload"]).await);
    assert!(o.starts_with("rules reloaded: 1 access entries"), "{o}");
    std::fs::write(
        &access,
        "Connect:192.0.2.1 REJECT\nClientRate:192.0.2 lots\n",
    )
    .unwrap();
    let e = err(&mxlimit(&l, true, &["reload"]).await);
    assert!(
        e.contains("rules not reloaded; the previous rules stay in force"),
        "{e}"
    );
    assert!(e.contains(":2:"), "the broken line is named: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do() {
    let l = limiter(Arc::new(PolicyHandle::fixed(testkit::policy("", "")))).await;
    let e = err(&mxlimit(&l, false, &["blocks"]).await);
    assert!(
        e.contains("not authorized") && e.contains("--token-file"),
        "{e}"
    );
    let e = err(&mxlimit(&l, true, &["block", "10.0.0.0/4"]).await);
    assert!(e.contains("refused: 10.0.0.0/4 is wider than /8"), "{e}");
    let e = err(&mxlimit(&l, true, &["explain", "1.2.3"]).await);
    assert!(e.contains("refused:") && e.contains("client_ip"), "{e}");
    let e = err(&mxlimit(&l, true, &["block", "192.0.2.1", "--for", "10"]).await);
    assert!(e.contains("has no unit") && e.contains("\"10s\""), "{e}");
    let port = testkit::free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"));
    cmd.args(["--server", &format!("127.0.0.1:{port}"), "blocks"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(err(&o).contains(&format!(
        "cannot reach the limiter at http://127.0.0.1:{port}"
    )));
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
/// The exports, loaded into real MTAs' tables, refuse the exported sources by address
/// and by network, over IPv4 and IPv6, and nothing else: sendmail's access map (made
/// with its own makemap) at MAIL FROM, and a Postfix cidr table asked by `postmap -q`.
/// sendmail writes IPv6 clients without zero compression, which a compressed key
/// (`IPv6:::1`) would never match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mtas_refuse_what_the_export_lists() {
    use testkit::sendmail::{Sendmail, SendmailOptions};
    use testkit::smtp::Smtp;

    let l = counting_limiter().await;
    l.bad_rcpts("127.0.0.1", 2).await;
    l.bad_rcpts("::1", 1).await;
    until_listed(&l, &["top", "--window", "1h"], "sources", 2).await;
    let mut exports = Vec::new();
    for by in ["addr", "net"] {
        let args = [
            "export", "--format", "sendmail", "--window", "1h", "--by", by,
        ];
        exports.push(out(&mxlimit(&l, true, &args).await));
    }
    let entries = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        entries(&exports[0]),
        [
            "Connect:127.0.0.1\tREJECT",
            "Connect:IPv6:0:0:0:0:0:0:0:1\tREJECT"
        ]
    );
    assert_eq!(
        entries(&exports[1]),
        ["Connect:127.0.0\tREJECT", "Connect:IPv6:0:0:0:0\tREJECT"]
    );

    /// The reply to MAIL FROM, where sendmail gives a Connect: refusal.
    async fn mail_from(source: &str, server: std::net::SocketAddr) -> String {
        let (mut c, greeting) = Smtp::connect(source.parse().unwrap(), server)
            .await
            .unwrap();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert_eq!(c.cmd("EHLO client.example").await.unwrap().code, 250);
        let r = c.cmd("MAIL FROM:<a@client.example>").await.unwrap();
        r.text.trim_end().to_owned()
    }
    let unrelated = "Connect:192.0.2\tREJECT\nConnect:IPv6:2001:db8\tREJECT\n".to_owned();
    let [by_addr, by_net] = <[String; 2]>::try_from(exports).unwrap();
    for (name, access, expect) in [
        ("addr", by_addr, "550 5.7.1 Access denied"),
        ("net", by_net, "550 5.7.1 Access denied"),
        (
            "unrelated",
            unrelated,
            "250 2.1.0 <a@client.example>... Sender ok",
        ),
    ] {
        let sm = tokio::task::spawn_blocking(move || {
            Sendmail::start(
                &format!("export-{name}"),
                &SendmailOptions {
                    access: Some(access),
                    ipv6: true,
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap();
        assert_eq!(
            mail_from("127.0.0.1", sm.addr()).await,
            expect,
            "{name}, IPv4"
        );
        assert_eq!(mail_from("::1", sm.addr6()).await, expect, "{name}, IPv6");
    }

    let postmap = testkit::require("postmap", "postfix");
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("main.cf"), "").unwrap();
    for by in ["addr", "net"] {
        let args = [
            "export",
            "--format",
            "postfix-cidr",
            "--window",
            "1h",
            "--by",
            by,
        ];
        let table = conf.path().join(format!("{by}.cidr"));
        std::fs::write(&table, out(&mxlimit(&l, true, &args).await)).unwrap();
        for (client, expect) in [
            ("127.0.0.1", "REJECT\n"),
            ("::1", "REJECT\n"),
            ("192.0.2.1", ""),
        ] {
            let o = std::process::Command::new(&postmap)
                .arg("-c")
                .arg(conf.path())
                .args(["-q", client])
                .arg(format!("cidr:{}", table.display()))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), expect, "{by}, {client}");
            // postmap -q exits 1 for "not found", 0 for found; anything else is a broken table.
            assert_eq!(
                o.status.code(),
                Some(i32::from(expect.is_empty())),
                "{by}, {client}: {o:?}"
            );
        }
    }
}

/// `blocks --limit` cuts the automatic bans and says on stderr how many were left out,
/// so that `--json` output stays one document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_ban_list_says_how_many_bans_there_are() {
    let l = limiter(Arc::new(PolicyHandle::fixed(testkit::policy(
        "[bad_rcpt]\nblock_after = 1\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\n",
        "",
    ))))
    .await;
    l.bad_rcpts("203.0.113.1", 2).await;
    l.bad_rcpts("203.0.113.2", 2).await;
    until_listed(&l, &["blocks"], "", 2).await;
    let o = mxlimit(&l, true, &["blocks", "--limit", "1", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["kind"], "ban");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "mxlimit: 1 of 2 automatic bans listed, those with the most time left (--limit for more)\n"
    );
    let all = mxlimit(&l, true, &["blocks"]).await;
    assert!(out(&all).contains("203.0.113.2"));
    assert!(
        all.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
}

/// A name given to `explain` is matched by host and domain rules, as the MTA's verified
/// name would be; without it, the address alone decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_with_a_name_shows_the_domain_rule_that_matches() {
    let l = limiter(Arc::new(PolicyHandle::fixed(testkit::policy(
        "",
        "Connect:spammer.example\tREJECT\n",
    ))))
    .await;
    let named = out(&mxlimit(
        &l,
        true,
        &["explain", "192.0.2.5", "--name", "mx1.spammer.example"],
    )
    .await);
    let bare = out(&mxlimit(&l, true, &["explain", "192.0.2.5"]).await);
    assert!(
        named.starts_with("192.0.2.5 (mx1.spammer.example) in network 192.0.2.0/24\n"),
        "{named}"
    );
    assert!(
        named.contains(
            "Connect now: REJECT 550 5.7.1 Access denied [reason access, rule Connect:spammer.example]"
        ),
        "{named}"
    );
    assert!(
        named.lines().any(|l| l.starts_with("Connect ")
            && l.contains("Connect:spammer.example")
            && l.ends_with("550 5.7.1 Access denied")),
        "{named}"
    );
    assert!(bare.contains("Connect now: ACCEPT"), "{bare}");
    assert!(!bare.contains("spammer.example"), "{bare}");
}

/// Over mutual TLS, an admin certificate is all the CLI needs (no token); an agent's
/// certificate of the same CA is not an admin, and no certificate gets no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_mutual_tls_with_an_admin_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = testkit::tls::Pki::new("cli CA");
    let options = testkit::tls::mtls_admin_options(&pki, dir.path(), &["admin.example"]);
    let ca = dir.path().join("ca.pem");
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let policy = Arc::new(PolicyHandle::fixed(testkit::policy("", "")));
    let l = Limiter::start_with(store, policy, "127.0.0.1:0".parse().unwrap(), options).await;
    let admin = pki.client("admin.example").write(dir.path(), "admin");
    let agent = pki.client("mx1.example").write(dir.path(), "agent");
    let run = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"));
        cmd.env_remove("MXLIMIT_ADMIN_TOKEN")
            .env_remove("MXLIMIT_ADMIN_TOKEN_FILE")
            .env("MXLIMIT_SERVER", format!("https://{}", l.addr))
            .env("MXLIMIT_TLS_CA", &ca)
            .env("MXLIMIT_TLS_DOMAIN", "localhost")
            .arg("blocks");
        if let Some((c, k)) = identity {
            cmd.env("MXLIMIT_TLS_CERT", c).env("MXLIMIT_TLS_KEY", k);
        }
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    assert_eq!(
        out(&run(Some(admin)).await.unwrap()),
        "no blocks or bans in force\n"
    );
    let e = err(&run(Some(agent)).await.unwrap());
    assert!(e.contains("not authorized"), "{e}");
    let e = err(&run(None).await.unwrap());
    eprintln!("NOCERT[{e}]");
    assert!(
        !e.contains("not authorized") && e.contains("mxlimit:"),
        "{e}"
    );
}

/// One session from `client`: `n` unknown users of mx.test, each refused with `code`,
/// then `mailbox`, accepted; then QUIT.
async fn unknown_users(
    client: &str,
    server: std::net::SocketAddr,
    n: usize,
    code: u32,
    mailbox: &str,
) {
    let (mut s, _) = testkit::smtp::Smtp::connect(client.parse().unwrap(), server)
        .await
        .unwrap();
    s.cmd("EHLO client.test").await.unwrap();
    s.cmd("MAIL FROM:<a@client.test>").await.unwrap();
    for i in 0..n {
        let r = s
            .cmd(&format!("RCPT TO:<nobody{i}@mx.test>"))
            .await
            .unwrap();
        assert_eq!(r.code, code, "{client}: {r:?}");
    }
    let r = s.cmd(&format!("RCPT TO:<{mailbox}>")).await.unwrap();
    assert_eq!(r.code, 250, "{client}: {r:?}");
    s.cmd("QUIT").await.unwrap();
}

/// `mxlimit import-log` over a real Postfix's log: the unknown recipients it refused,
/// from IPv4 and IPv6 clients, counted per address and per network; a file of binary
/// garbage beside it is read and skipped. No limiter is asked (none listens where
/// the command is pointed), until `--seed` puts the same counts into a limiter's top
/// list of the last hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_log_counts_what_a_real_postfix_refused_by_address_and_network() {
    use testkit::postfix::{Postfix, PostfixOptions};

    testkit::ipv6::route_on_lo("2001:db8:71::".parse().unwrap());
    let pf = Postfix::start(
        "import",
        &PostfixOptions {
            mailboxes: vec!["real@mx.test".into()],
            ipv6: true,
            ..Default::default()
        },
    );
    // (client, server, unknown recipients it tries, then one real one)
    let plan: [(&str, std::net::SocketAddr, usize); 3] = [
        ("127.0.0.71", pf.addr(), 3),
        ("127.0.0.72", pf.addr(), 2),
        ("2001:db8:71::5", pf.addr6(), 4),
    ];
    let mut refused = 0;
    for (client, server, n) in plan {
        unknown_users(client, server, n, 550, "real@mx.test").await;
        refused += n;
    }
    // Postfix writes its log asynchronously: wait until every refusal is in it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pf.log().matches("User unknown").count() < refused {
        assert!(
            Instant::now() < deadline,
            "the refusals never reached the log:\n{}",
            pf.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let garbage = pf.dir().join("garbage.log");
    std::fs::write(
        &garbage,
        (0..=255u8).cycle().take(100_000).collect::<Vec<u8>>(),
    )
    .unwrap();

    let log = pf.dir().join("maillog");
    let run = |by: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"))
            // Nothing listens there: import-log must not ask.
            .args([
                "--server",
                "http://127.0.0.1:1",
                "--json",
                "import-log",
                "--by",
                by,
            ])
            .arg(&log)
            .arg(&garbage)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["source"].as_str().unwrap().to_string(),
                    r["unknown_recipient"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        run("addr"),
        [
            ("2001:db8:71::5".to_string(), 4),
            ("127.0.0.71".to_string(), 3),
            ("127.0.0.72".to_string(), 2),
        ]
    );
    assert_eq!(
        run("net"),
        [
            ("127.0.0.0/24".to_string(), 5),
            ("2001:db8:71::/64".to_string(), 4)
        ]
    );

    // Seeded, the limiter's list of the last hour is the same: Postfix's own time
    // stamps read right, the networks the limiter's.
    let l = counting_limiter().await;
    let o = mxlimit(&l, true, &["import-log", "--seed", log.to_str().unwrap()]).await;
    out(&o);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("9 unknown recipients added"), "{said}");
    let v = until_listed(&l, &["top", "--window", "1h", "--by", "addr"], "sources", 3).await;
    let listed: Vec<(String, u64)> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_string(),
                s["bad_recipients"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, run("addr"));
}

/// The seed operator's own setup: sendmail refuses a domain's unknown users with a
/// virtusertable catch-all (`@mx.test error:nouser User unknown`), which no milter is
/// told of. `mxlimit import-log` over what that real sendmail logged counts them by
/// client, IPv4 and IPv6, though sendmail logs the client only at the end of the
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_log_counts_a_sendmail_virtusertable_s_refusals() {
    use testkit::sendmail::{Sendmail, SendmailOptions};

    testkit::ipv6::route_on_lo("2001:db8:72::".parse().unwrap());
    let sm = Sendmail::start(
        "vut",
        &SendmailOptions {
            ipv6: true,
            log: true,
            virtusertable: Some("root@mx.test\troot\n@mx.test\terror:nouser User unknown\n".into()),
            ..Default::default()
        },
    );
    let plan: [(&str, std::net::SocketAddr, usize); 2] = [
        ("127.0.0.74", sm.addr(), 3),
        ("2001:db8:72::9", sm.addr6(), 2),
    ];
    for (client, server, n) in plan {
        // virtusertable's error: without a code answers 553 5.3.0 (parseaddr.c).
        unknown_users(client, server, n, 553, "root@mx.test").await;
    }
    // The client's address is logged at QUIT, by the session's process.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sm.log().matches("from=<a@client.test>").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "sendmail never logged both sessions:\n{}",
            sm.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(log.path(), sm.log()).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"))
        .args(["--json", "import-log", "--by", "addr"])
        .arg(log.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(String, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["unknown_recipient"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.0.74".to_string(), 3),
            ("2001:db8:72::9".to_string(), 2)
        ],
        "{}",
        sm.log()
    );
}

/// What an operator gets wrong with import-log is said before anything is read, and
/// a file that is not a log costs neither a crash nor its size in memory.
#[test]
fn import_log_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mail.log");
    std::fs::write(&good, "Jun  3 10:00:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <u@mx.test>: Recipient address rejected: User unknown in local recipient table; from=<> to=<u@mx.test> proto=ESMTP\n").unwrap();
    let gz = dir.path().join("mail.log.2.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    let no_newline = dir.path().join("blob");
    std::fs::write(&no_newline, vec![b'x'; 5 << 20]).unwrap();
    let run = |files: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"))
            .arg("import-log")
            .args(files)
            .output()
            .unwrap()
    };
    let o = run(&[&good, &dir.path().join("missing.log")]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("cannot read") && e.contains("missing.log"),
        "{e}"
    );
    assert!(!e.contains("lines read"), "read before the error: {e}");
    let o = run(&[&gz]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("gzip-compressed") && e.contains("zcat"), "{e}");
    let o = run(&[&no_newline, &good]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("2 lines read, 1 of use, 1 of no interest"),
        "{e}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("192.0.2.0/24"));
}

/// `--since` and `--until` keep the events of a time range, in every logger's time
/// format: syslog's (no year: the range's), Postfix's maillog_file, RFC 3339, Exim's.
/// A bad time is refused saying what to write.
#[test]
fn import_log_keeps_the_time_range_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    let rcpt = |time: &str, ip: &str| {
        format!(
            "{time} mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[{ip}]: 550 5.1.1 <u@mx.test>: Recipient address rejected: User unknown in local recipient table; from=<> to=<u@mx.test> proto=ESMTP\n"
        )
    };
    let text = [
        rcpt("Dec  2 23:59:59", "192.0.2.1"),
        rcpt("Dec 03 00:00:00", "192.0.2.2"),
        rcpt("2026-12-03T12:00:00.5+01:00", "192.0.2.3"),
        "2026-12-03 23:59:59 H=[192.0.2.4] F=<> rejected RCPT <v@mx.test>: Unknown user\n".into(),
        rcpt("Dec  4 00:00:00", "192.0.2.5"),
    ]
    .concat();
    std::fs::write(&log, text).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"))
            .args(["--json", "import-log", "--by", "addr"])
            .args(args)
            .arg(&log)
            .output()
            .unwrap()
    };
    let sources = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut s: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["source"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        sources(run(&["--since", "2026-12-03", "--until", "2026-12-04"])),
        ["192.0.2.2", "192.0.2.3", "192.0.2.4"]
    );
    assert_eq!(
        sources(run(&["--since", "2026-12-03 12:00"])),
        ["192.0.2.3", "192.0.2.4", "192.0.2.5"]
    );
    assert_eq!(
        sources(run(&["--until", "2026-12-03 00:00:01"])),
        ["192.0.2.1", "192.0.2.2"]
    );
    assert_eq!(sources(run(&[])).len(), 5);
    let o = run(&["--since", "yesterday"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("\"yesterday\" is not a time"), "{e}");
}

/// `mxlimit ARGS` against `l` with the token, in time zone `tz`.
async fn mxlimit_tz(l: &Limiter, tz: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"));
    cmd.env("MXLIMIT_ADMIN_TOKEN", TOKEN)
        .env("MXLIMIT_SERVER", format!("http://{}", l.addr))
        .env("TZ", tz)
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// A Unix time as (year, month, day, hh, mm, ss) in UTC.
fn civil(unix: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `import-log --seed`: the unknown recipients of an old log land in the limiter's top
/// lists at their times, whatever the logger's stamp (syslog's without a year or zone,
/// read in TZ; RFC 3339 with its zone; Exim's), and so do its networks; what the
/// lists no longer keep is said, not added; seeding again adds nothing; early talkers
/// are listed but not seeded (no top list counts offences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_log_seeds_the_top_lists_at_the_times_logged() {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Syslog's stamp, in the zone TZ=UTC+3 (three hours behind UTC) names.
    let syslog = |unix: i64| {
        let (_, m, d, h, mi, s) = civil(unix - 3 * 3600);
        format!("{} {d:2} {h:02}:{mi:02}:{s:02}", MONTHS[m as usize - 1])
    };
    let rfc3339_minus5 = |unix: i64| {
        let (y, m, d, h, mi, s) = civil(unix - 5 * 3600);
        format!("{y}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.123456-05:00")
    };
    let exim = |unix: i64| {
        let (y, m, d, h, mi, s) = civil(unix - 3 * 3600);
        format!("{y}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    };
    let rcpt = |time: String, ip: &str, i: usize| {
        format!(
            "{time} mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[{ip}]: 550 5.1.1 <u{i}@mx.test>: Recipient address rejected: User unknown in local recipient table; from=<> to=<u{i}@mx.test> proto=ESMTP\n"
        )
    };
    let now = unix_now();
    let mut log = String::new();
    for i in 0..3 {
        log += &rcpt(syslog(now - 2 * 3600), "192.0.2.10", i);
    }
    for i in 0..2 {
        log += &rcpt(rfc3339_minus5(now - 600), "2001:db8:73::5", i);
    }
    log += &rcpt(syslog(now - 300), "192.0.2.11", 9);
    log += &format!(
        "{} H=[192.0.2.30] F=<> rejected RCPT <v@mx.test>: Unknown user\n",
        exim(now - 9 * 86_400)
    );
    log += &format!(
        "{} mx postfix/postscreen[2]: PREGREET 11 after 0.1 from [192.0.2.40]:4321: EHLO x\\r\\n\n",
        syslog(now - 60)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log).unwrap();
    let path = path.to_str().unwrap();

    let l = counting_limiter().await;
    let o = mxlimit_tz(&l, "UTC+3", &["--json", "import-log", "--seed", path]).await;
    let listed: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(listed[0]["unknown_recipient"], 5, "{listed}");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("6 unknown recipients added, 0 seeded before, 1 older than the lists keep"),
        "{said}"
    );

    let top = |window: &'static str, by: &'static str| {
        let l = &l;
        async move {
            let o = mxlimit(l, true, &["--json", "top", "--window", window, "--by", by]).await;
            let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
            v["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["source"].as_str().unwrap().to_string(),
                        s["bad_recipients"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let rows = |r: &[(&str, u64)]| {
        r.iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        top("1h", "addr").await,
        rows(&[("2001:db8:73::5", 2), ("192.0.2.11", 1)])
    );
    assert_eq!(
        top("24h", "addr").await,
        rows(&[("192.0.2.10", 3), ("2001:db8:73::5", 2), ("192.0.2.11", 1)])
    );
    assert_eq!(
        top("24h", "net").await,
        rows(&[("192.0.2.0/24", 4), ("2001:db8:73::/64", 2)])
    );

    let again = mxlimit_tz(&l, "UTC+3", &["import-log", "--seed", path]).await;
    out(&again);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("0 unknown recipients added, 6 seeded before"),
        "{said}"
    );
    assert_eq!(top("24h", "net").await[0], ("192.0.2.0/24".to_string(), 4));
}

/// With --seed, a limiter out of reach, a missing token or a bad origin is said before
/// a line is read, and nothing is printed as if it had worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_log_seed_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    std::fs::write(&path, "Jun  3 10:00:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <u@mx.test>: Recipient address rejected: User unknown in local recipient table; from=<> to=<u@mx.test> proto=ESMTP\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mxlimit"))
        .args(["--server", "http://127.0.0.1:1", "import-log", "--seed"])
        .arg(&path)
        .output()
        .unwrap();
    let e = err(&o);
    assert!(e.contains("cannot reach the limiter"), "{e}");
    assert!(!e.contains("lines read") && o.stdout.is_empty(), "{e}");

    let l = counting_limiter().await;
    let o = mxlimit(&l, false, &["import-log", "--seed", path.to_str().unwrap()]).await;
    let e = err(&o);
    assert!(e.contains("not authorized"), "{e}");
    assert!(!e.contains("lines read") && o.stdout.is_empty(), "{e}");
    // An origin the limiter cannot take is refused before the reading too.
    let o = mxlimit(
        &l,
        true,
        &[
            "import-log",
            "--seed",
            "--origin",
            "mx 1",
            path.to_str().unwrap(),
        ],
    )
    .await;
    let e = err(&o);
    assert!(e.contains("origin must be") && o.stdout.is_empty(), "{e}");
}
