//! When the limiter is slow or gone: the agent decides within the deadline, locally
//! (fail-open, with this host's own limits) or with a temporary failure (fail-closed),
//! counts it, and goes back to the limiter by itself when it returns.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mx_agent::config::FailMode;
use mxlimit_core::policy::duration::Span;
use testkit::milter::{MilterClient, Reply};

/// Accepts TCP connections and never answers: a limiter that hangs.
async fn black_hole() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

async fn connect(addr: std::net::SocketAddr, ip: &str) -> (Reply, Duration) {
    let mut c = MilterClient::open(addr).await.unwrap();
    let t = Instant::now();
    let r = c
        .connect("unknown", ip.parse().unwrap(), &[])
        .await
        .unwrap();
    let took = t.elapsed();
    // Keep the session open: ClientConn counts it.
    std::mem::forget(c);
    (r, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_limiter_costs_each_step_at_most_the_deadline_and_local_limits_apply() {
    let hole = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.toml");
    std::fs::write(&local, "[client_rate]\nwindow = \"1h\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n").unwrap();
    let mut cfg = config("mx1", &[hole]);
    cfg.limiter.deadline = Span::millis(100);
    cfg.fallback.policy = Some(local);
    cfg.fallback.retry_after = Span::secs(60);
    let a = agent(&cfg).await;
    let m = tcp(&a.milter[0]);
    let mut took = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..4 {
        let (r, t) = connect(m, "10.9.0.1").await;
        replies.push(r);
        took.push(t);
    }
    // Mail keeps flowing within this host's own limits: 2 per hour for this address.
    assert_eq!(replies[..2], [Reply::Continue, Reply::Continue]);
    assert_eq!(
        replies[2],
        Reply::Code("421 4.3.2 Connection rate limit exceeded.".into())
    );
    // Each step waited at most about the deadline; once the limiter is known to be down
    // (3 failures: the first heartbeat and two sessions) steps do not wait at all.
    for t in &took {
        assert!(
            *t < Duration::from_millis(100) + Duration::from_millis(400),
            "a step took {t:?}"
        );
    }
    assert!(
        took[3] < Duration::from_millis(100),
        "the breaker is open; the step still waited {:?}",
        took[3]
    );
    assert!(a.limiter.stats.fallbacks.load(Ordering::Relaxed) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_a_temporary_failure() {
    let hole = black_hole().await;
    let mut cfg = config("mx1", &[hole]);
    cfg.limiter.deadline = Span::millis(50);
    cfg.fallback.mode = FailMode::Closed;
    let a = agent(&cfg).await;
    let (r, _) = connect(tcp(&a.milter[0]), "10.9.1.1").await;
    assert_eq!(
        r,
        Reply::Code("421 4.3.2 Service temporarily unavailable, try again later".into())
    );
    let got = {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::io::BufReader::new(
            tokio::net::TcpStream::connect(tcp(&a.socketmap[0]))
                .await
                .unwrap(),
        );
        s.get_mut().write_all(b"10:m 10.9.1.1,").await.unwrap();
        mx_agent::adapters::socketmap::read_netstring(&mut s)
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(got, b"TEMP limiter unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_goes_back_to_the_limiter_when_it_returns() {
    let at: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let mut cfg = config("mx1", &[at]);
    cfg.limiter.deadline = Span::millis(100);
    cfg.fallback.retry_after = Span::millis(200);
    let a = agent(&cfg).await;
    let m = tcp(&a.milter[0]);
    // Nothing listens: local decisions (the default limits admit this one).
    let (r, _) = connect(m, "10.9.2.1").await;
    assert_eq!(r, Reply::Continue);
    let before = a.limiter.stats.fallbacks.load(Ordering::Relaxed);
    assert!(before >= 1);
    // The limiter comes up, refusing this address: the agent asks it again by itself.
    let store = std::sync::Arc::new(mxlimit_core::store::memory::MemoryStore::new(
        Default::default(),
    ));
    let policy = std::sync::Arc::new(mxlimit_core::policy::reload::PolicyHandle::fixed(
        testkit::policy("", "Connect:10.9.2\tREJECT\n"),
    ));
    let _lim = testkit::Limiter::start_at(store, policy, at).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, _) = connect(m, "10.9.2.1").await;
        if r == Reply::Code("550 5.7.1 Access denied".into()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never went back to the limiter: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store that does its work, then answers late: a limiter that carries out a call
/// after the caller gave up on it.
struct AnswersLate<S> {
    inner: S,
    delay: Duration,
}

impl<S: mxlimit_core::store::Store> mxlimit_core::store::Store for AnswersLate<S> {
    async fn connect(
        &self,
        op: &mxlimit_core::store::ConnectOp<'_>,
    ) -> Result<mxlimit_core::store::ConnectOutcome, mxlimit_core::store::StoreError> {
        let r = self.inner.connect(op).await;
        tokio::time::sleep(self.delay).await;
        r
    }
    async fn recipient(
        &self,
        op: &mxlimit_core::store::RecipientOp<'_>,
    ) -> Result<mxlimit_core::store::RecipientOutcome, mxlimit_core::store::StoreError> {
        self.inner.recipient(op).await
    }
    async fn offence(
        &self,
        op: &mxlimit_core::store::OffenceOp<'_>,
    ) -> Result<mxlimit_core::store::OffenceOutcome, mxlimit_core::store::StoreError> {
        self.inner.offence(op).await
    }
    async fn disconnect(
        &self,
        source: &mxlimit_core::source::Source,
        lease: mxlimit_core::store::LeaseId<'_>,
    ) -> Result<(), mxlimit_core::store::StoreError> {
        self.inner.disconnect(source, lease).await
    }
    async fn heartbeat(
        &self,
        op: &mxlimit_core::store::HeartbeatOp<'_>,
    ) -> Result<mxlimit_core::store::HeartbeatOutcome, mxlimit_core::store::StoreError> {
        self.inner.heartbeat(op).await
    }
    async fn release(
        &self,
        op: &mxlimit_core::store::ReleaseOp<'_>,
    ) -> Result<u64, mxlimit_core::store::StoreError> {
        self.inner.release(op).await
    }
    async fn ban(
        &self,
        source: &mxlimit_core::source::Source,
        shadow: bool,
    ) -> Result<Option<mxlimit_core::store::Ban>, mxlimit_core::store::StoreError> {
        self.inner.ban(source, shadow).await
    }
    async fn ping(&self) -> Result<(), mxlimit_core::store::StoreError> {
        self.inner.ping().await
    }
    fn kind(&self) -> &'static str {
        "late"
    }
}

// The operator's ledger is not under test here: passed through.
mod ledger_passthrough {
    use ipnet::IpNet;
    use mxlimit_core::source::{Level, Source};
    use mxlimit_core::store::StoreError;
    use mxlimit_core::store::ledger::{
        Batch, Inspection, Ledger, Seed, SeedOutcome, Standing, TopQuery, TopRow,
    };

    impl<S: Ledger> Ledger for super::AnswersLate<S> {
        async fn record(&self, b: &Batch, keep: u32) -> Result<(), StoreError> {
            self.inner.record(b, keep).await
        }
        async fn seed(&self, s: &Seed, keep: u32) -> Result<SeedOutcome, StoreError> {
            self.inner.seed(s, keep).await
        }
        async fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
            self.inner.top(q).await
        }
        async fn inspect(
            &self,
            s: &Source,
            rate: u64,
            bad: u64,
            shadow: bool,
        ) -> Result<Inspection, StoreError> {
            self.inner.inspect(s, rate, bad, shadow).await
        }
        async fn put_block(&self, t: IpNet, ttl: u64, reason: &str) -> Result<(), StoreError> {
            self.inner.put_block(t, ttl, reason).await
        }
        async fn remove_block(&self, t: IpNet) -> Result<bool, StoreError> {
            self.inner.remove_block(t).await
        }
        async fn clear_ban(&self, s: &Source, l: Level, shadow: bool) -> Result<bool, StoreError> {
            self.inner.clear_ban(s, l, shadow).await
        }
        async fn standing(&self, ttl: u64, list: u32) -> Result<Standing, StoreError> {
            self.inner.standing(ttl, list).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_limiter_took_after_the_deadline_is_released_at_the_end() {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1h\"\n";
    let store = AnswersLate {
        inner: std::sync::Arc::new(mxlimit_core::store::memory::MemoryStore::new(
            Default::default(),
        )),
        delay: Duration::from_millis(300),
    };
    let policy = std::sync::Arc::new(mxlimit_core::policy::reload::PolicyHandle::fixed(
        testkit::policy(toml, ""),
    ));
    let lim = testkit::Limiter::start(store, policy).await;
    let mut cfg = config("mx1", &[lim.addr]);
    cfg.limiter.deadline = Span::millis(100);
    let a = agent(&cfg).await;
    let mut c = MilterClient::open(tcp(&a.milter[0])).await.unwrap();
    // The limiter takes the lease but answers after the deadline: decided locally.
    assert_eq!(
        c.connect("unknown", "10.9.3.1".parse().unwrap(), &[])
            .await
            .unwrap(),
        Reply::Continue
    );
    c.quit().await.unwrap();
    // The session's end released the lease the limiter had taken meanwhile.
    let mut direct = lim.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = direct
            .connect(mxlimit_proto::v1::ConnectRequest {
                node: "mx2".into(),
                session_id: "probe".into(),
                client_ip: "10.9.3.1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        if v.reason == "ok" {
            break;
        }
        assert_eq!(v.reason, "client_conn");
        assert!(
            Instant::now() < deadline,
            "the lease taken after the deadline was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_fall_back_too_open_locally_and_closed_with_451() {
    // Fail-open: the limiter is gone; this host counts bad recipients itself and bans.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.toml");
    std::fs::write(&local, "[bad_rcpt]\ntarpit_after = 0\nblock_after = 1\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n").unwrap();
    let gone: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let mut cfg = config("mx1", &[gone]);
    cfg.fallback.policy = Some(local);
    let a = agent(&cfg).await;
    let mut c = MilterClient::open(tcp(&a.milter[0])).await.unwrap();
    assert_eq!(
        c.connect("unknown", "10.9.4.1".parse().unwrap(), &[])
            .await
            .unwrap(),
        Reply::Continue
    );
    c.mail("a@example.org").await.unwrap();
    assert_eq!(
        c.rejected_rcpt("u1@mx.test").await.unwrap(),
        Reply::Continue
    );
    assert_eq!(
        c.rejected_rcpt("u2@mx.test").await.unwrap().code(),
        Some(421),
        "banned by the local limits"
    );

    // Fail-closed: the limiter dies in the middle of a session; the next bad recipient
    // gets a temporary failure.
    let lim = limiter("", "").await;
    let mut cfg = config("mx2", &[lim.addr]);
    cfg.fallback.mode = FailMode::Closed;
    let a = agent(&cfg).await;
    let mut c = MilterClient::open(tcp(&a.milter[0])).await.unwrap();
    assert_eq!(
        c.connect("unknown", "10.9.5.1".parse().unwrap(), &[])
            .await
            .unwrap(),
        Reply::Continue
    );
    c.mail("a@example.org").await.unwrap();
    lim.stop().await;
    assert_eq!(
        c.rejected_rcpt("u1@mx.test").await.unwrap(),
        Reply::Code("451 4.3.2 Service temporarily unavailable, try again later".into())
    );
}
