//! The Redis store against real servers: bounded memory under floods, a Redis that
//! goes away and comes back, and bounded ban lists.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_server::store::redis::{RedisConfig, RedisStore};
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::source::Level;
use mxlimit_core::store::ledger::{Batch, Ledger};
use mxlimit_proto::v1::{Action, HeartbeatRequest};
use support::*;
use testkit::{Limiter, RedisCluster, RedisServer};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn one_limiter(redis: &RedisServer, toml: &str) -> Limiter {
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    Limiter::start(store, Arc::new(PolicyHandle::fixed(policy(toml, "")))).await
}

/// Every key with its PTTL.
fn keys_with_ttl(redis: &RedisServer) -> Vec<(String, i64)> {
    redis
        .cmd(&["KEYS", "*"])
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| {
            (
                k.to_string(),
                redis
                    .cmd(&["PTTL", k])
                    .trim_start_matches(':')
                    .parse()
                    .unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_ipv6_addresses_does_not_grow_redis() {
    let redis = RedisServer::start();
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 5\nnetwork = 50\n[client_conn]\naddress = 0\nnetwork = 0\nlease_ttl = \"1h\"\n\
                [bad_rcpt]\nblock_after = 0\nnetwork_block_after = 0\n";
    let l = one_limiter(&redis, toml).await;
    let mut c = l.client().await;
    // 5000 addresses of one /64, each connecting once and sending one bad RCPT.
    let mut admitted = 0;
    for i in 0..5000u32 {
        let ip = format!("2001:db8:1:2:{:x}:{:x}::1", i >> 16, i & 0xffff);
        if action(&connect(&mut c, "mx1", &format!("s{i}"), &ip).await) == Action::Accept {
            admitted += 1;
            bad_rcpt(&mut c, "mx1", &format!("s{i}"), &ip, "x@y").await;
        }
    }
    assert_eq!(admitted, 50, "the network limit holds");
    let keys = keys_with_ttl(&redis);
    // Per admitted address: its rate log, its leases, its bad-RCPT log; then a few
    // network keys. Refused connections leave nothing behind.
    let (ledger, decisions): (Vec<_>, Vec<_>) = keys.iter().partition(|(k, _)| k.contains("{adm}"));
    assert!(
        decisions.len() <= 3 * 50 + 10,
        "{} keys after the flood",
        decisions.len()
    );
    // The operator's ledger: per top list this minute's and this hour's bucket (and
    // the ones before, if the flood crossed a boundary), each bounded by --top-keep;
    // the ban index and the nodes' lease counts.
    assert!(ledger.len() <= 4 * 4 + 2, "ledger keys: {ledger:?}");
    for (k, ttl) in &keys {
        // PTTL: -1 no expiry, -2 expired since KEYS, 0 less than a millisecond left.
        assert_ne!(*ttl, -1, "{k} has no expiry");
    }
    for (k, ttl) in &decisions {
        assert!(*ttl <= 3_600_000 * 4, "{k} lives {ttl} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_when_networks_are_unlimited() {
    let redis = RedisServer::start();
    let toml = "[client_rate]\nwindow = \"2s\"\naddress = 3\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let l = one_limiter(&redis, toml).await;
    let mut c = l.client().await;
    for i in 0..500u32 {
        let ip = format!("2001:db8:{:x}::1", i + 1);
        connect(&mut c, "mx1", &format!("s{i}"), &ip).await;
        bad_rcpt(&mut c, "mx1", &format!("s{i}"), &ip, "x@y").await;
    }
    c.heartbeat(HeartbeatRequest {
        node: "mx1".into(),
        epoch: "e1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let keys = keys_with_ttl(&redis);
    assert!(
        keys.len() > 500,
        "the flood left state, as it should while it lasts"
    );
    for (k, ttl) in &keys {
        assert_ne!(*ttl, -1, "{k} has no expiry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_goes_away_fails_calls_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let l = one_limiter(&redis, "").await;
    let mut c = l.client().await;
    let mut health = HealthClient::new(channel(l.addr).await);
    let status = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: limiter_server::server::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(
        action(&connect(&mut c, "mx1", "before", "10.1.1.1").await),
        Action::Accept
    );
    assert_eq!(status(&mut health).await, ServingStatus::Serving as i32);

    redis.kill();
    let started = Instant::now();
    let err = c
        .connect(connect_req("mx1", "during", "10.1.1.1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with("store unavailable"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead Redis held the call {:?}",
        started.elapsed()
    );
    // Readiness follows the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&mut health).await != ServingStatus::NotServing as i32 {
        assert!(Instant::now() < deadline, "health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis comes back empty (no scripts loaded): the limiter reconnects and reloads them.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.connect(connect_req("mx1", "after", "10.1.1.1")).await {
            Ok(r) => {
                assert_eq!(action(&r.into_inner().verdict.unwrap()), Action::Accept);
                break;
            }
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
        }
        assert!(Instant::now() < deadline, "the limiter never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&mut health).await != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < deadline,
            "health never turned SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under load, every call answers within the Redis timeout (plus a margin for this
/// shared machine) while Redis is killed, comes back empty, and hangs (SIGSTOP): never
/// the request timeout's CANCELLED. Health follows the store both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answer_within_the_redis_timeout_while_redis_dies_returns_and_hangs() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    const MARGIN: Duration = Duration::from_millis(400);
    let mut redis = RedisServer::start();
    let mut config = RedisConfig::new(vec![redis.url()]);
    config.response_timeout = TIMEOUT;
    let store = RedisStore::connect(&config).await.unwrap();
    let l = Limiter::start(store, Arc::new(PolicyHandle::fixed(policy("", "")))).await;
    let health = HealthClient::new(channel(l.addr).await);
    let serving = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: limiter_server::server::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
                == ServingStatus::Serving as i32
        }
    };
    let wait_health = |want: bool, within: Duration, what: &'static str| {
        let mut h = health.clone();
        async move {
            let deadline = Instant::now() + within;
            while serving(&mut h).await != want {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let load = Load::start(&l).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    let killed = Instant::now();
    wait_health(
        false,
        Duration::from_secs(2),
        "health never turned NOT_SERVING after a kill",
    )
    .await;
    let to_not_serving = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    let back = Instant::now();
    wait_health(
        true,
        Duration::from_secs(10),
        "health never turned SERVING after the restart",
    )
    .await;
    let to_serving = back.elapsed();

    redis.pause();
    let paused = Instant::now();
    wait_health(
        false,
        Duration::from_secs(2),
        "health never turned NOT_SERVING while paused",
    )
    .await;
    let paused_to_not_serving = paused.elapsed();
    // Calls of many store scripts end at the first that fails, not after them all.
    let leases: Vec<mxlimit_proto::v1::Lease> = (0..2000)
        .map(|i| mxlimit_proto::v1::Lease {
            session_id: format!("r{i}"),
            client_ip: format!("10.{}.{}.1", 100 + i / 250, i % 250),
        })
        .collect();
    let mut c = l.client().await;
    let t = Instant::now();
    let e = c
        .release(mxlimit_proto::v1::ReleaseRequest {
            node: "mx1".into(),
            epoch: "e1".into(),
            leases: leases.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "Release: {e:?}");
    let e = c
        .heartbeat(HeartbeatRequest {
            node: "mx1".into(),
            epoch: "e1".into(),
            leases,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "Heartbeat: {e:?}");
    assert!(
        t.elapsed() <= 2 * (TIMEOUT + MARGIN),
        "a Release and a Heartbeat of 2 000 leases took {:?} with Redis hung",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.resume();
    wait_health(
        true,
        Duration::from_secs(10),
        "health never turned SERVING after the pause",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = load.stop().await;
    eprintln!(
        "{}; NOT_SERVING {to_not_serving:?} after the kill, {paused_to_not_serving:?} after \
         the pause; SERVING {to_serving:?} after the restart",
        Load::summary(&all)
    );
    Load::check(&all, TIMEOUT + MARGIN);
}

/// Every caller's calls: how long each took, and how it ended.
type Calls = Vec<(Duration, tonic::Code)>;

/// 16 callers, one Connect after another, each call's time and outcome kept.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<Calls>>,
}

impl Load {
    async fn start(l: &Limiter) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut callers = Vec::new();
        for w in 0..16 {
            let (mut c, stop) = (l.client().await, stop.clone());
            callers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ip = format!("10.{}.{w}.{}", 9 + i % 50, i % 250);
                    let req = connect_req("mx1", &format!("w{w}-{i}"), &ip);
                    let t = Instant::now();
                    let code = match c.connect(req).await {
                        Ok(_) => tonic::Code::Ok,
                        Err(e) => e.code(),
                    };
                    seen.push((t.elapsed(), code));
                    i += 1;
                }
                seen
            }));
        }
        Load { stop, callers }
    }

    async fn stop(self) -> Calls {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for c in self.callers {
            all.extend(c.await.unwrap());
        }
        all
    }

    fn summary(all: &Calls) -> String {
        let slowest = all.iter().map(|(t, _)| *t).max().unwrap_or_default();
        let failed = all.iter().filter(|(_, c)| *c != tonic::Code::Ok).count();
        format!("{} calls, {failed} failed, slowest {slowest:?}", all.len())
    }

    /// The outage was seen; every call ended OK or UNAVAILABLE, within `bound`.
    fn check(all: &Calls, bound: Duration) {
        assert!(
            all.iter().any(|(_, c)| *c != tonic::Code::Ok),
            "the outage was seen"
        );
        for (t, code) in all {
            assert!(
                matches!(code, tonic::Code::Ok | tonic::Code::Unavailable),
                "{code:?} after {t:?}"
            );
            assert!(*t <= bound, "a call took {t:?}");
        }
    }
}

/// A Cluster primary fails over, by hand (`CLUSTER FAILOVER`) and by dying (SIGKILL,
/// its replica promoted after the node timeout), under load: calls stay within the
/// Redis timeout, and the limiter follows the new primaries by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_bounded_while_a_cluster_primary_fails_over() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    const MARGIN: Duration = Duration::from_millis(400);
    let mut cluster = RedisCluster::start_with_replicas(3);
    let mut config = RedisConfig::new(cluster.urls());
    config.response_timeout = TIMEOUT;
    let store = RedisStore::connect(&config).await.unwrap();
    let l = Limiter::start(store, Arc::new(PolicyHandle::fixed(policy("", "")))).await;
    let role = |n: &RedisServer| n.cmd(&["INFO", "replication"]);
    let is_primary = |n: &RedisServer| role(n).contains("role:master");
    let load = Load::start(&l).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // By hand: a replica takes over from its primary.
    let r = (0..cluster.nodes.len())
        .find(|&i| !is_primary(&cluster.nodes[i]))
        .expect("a replica");
    let old = role(&cluster.nodes[r])
        .lines()
        .find_map(|l| l.trim().strip_prefix("master_port:").map(str::to_string))
        .expect("its primary's port");
    let old = (0..cluster.nodes.len())
        .find(|&i| cluster.nodes[i].port.to_string() == old)
        .expect("the primary among the nodes");
    // A manual failover needs the replica in sync, and gives up after 5 s (Redis's
    // manual failover timeout) on a machine busy with other tests: asked again then.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut asked = None;
    while !is_primary(&cluster.nodes[r]) || is_primary(&cluster.nodes[old]) {
        assert!(Instant::now() < deadline, "the manual failover never ended");
        let synced = role(&cluster.nodes[r]).contains("master_link_status:up");
        if synced && asked.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(6)) {
            assert!(
                cluster.nodes[r]
                    .cmd(&["CLUSTER", "FAILOVER"])
                    .contains("OK")
            );
            asked = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // By dying: the new primary is killed; its replica (the old one) is promoted.
    cluster.nodes[r].kill();
    let killed = Instant::now();
    while !is_primary(&cluster.nodes[old]) {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the replica was never promoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = killed.elapsed();
    // Every network answers again (the load's addresses span all three shards).
    let mut c = l.client().await;
    let back = Instant::now();
    let mut ok_in_a_row = 0;
    let mut i = 0;
    while ok_in_a_row < 50 {
        let ip = format!("10.{}.1.{}", 9 + i % 50, i % 250);
        match c
            .connect(connect_req("mx2", &format!("after-{i}"), &ip))
            .await
        {
            Ok(_) => ok_in_a_row += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                ok_in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the limiter never reached the new primary"
        );
        i += 1;
    }
    let recovered = back.elapsed();
    let all = load.stop().await;
    eprintln!(
        "{}; replica promoted {promoted:?} after the kill, all networks answering \
         {recovered:?} after that",
        Load::summary(&all)
    );
    Load::check(&all, TIMEOUT + MARGIN);
}

/// A flood of distinct IPv6 /64s against a Redis capped by `maxmemory` (volatile-ttl,
/// as docs and chart set it): Redis stays within its cap by dropping the keys closest
/// to their end, every decision is still answered, a ban (the longest-lived key)
/// outlives the flood, and the store's usage reports the cap and the evictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_stays_within_maxmemory_and_bans_outlive_it() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "volatile-ttl"]);
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 100\nnetwork = 1000\n\
                [client_conn]\naddress = 10\nnetwork = 100\nlease_ttl = \"10m\"\n\
                [bad_rcpt]\nblock_after = 1\nnetwork_block_after = 0\nblock_for = \"1d\"\n";
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    let l = Limiter::start(store, Arc::new(PolicyHandle::fixed(policy(toml, "")))).await;
    let mut c = l.client().await;
    let banned = "192.0.2.66";
    assert_eq!(
        action(&connect(&mut c, "mx1", "b0", banned).await),
        Action::Accept
    );
    bad_rcpt(&mut c, "mx1", "b0", banned, "nobody@example.org").await;
    bad_rcpt(&mut c, "mx1", "b0", banned, "noone@example.org").await;
    assert_eq!(
        action(&connect(&mut c, "mx1", "b1", banned).await),
        Action::Disconnect
    );

    let mut callers = Vec::new();
    for w in 0..16u32 {
        let mut c = l.client().await;
        callers.push(tokio::spawn(async move {
            for i in 0..800u32 {
                let ip = format!("2001:db8:{w:x}:{i:x}::1");
                let v = connect(&mut c, "mx2", &format!("f{w}-{i}"), &ip).await;
                assert_eq!(action(&v), Action::Accept, "{ip}");
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let used: u64 = redis
        .cmd(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(used <= 3 * 1024 * 1024 + 256 * 1024, "used_memory {used}");
    let probe = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    let u = mxlimit_core::store::Store::usage(&probe)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "12 800 networks into 3 MB: used {used} bytes, {} keys evicted",
        u.evicted
    );
    assert_eq!((u.unit, u.limit), ("bytes", 3 * 1024 * 1024));
    assert!(u.evicted > 0, "12 800 networks do not fit in 3 MB: {u:?}");
    let v = connect(&mut c, "mx1", "b2", banned).await;
    assert_eq!(
        (action(&v), v.reason.as_str()),
        (Action::Disconnect, "banned"),
        "the day-long ban outlived a flood that evicted {} keys",
        u.evicted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_redis_or_no_redis_is_a_clear_error() {
    let port = free_port();
    let err = RedisStore::connect(&RedisConfig::new(vec![format!("redis://127.0.0.1:{port}")]))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("redis:"), "{err}");
    let err = RedisStore::connect(&RedisConfig::new(vec![]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "no Redis URL given");
}

/// Sessions that never send Disconnect (Postfix policy delegation cannot) must not pile
/// up in the lease sets while nothing limits concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_sets_hold_only_live_sessions_without_a_limit() {
    let redis = RedisServer::start();
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let l = one_limiter(&redis, toml).await;
    let mut c = l.client().await;
    for i in 0..300 {
        connect(&mut c, "mx1", &format!("s{i}"), "10.20.0.1").await;
    }
    let key = "mxl:{n4:10.20.0.0/24}:c";
    assert_eq!(redis.cmd(&["ZCARD", key]), ":300");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    connect(&mut c, "mx1", "last", "10.20.0.1").await;
    assert_eq!(
        redis.cmd(&["ZCARD", key]),
        ":1",
        "expired leases are dropped"
    );
    assert_eq!(redis.cmd(&["ZCARD", "mxl:{n4:10.20.0.0/24}:l"]), ":1");
}

/// With a session limit, expired leases are swept only when a count reaches the limit
/// (a cheaper Connect): the sets never hold more than the limit, and an expired lease
/// never refuses anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_sets_never_outgrow_the_session_limit() {
    let redis = RedisServer::start();
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 3\nnetwork = 5\nlease_ttl = \"1s\"\n";
    let l = one_limiter(&redis, toml).await;
    let mut c = l.client().await;
    let mut admitted = 0;
    for i in 0..20 {
        let ip = format!("10.21.0.{}", 1 + i % 4);
        admitted +=
            (action(&connect(&mut c, "mx1", &format!("s{i}"), &ip).await) == Action::Accept) as u32;
    }
    assert_eq!(admitted, 5);
    let key = "mxl:{n4:10.21.0.0/24}:c";
    assert_eq!(redis.cmd(&["ZCARD", key]), ":5");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // All five expired: the counts reach the limits, the sweep empties the sets.
    for i in 0..3 {
        let v = connect(&mut c, "mx1", &format!("t{i}"), "10.21.0.1").await;
        assert_eq!(action(&v), Action::Accept, "{v:?}");
    }
    let v = connect(&mut c, "mx1", "t3", "10.21.0.1").await;
    assert_eq!(v.reason, "client_conn", "3 live sessions of the address");
    assert_eq!(redis.cmd(&["ZCARD", key]), ":3");
    assert_eq!(redis.cmd(&["ZCARD", "mxl:{n4:10.21.0.0/24}:l"]), ":3");
}

/// One decision, one store round trip: a single EVALSHA per Connect, Recipient and
/// Disconnect, on one server and on a cluster (once the node's registry knows the
/// network); none for a refusal that still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evalsha_per_decision_on_a_server_and_on_a_cluster() {
    for backend in [Backend::Redis, Backend::Cluster] {
        let mut p = Pair::start(backend, policy("", "")).await;
        let ports: Vec<u16> = match (&p.redis, &p.cluster) {
            (Some(r), _) => vec![r.port],
            (_, Some(c)) => c.nodes.iter().map(|n| n.port).collect(),
            _ => unreachable!(),
        };
        let monitors: Vec<testkit::redis::Monitor> = ports
            .iter()
            .map(|p| testkit::redis::Monitor::start(*p))
            .collect();
        let seen = |m: &[testkit::redis::Monitor]| {
            // MONITOR lines arrive asynchronously; the commands were answered already,
            // so they are on their way: wait until the count settles.
            let mut last = usize::MAX;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let all: Vec<String> = m.iter().flat_map(|x| x.commands()).collect();
                if all.len() == last {
                    m.iter().for_each(|x| x.clear());
                    return all;
                }
                last = all.len();
            }
        };
        // The first Connect of a node in a network also writes the node's registry (on a
        // cluster at the same time, on another shard; on one server in the same script).
        connect(&mut p.a, "mx1", "warm", "10.30.0.1").await;
        let warm = seen(&monitors);
        let want_warm = if backend == Backend::Cluster { 2 } else { 1 };
        assert_eq!(
            warm,
            vec!["EVALSHA".to_string(); want_warm],
            "{backend:?}: first Connect"
        );
        connect(&mut p.a, "mx1", "s1", "10.30.0.2").await;
        assert_eq!(seen(&monitors), ["EVALSHA"], "{backend:?}: Connect");
        bad_rcpt(&mut p.a, "mx1", "s1", "10.30.0.2", "nobody@x").await;
        assert_eq!(seen(&monitors), ["EVALSHA"], "{backend:?}: Recipient");
        disconnect(&mut p.a, "mx1", "s1", "10.30.0.2").await;
        assert_eq!(seen(&monitors), ["EVALSHA"], "{backend:?}: Disconnect");
        // A refusal that holds costs the store nothing until it ends.
        p.policy.set(policy("", "ClientRate:10.30.0.3\t1\n"));
        connect(&mut p.a, "mx1", "s2", "10.30.0.3").await;
        let refused = connect(&mut p.a, "mx1", "s3", "10.30.0.3").await;
        assert!(refused.hold_ms > 0, "{refused:?}");
        assert_eq!(seen(&monitors), ["EVALSHA"; 2], "{backend:?}: refused");
        let held = connect(&mut p.a, "mx1", "s4", "10.30.0.3").await;
        assert_eq!(held.reason, "client_rate");
        assert_eq!(seen(&monitors), Vec::<String>::new(), "{backend:?}: held");
        // Ended sessions of three networks: one script on a server, one per network
        // (each network's keys on its own slot) on a cluster.
        let ips = ["10.30.0.9", "10.31.0.9", "10.32.0.9"];
        for (i, ip) in ips.iter().enumerate() {
            connect(&mut p.a, "mx1", &format!("r{i}"), ip).await;
        }
        seen(&monitors);
        let leases = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| mxlimit_proto::v1::Lease {
                session_id: format!("r{i}"),
                client_ip: ip.to_string(),
            })
            .collect();
        let released =
            p.a.release(mxlimit_proto::v1::ReleaseRequest {
                node: "mx1".into(),
                epoch: "e1".into(),
                leases,
            })
            .await
            .unwrap()
            .into_inner()
            .released;
        assert_eq!(released, 3);
        let want = if backend == Backend::Cluster { 3 } else { 1 };
        assert_eq!(
            seen(&monitors),
            vec!["EVALSHA".to_string(); want],
            "{backend:?}: Release"
        );
    }
}

/// The ban list is cut to the bans with the most time left, and all of them are
/// counted, in Lua on Redis and on a Cluster as in memory.
async fn ban_lists_keep_the_longest_bans<S: Ledger>(store: S) {
    let bans = [
        ("192.0.2.1", 10_000),
        ("192.0.2.2", 30_000),
        ("192.0.2.3", 20_000),
    ];
    let batch = Batch {
        bans: bans
            .iter()
            .map(|(ip, ms)| (Level::Address, ip.to_string(), *ms))
            .collect(),
        ..Default::default()
    };
    store.record(&batch, 100).await.unwrap();
    let st = store.standing(60_000, 2).await.unwrap();
    assert_eq!(st.ban_count, 3);
    let listed: Vec<&str> = st.bans.iter().map(|b| b.source.as_str()).collect();
    assert_eq!(listed, ["192.0.2.2", "192.0.2.3"]);
    assert!(st.bans[0].expires_in_ms > 20_000 && st.bans[0].expires_in_ms <= 30_000);
    let counted = store.standing(60_000, 0).await.unwrap();
    assert_eq!((counted.ban_count, counted.bans.len()), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_lists_keep_the_longest_bans_on_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    ban_lists_keep_the_longest_bans(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_lists_keep_the_longest_bans_on_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let store = RedisStore::connect(&RedisConfig::new(cluster.urls()))
        .await
        .unwrap();
    ban_lists_keep_the_longest_bans(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_lists_keep_the_longest_bans_in_memory() {
    use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
    ban_lists_keep_the_longest_bans(MemoryStore::new(MemoryConfig::default())).await;
}

/// Seeded buckets are kept to their largest entries, as recorded ones are, in Lua on
/// Redis and on a Cluster as in memory; and what they leave on Redis expires.
async fn seeded_buckets_keep_their_heavy_hitters<S: Ledger>(store: &S) {
    use mxlimit_core::store::ledger::{Buckets, Metric, Seed, SeedEntry, TopQuery};
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3 * 3_600_000;
    let entry = |ip: &str, count| SeedEntry {
        address: ip.into(),
        network: format!("{ip}/32"),
        at_ms: at,
        count,
    };
    let seed = Seed {
        metric: Metric::BadRecipients,
        origin: "mx1".into(),
        entries: vec![
            entry("192.0.2.1", 1),
            entry("192.0.2.2", 5),
            entry("192.0.2.3", 3),
        ],
    };
    let out = store.seed(&seed, 2).await.unwrap();
    assert_eq!((out.counted, out.seen, out.out_of_range), (9, 0, 0));
    let day = Buckets::for_window(24 * 3_600_000);
    let q = TopQuery {
        rank: Metric::BadRecipients,
        level: Level::Address,
        buckets: day,
        limit: 10,
        per_bucket: Buckets::per_bucket(10, 2),
    };
    let listed: Vec<(String, u64)> = store
        .top(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.source, r.bad_recipients))
        .collect();
    assert_eq!(
        listed,
        [("192.0.2.2".to_string(), 5), ("192.0.2.3".to_string(), 3)]
    );
    // More entries than one Redis script takes: every one is compared on its own.
    let many = Seed {
        entries: (0..600)
            .map(|i| SeedEntry {
                address: format!("198.51.{}.{}", i / 250, i % 250),
                network: "198.51.0.0/16".into(),
                at_ms: at - 3_600_000,
                count: 1,
            })
            .collect(),
        ..seed.clone()
    };
    let out = store.seed(&many, 2).await.unwrap();
    assert_eq!((out.counted, out.seen), (600, 0));
    let out = store.seed(&many, 2).await.unwrap();
    assert_eq!((out.counted, out.seen), (0, 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_buckets_keep_their_heavy_hitters_and_expire_on_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&RedisConfig::new(vec![redis.url()]))
        .await
        .unwrap();
    seeded_buckets_keep_their_heavy_hitters(&store).await;
    let keys = keys_with_ttl(&redis);
    // Per hour seeded, a bucket per level and the counts seeded per address and minute.
    assert_eq!(keys.len(), 6, "{keys:?}");
    let most = mxlimit_core::store::ledger::HOUR_BUCKETS_KEEP_MS as i64;
    for (k, ttl) in keys {
        assert!(ttl > most - 4 * 3_600_000 && ttl <= most, "{k}: {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_buckets_keep_their_heavy_hitters_on_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let store = RedisStore::connect(&RedisConfig::new(cluster.urls()))
        .await
        .unwrap();
    seeded_buckets_keep_their_heavy_hitters(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_buckets_keep_their_heavy_hitters_in_memory() {
    use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
    seeded_buckets_keep_their_heavy_hitters(&MemoryStore::new(MemoryConfig::default())).await;
}
