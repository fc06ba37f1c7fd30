//! The product's claim, end to end, the way an attacker meets it: three MX hosts of
//! two kinds (two private Postfix 3.7 and one sendmail 8.17), each wired exactly as
//! docs/MTA.md recommends, each with its own mx-agent process; the agents share two
//! limiters on one real Redis. Dictionary attacks from an IPv4 /24 and from an IPv6
//! /64 (routed on lo) are spread over the three MX at once, with limits other than the
//! defaults, while a legitimate sender keeps delivering. Then the agents are
//! SIGKILLed under load and restarted.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_core::policy::reload::PolicyHandle;
use testkit::postfix::{Postfix, PostfixOptions};
use testkit::sendmail::{Sendmail, SendmailOptions};
use testkit::smtp::{Reply, Smtp};
use testkit::{Limiter, RedisServer, free_port};

/// Network limits only, none of them the defaults: tarpit past 3 unknown users of a
/// network, ban past 6, for 10 minutes.
const POLICY: &str = "[client_rate]\nwindow = \"1m\"\naddress = 0\nnetwork = 5000\n\
[client_conn]\naddress = 0\nnetwork = 0\n\
[bad_rcpt]\ntarpit_after = 100\nblock_after = 100\nnetwork_tarpit_after = 3\nnetwork_block_after = 6\n\
tarpit_delay = \"300ms\"\nblock_for = \"10m\"\n[envelope]\nbad_rcpt_throttle = 0\n";
const BLOCK_AFTER: usize = 6;
const TARPIT: Duration = Duration::from_millis(300);
/// Refused at connect by an access rule: shows the agents deciding again after a restart.
const ACCESS: &str = "Connect:127.79.9\tREJECT\n";

/// One mx-agent process, with its three adapters on fixed ports so that it can be
/// killed and started again where the MTA expects it.
struct AgentProc {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    milter: u16,
    policy: u16,
    socketmap: u16,
}

impl AgentProc {
    fn start(dir: &std::path::Path, node: &str, limiters: &[SocketAddr]) -> AgentProc {
        let (milter, policy, socketmap) = (free_port(), free_port(), free_port());
        let endpoints: Vec<String> = limiters.iter().map(|a| format!("\"http://{a}\"")).collect();
        let config = dir.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "node = \"{node}\"\n[limiter]\nendpoints = [{}]\ndeadline = \"100ms\"\n\
                 [milter]\nlisten = [\"inet:127.0.0.1:{milter}\"]\n\
                 [policy]\nlisten = [\"inet:127.0.0.1:{policy}\"]\n\
                 [socketmap]\nlisten = [\"inet:127.0.0.1:{socketmap}\"]\n",
                endpoints.join(", ")
            ),
        )
        .unwrap();
        let mut a = AgentProc {
            child: None,
            config,
            log: dir.join(format!("{node}.log")),
            milter,
            policy,
            socketmap,
        };
        a.spawn();
        a
    }

    /// Starts the binary and returns once every adapter listens.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(common::AGENT_BIN)
                .arg("--config")
                .arg(&self.config)
                .env_remove("OTEL_SERVICE_NAME")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.milter, self.policy, self.socketmap] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the agent never listened on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGSTOP or SIGCONT: a wedged agent, and the same one going on.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One MX host: its addresses (IPv4 and IPv6) and a mailbox that exists there.
struct Mx {
    name: &'static str,
    v4: SocketAddr,
    v6: SocketAddr,
    mailbox: &'static str,
    _postfix: Option<Postfix>,
    _sendmail: Option<Sendmail>,
}

struct Fleet {
    mx: Vec<Mx>,
    agents: Vec<AgentProc>,
    limiters: Vec<Limiter>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

async fn fleet() -> Fleet {
    for prefix in ["2001:db8:66::", "2001:db8:67::"] {
        testkit::ipv6::route_on_lo(prefix.parse().unwrap());
    }
    let redis = RedisServer::start();
    let mut limiters = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
            .await
            .unwrap();
        let policy = Arc::new(PolicyHandle::fixed(testkit::policy(POLICY, ACCESS)));
        limiters.push(Limiter::start(store, policy).await);
    }
    let (a, b) = (limiters[0].addr, limiters[1].addr);
    let dir = tempfile::tempdir().unwrap();
    // mx1 asks one limiter, mx2 the other, mx3 both.
    let agents = vec![
        AgentProc::start(dir.path(), "mx1", &[a]),
        AgentProc::start(dir.path(), "mx2", &[b]),
        AgentProc::start(dir.path(), "mx3", &[a, b]),
    ];
    let mut mx = Vec::new();
    for (i, name) in ["mx1", "mx2"].into_iter().enumerate() {
        let pf = Postfix::start(
            name,
            &PostfixOptions {
                milter: Some(format!("inet:127.0.0.1:{}", agents[i].milter)),
                bans: Some(format!("inet:127.0.0.1:{}", agents[i].policy)),
                mailboxes: vec!["alice@mx.test".into()],
                ipv6: true,
                ..Default::default()
            },
        );
        mx.push(Mx {
            name,
            v4: pf.addr(),
            v6: pf.addr6(),
            mailbox: "alice@mx.test",
            _postfix: Some(pf),
            _sendmail: None,
        });
    }
    let sm = Sendmail::start(
        "mx3",
        &SendmailOptions {
            milter: Some(format!("inet:{}@127.0.0.1", agents[2].milter)),
            socketmap: Some(format!("inet:{}@127.0.0.1", agents[2].socketmap)),
            ipv6: true,
            recommended: true,
            ..Default::default()
        },
    );
    mx.push(Mx {
        name: "mx3",
        v4: sm.addr(),
        v6: sm.addr6(),
        mailbox: "root@mx.test",
        _postfix: None,
        _sendmail: Some(sm),
    });
    Fleet {
        mx,
        agents,
        limiters,
        _redis: redis,
        _dir: dir,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Greeting, EHLO and MAIL: the session, or the reply that refused it (or `code 0`:
/// the MTA closed the connection).
async fn open(server: SocketAddr, from: IpAddr) -> Result<Smtp, Reply> {
    let (mut s, greeting) = Smtp::connect(from, server).await.expect("TCP connect");
    if greeting.code != 220 {
        return Err(greeting);
    }
    for cmd in ["EHLO client.example", "MAIL FROM:<sender@example.org>"] {
        let r = s.cmd(cmd).await.expect("SMTP command");
        if r.code != 250 {
            return Err(r);
        }
    }
    Ok(s)
}

/// A legitimate message, start to end; every reply, and how long the slowest took.
async fn deliver(server: SocketAddr, from: IpAddr, to: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = open(server, from)
        .await
        .map_err(|r| format!("refused at connect: {r:?}"))?;
    let r = s.cmd(&format!("RCPT TO:<{to}>")).await.unwrap();
    if r.code != 250 {
        return Err(format!("RCPT {to}: {r:?}"));
    }
    let r = s.message("sender@example.org", to).await.unwrap();
    if r.code != 250 {
        return Err(format!("message: {r:?}"));
    }
    let _ = s.cmd("QUIT").await;
    Ok(t.elapsed())
}

/// What one attack did.
#[derive(Debug, Default)]
struct Attack {
    /// Every "unknown user" answer the attacker got (550/553).
    unknown: Vec<Reply>,
    /// Per MX, the reply that finally refused a new session at connect.
    refused: Vec<Reply>,
}

/// The attacker: on every MX at once, sessions from ever new addresses of one network,
/// each trying `per_session` made-up users, until every MX refuses it at connect.
async fn attack(f: &Fleet, source: fn(usize) -> IpAddr, v6: bool, per_session: usize) -> Attack {
    let mut tasks = Vec::new();
    for (i, mx) in f.mx.iter().enumerate() {
        let server = if v6 { mx.v6 } else { mx.v4 };
        let n = f.mx.len();
        tasks.push(tokio::spawn(async move {
            let mut unknown = Vec::new();
            for k in 0..40 {
                let from = source(k * n + i);
                let mut s = match open(server, from).await {
                    Ok(s) => s,
                    Err(refusal) => return (unknown, refusal),
                };
                for j in 0..per_session {
                    // A reset is the MTA closing the session too.
                    let Ok(r) = s.cmd(&format!("RCPT TO:<dict{i}x{k}x{j}@mx.test>")).await else {
                        break;
                    };
                    match r.code {
                        550 | 553 => unknown.push(r),
                        // Banned mid-session (421), or closed by the MTA.
                        421 | 0 => break,
                        _ => panic!("unexpected answer to an unknown user: {r:?}"),
                    }
                }
                let _ = s.cmd("QUIT").await;
            }
            panic!(
                "never refused at connect, {} unknown users answered",
                unknown.len()
            );
        }));
    }
    let mut out = Attack::default();
    for t in tasks {
        let (unknown, refusal) = t.await.unwrap();
        out.unknown.extend(unknown);
        out.refused.push(refusal);
    }
    out
}

/// A legitimate sender delivering round robin over every MX until `stop`; returns the
/// messages delivered, or the first failure.
fn legitimate(
    f: &Fleet,
    from: IpAddr,
    v6: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    let targets: Vec<(SocketAddr, &'static str, &'static str)> =
        f.mx.iter()
            .map(|m| (if v6 { m.v6 } else { m.v4 }, m.mailbox, m.name))
            .collect();
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) || n < targets.len() {
            let (server, to, name) = targets[n % targets.len()];
            deliver(server, from, to)
                .await
                .map_err(|e| format!("{name}: legitimate message {n} from {from}: {e}"))?;
            n += 1;
        }
        Ok(n)
    })
}

/// Waits (bounded: the MTA reconnects to its agent for a new session) until `m`
/// refuses `blocked` (of the `Connect:127.79.9 REJECT` rule) at connect again: its
/// agent decides.
async fn decides_again(m: &Mx, blocked: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match open(m.v4, blocked).await {
            Err(r) if r.code >= 500 => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{}: the agent never decided again: {:?}",
                    m.name,
                    other.err()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A session of the attacking network opened before the attack, one valid recipient
/// accepted: it is still open when the ban lands.
async fn held(server: SocketAddr, from: IpAddr, mailbox: &str) -> Smtp {
    let mut s = open(server, from).await.expect("held session opens");
    let r = s.cmd(&format!("RCPT TO:<{mailbox}>")).await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    s
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
async fn contained(f: &Fleet, v6: bool) {
    let (attacker, legit): (fn(usize) -> IpAddr, IpAddr) = if v6 {
        (
            |k| ip(&format!("2001:db8:66::{:x}", 0x100 + k)),
            ip("2001:db8:67::1"),
        )
    } else {
        (|k| ip(&format!("127.77.0.{}", 1 + k)), ip("127.78.0.1"))
    };
    let family = if v6 { "IPv6" } else { "IPv4" };
    let addr = |m: &Mx| if v6 { m.v6 } else { m.v4 };
    let mut held_sessions = Vec::new();
    for (i, m) in f.mx.iter().enumerate() {
        held_sessions.push(held(addr(m), attacker(200 + i), m.mailbox).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sender = legitimate(f, legit, v6, stop.clone());

    // Four unknown users, taking turns over the MX, the fourth through sendmail: the
    // network goes past tarpit_after (3), and that fourth answer already waits.
    let mut unknown = Vec::new();
    for (k, i) in [0, 1, 0, 2].into_iter().enumerate() {
        let mut s = open(addr(&f.mx[i]), attacker(150 + k)).await.expect("open");
        let r = s.cmd(&format!("RCPT TO:<early{k}@mx.test>")).await.unwrap();
        assert!(
            matches!(r.code, 550 | 553),
            "{family} {}: {r:?}",
            f.mx[i].name
        );
        unknown.push(r);
    }
    assert!(
        unknown[3].took >= TARPIT,
        "{family}: sendmail's answer past the threshold did not wait: {:?}",
        unknown[3]
    );
    // From now on every RCPT of the network waits on every MX, from the first RCPT of a
    // new session: a valid recipient (accepted) as much as an unknown user (rejected).
    for (i, m) in f.mx.iter().enumerate() {
        let mut s = open(addr(m), attacker(160 + i)).await.expect("open");
        let r = s.cmd(&format!("RCPT TO:<{}>", m.mailbox)).await.unwrap();
        assert!(
            r.code == 250 && r.took >= TARPIT,
            "{family} {}: valid RCPT {r:?}",
            m.name
        );
        // Two more unknown users (5 and 6: block_after is 6), on the two Postfix.
        if i < 2 {
            let r = s.cmd(&format!("RCPT TO:<late{i}@mx.test>")).await.unwrap();
            assert!(
                r.code == 550 && r.took >= TARPIT,
                "{family} {}: {r:?}",
                m.name
            );
            unknown.push(r);
        }
    }

    // The attack on every MX at once: its first unknown user bans the network.
    let a = attack(f, attacker, v6, 3).await;
    stop.store(true, Ordering::Relaxed);
    let delivered = sender
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{family}: {e}"));
    assert!(
        delivered >= f.mx.len(),
        "{family}: {delivered} legitimate messages"
    );

    // Cluster-wide: the ban took the 7th unknown user; what was in flight on the other
    // MX when it landed is all the attacker got besides.
    unknown.extend(a.unknown);
    let n = unknown.len();
    assert!(
        n > BLOCK_AFTER && n <= BLOCK_AFTER + f.mx.len(),
        "{family}: {n} unknown-user answers for a ban past {BLOCK_AFTER} over {} MX: {unknown:?}",
        f.mx.len(),
    );
    for (m, r) in f.mx.iter().zip(&a.refused) {
        assert_eq!(r.code, 421, "{family} {}: refused with {r:?}", m.name);
    }
    // Every MX refuses the whole network at connect, from an address never seen.
    for m in &f.mx {
        let r = open(addr(m), attacker(250)).await.err();
        assert_eq!(r.map(|r| r.code), Some(421), "{family} {}", m.name);
    }
    // Sessions open when the ban landed get 421 at their next RCPT, even to an
    // unknown user (which the MTA would refuse itself).
    for (m, mut s) in f.mx.iter().zip(held_sessions) {
        let r = s
            .cmd("RCPT TO:<held-after-ban@mx.test>")
            .await
            .expect("held RCPT");
        assert_eq!(r.code, 421, "{family} {}: a held session got {r:?}", m.name);
    }
    // The legitimate sender is never refused, after the ban too.
    for m in &f.mx {
        deliver(addr(m), legit, m.mailbox)
            .await
            .unwrap_or_else(|e| panic!("{family} {}: {e}", m.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_attacks_over_three_mx_of_two_kinds_are_banned_everywhere_ipv4_and_ipv6() {
    let f = fleet().await;
    contained(&f, false).await;
    contained(&f, true).await;
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_flows_while_the_agents_are_killed_and_they_take_over_again_when_restarted() {
    let mut f = fleet().await;
    let blocked = ip("127.79.9.1");
    for m in &f.mx {
        let r = open(m.v4, blocked).await.err();
        assert!(
            r.as_ref().is_some_and(|r| r.code >= 500),
            "{}: Connect: REJECT applies: {r:?}",
            m.name
        );
    }
    // Sessions in flight when the agents die: envelope begun, message not yet sent.
    let mut in_flight = Vec::new();
    for (i, m) in f.mx.iter().enumerate() {
        in_flight.push(held(m.v4, ip(&format!("127.78.1.{}", i + 1)), m.mailbox).await);
    }
    // Mail flows throughout: one sender over IPv4, one over IPv6.
    let stop = Arc::new(AtomicBool::new(false));
    let senders = [
        legitimate(&f, ip("127.78.0.2"), false, stop.clone()),
        legitimate(&f, ip("2001:db8:67::2"), true, stop.clone()),
    ];
    for a in &mut f.agents {
        a.kill();
    }
    // With every agent gone, each MTA goes on by its own default for a missing
    // milter, policy service and socketmap: the in-flight messages are delivered,
    // and new sessions are taken, each step well within the MTAs' timeouts.
    for ((m, mut s), i) in f.mx.iter().zip(in_flight).zip(0..) {
        let r = s.message("sender@example.org", m.mailbox).await.unwrap();
        assert_eq!(r.code, 250, "{}: in-flight message: {r:?}", m.name);
        let took = deliver(m.v4, ip(&format!("127.78.2.{}", i + 1)), m.mailbox)
            .await
            .unwrap_or_else(|e| panic!("{} with its agent dead: {e}", m.name));
        assert!(
            took < Duration::from_secs(5),
            "{}: a message took {took:?}",
            m.name
        );
    }
    for a in &mut f.agents {
        a.spawn();
    }
    // Restarted, the agents decide again: the access rule refuses at connect on every
    // MX (asked of each new session; bounded wait for the MTA's reconnect).
    for m in &f.mx {
        decides_again(m, blocked).await;
    }
    // The per-RCPT ban checks work again too: sessions of 127.79.20.0/24 open on
    // every MX when the network is banned (by rejected recipients another MX reported)
    // get 421 at a following RCPT. A Postfix process whose policy connection died
    // with the old agent may miss one check (try_limit=1, then DUNNO) and reconnect.
    let mut open_sessions = Vec::new();
    for (i, m) in f.mx.iter().enumerate() {
        open_sessions.push(held(m.v4, ip(&format!("127.79.20.{}", i + 1)), m.mailbox).await);
    }
    // One past network_block_after, as another MX's milter would report them.
    f.limiters[1]
        .bad_rcpts("127.79.20.99", BLOCK_AFTER as u32 + 1)
        .await;
    for (m, mut s) in f.mx.iter().zip(open_sessions) {
        let mut replies = Vec::new();
        for _ in 0..3 {
            let r = s.cmd(&format!("RCPT TO:<{}>", m.mailbox)).await.unwrap();
            let banned = r.code == 421;
            replies.push(r);
            if banned {
                break;
            }
        }
        assert_eq!(
            replies.last().map(|r| r.code),
            Some(421),
            "{}: after the restart, no ban at RCPT: {replies:?}",
            m.name
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let n = s.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(n >= f.mx.len(), "{n} messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_agent_costs_bounded_waits_postfix_delivers_and_sendmail_defers() {
    let f = fleet().await;
    for a in &f.agents {
        a.signal("-STOP");
    }
    // A stopped agent accepts connections (the kernel does) and never answers, so
    // each MTA waits out its timeout. Postfix then goes on without it: the milter's
    // milter_command_timeout (10 s) at connect, the policy service's timeout (10 s) at
    // RCPT. sendmail skips the milter after T=R (10 s), but a socket map read timeout
    // is a temporary failure whatever the map's flags (socket_map_lookup calls
    // syserr("451 4.3.0 ...")): the session is deferred, not hung, and not lost.
    let bound = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for (i, m) in f.mx.iter().enumerate() {
        let (server, to, name) = (m.v4, m.mailbox, m.name);
        tasks.push(tokio::spawn(async move {
            let from = ip(&format!("127.78.3.{}", i + 1));
            let (mut s, greeting) = Smtp::connect(from, server).await.unwrap();
            let mut replies = vec![greeting];
            for cmd in [
                "EHLO client.example".to_string(),
                "MAIL FROM:<sender@example.org>".to_string(),
                format!("RCPT TO:<{to}>"),
            ] {
                replies.push(s.cmd(&cmd).await.unwrap());
            }
            if replies.iter().all(|r| r.code < 400) {
                replies.push(s.message("sender@example.org", to).await.unwrap());
            }
            (name, replies)
        }));
    }
    for t in tasks {
        let (name, replies) = t.await.unwrap();
        for r in &replies {
            assert!(r.took < bound, "{name}: a step took {:?}: {r:?}", r.took);
        }
        let codes: Vec<u32> = replies.iter().map(|r| r.code).collect();
        if name == "mx3" {
            assert_eq!(replies[0].code, 451, "{name}: {replies:?}");
            assert!(
                replies[0]
                    .text
                    .contains("socket_map_lookup(mxlimit_bans): read timeout"),
                "{name}: {replies:?}"
            );
        } else {
            assert_eq!(codes, [220, 250, 250, 250, 250], "{name}: {replies:?}");
        }
    }
    // Going on, the agents decide again, and sendmail takes mail again.
    for a in &f.agents {
        a.signal("-CONT");
    }
    for m in &f.mx {
        decides_again(m, ip("127.79.9.2")).await;
        deliver(m.v4, ip("127.78.3.9"), m.mailbox)
            .await
            .unwrap_or_else(|e| panic!("{} after the agent went on: {e}", m.name));
    }
}
