//! The Admin API end to end over real stores: top lists after an attack spread over
//! two limiter instances, explain, a block made on one instance enforced by the
//! other, and authentication (tokens, admin client certificates, nothing).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_server::admin::KeeperOptions;
use limiter_server::admin::auth::{AdminAuth, AuthConfig};
use limiter_server::server::ServeOptions;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use mxlimit_proto::v1::admin_client::AdminClient;
use mxlimit_proto::v1::{
    Action, BlockRequest, ExplainReply, ExplainRequest, GroupBy, ListBlocksRequest, LookupRequest,
    RankBy, SeedEntry, SeedTopSourcesRequest, TopSourcesRequest, UnblockRequest,
};
use support::*;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "test-admin-token-0123456789";

fn options(token: Option<&str>) -> ServeOptions {
    ServeOptions {
        admin: Some(
            AdminAuth::new(AuthConfig {
                token: token.map(str::to_string),
                ..Default::default()
            })
            .unwrap(),
        ),
        // Fast rounds, so that tests wait little for the ledger.
        keeper: KeeperOptions {
            every: Duration::from_millis(50),
            keep: 1000,
        },
        ..Default::default()
    }
}

/// Two instances over one store, each with the admin token.
async fn two(backend: Backend, toml: &str, access: &str) -> Pair {
    Pair::start_with(backend, policy(toml, access), || options(Some(TOKEN))).await
}

async fn admin(l: &Limiter) -> AdminClient<Channel> {
    AdminClient::new(channel(l.addr).await)
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// Polls `f` until it returns Some, for at most 10 s (the ledger keeper runs every
/// 50 ms here).
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn top(l: &Limiter, by: GroupBy, rank: RankBy) -> Vec<(String, u64, u64)> {
    admin(l)
        .await
        .top_sources(authed(TopSourcesRequest {
            window_ms: 3_600_000,
            group_by: by as i32,
            rank_by: rank as i32,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner()
        .sources
        .into_iter()
        .map(|s| (s.source, s.bad_recipients, s.refused_connections))
        .collect()
}

// No bans (so every bad recipient counts), and a rate limit one attacker goes over.
const ATTACK_POLICY: &str = "[bad_rcpt]\nblock_after = 0\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\n\
                             [client_rate]\naddress = 2\nnetwork = 0\nwindow = \"1h\"\n";

async fn top_lists_after_an_attack_across_two_instances(backend: Backend) {
    let p = two(backend, ATTACK_POLICY, "").await;
    let ls = &p.limiters;
    let mut c = [ls[0].client().await, ls[1].client().await];
    // 198.51.100.1..5 send 5, 4, 3, 2, 1 bad recipients; 203.0.113.9 sends 12;
    // every other call goes to the other instance.
    let mut n = 0;
    let mut send = async |ip: &str, count: u32| {
        for i in 0..count {
            bad_rcpt(
                &mut c[n % 2],
                "mx1",
                &format!("s-{ip}-{i}"),
                ip,
                &format!("u{i}@x"),
            )
            .await;
            n += 1;
        }
    };
    for (i, count) in [5, 4, 3, 2, 1].into_iter().enumerate() {
        send(&format!("198.51.100.{}", i + 1), count).await;
    }
    send("203.0.113.9", 12).await;
    // 203.0.113.9 connects 5 times: 2 admitted, 3 refused (ClientRate 2).
    let mut refused = 0;
    for i in 0..5 {
        let v = connect(&mut c[i % 2], "mx1", &format!("c{i}"), "203.0.113.9").await;
        refused += u64::from(action(&v) != Action::Accept);
    }
    assert_eq!(refused, 3);

    let by_net = vec![
        ("198.51.100.0/24".to_string(), 15, 0),
        ("203.0.113.0/24".to_string(), 12, 3),
    ];
    // Asked of either instance: the lists are cluster-wide.
    let got = eventually("the network top list", || async {
        let t = top(&ls[1], GroupBy::Network, RankBy::BadRecipients).await;
        (t == by_net).then_some(t)
    })
    .await;
    assert_eq!(got, by_net);
    let by_addr = top(&ls[0], GroupBy::Address, RankBy::BadRecipients).await;
    assert_eq!(
        by_addr,
        [
            ("203.0.113.9", 12, 3),
            ("198.51.100.1", 5, 0),
            ("198.51.100.2", 4, 0),
            ("198.51.100.3", 3, 0),
            ("198.51.100.4", 2, 0),
            ("198.51.100.5", 1, 0),
        ]
        .map(|(s, b, r)| (s.to_string(), b, r))
    );
    assert_eq!(
        top(&ls[0], GroupBy::Address, RankBy::RefusedConnections).await,
        [("203.0.113.9".to_string(), 12, 3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_lists_on_redis() {
    top_lists_after_an_attack_across_two_instances(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_lists_on_redis_cluster() {
    top_lists_after_an_attack_across_two_instances(Backend::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_lists_in_memory() {
    top_lists_after_an_attack_across_two_instances(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_list_requests_out_of_range_are_refused() {
    let p = two(Backend::Memory, "", "").await;
    let ls = &p.limiters;
    let mut a = admin(&ls[0]).await;
    for (window_ms, limit) in [(8 * 86_400_000, 10), (3_600_000, 10_001)] {
        let e = a
            .top_sources(authed(TopSourcesRequest {
                window_ms,
                limit,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
}

async fn explain(l: &Limiter, ip: &str) -> ExplainReply {
    admin(l)
        .await
        .explain(authed(ExplainRequest {
            client_ip: ip.into(),
            client_name: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_rules_counters_bans_and_the_verdict_without_counting() {
    let toml = "[bad_rcpt]\nblock_after = 3\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_for = \"10m\"\n\
                [client_rate]\naddress = 5\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 3\n";
    let p = two(Backend::Redis, toml, "ClientRate:198.51.100 2\n").await;
    let ls = &p.limiters;
    let mut c = ls[0].client().await;
    for i in 0..2 {
        assert_eq!(
            action(&connect(&mut c, "mx1", &format!("s{i}"), "198.51.100.7").await),
            Action::Accept
        );
    }
    let e = explain(&ls[1], "198.51.100.7").await;
    assert_eq!(
        (e.client_ip.as_str(), e.network.as_str()),
        ("198.51.100.7", "198.51.100.0/24")
    );
    let rules: Vec<(&str, &str, &str, &str)> = e
        .rules
        .iter()
        .map(|r| {
            (
                r.kind.as_str(),
                r.level.as_str(),
                r.rule.as_str(),
                r.value.as_str(),
            )
        })
        .collect();
    assert!(
        rules.contains(&("ClientRate", "address", "ClientRate:198.51.100", "2")),
        "{rules:?}"
    );
    assert!(
        rules.contains(&("ClientConn", "network", "policy:client_conn.network", "3")),
        "{rules:?}"
    );
    let a = e.address.clone().unwrap();
    assert_eq!(
        (a.connections, a.rate_limit, a.sessions, a.block_after),
        (2, 2, 2, 3)
    );
    assert_eq!(e.net.clone().unwrap().sessions, 2);
    let v = e.connect.clone().unwrap();
    assert_eq!(
        (action(&v), v.reason.as_str(), v.rule.as_str()),
        (Action::Disconnect, "client_rate", "ClientRate:198.51.100")
    );
    // Explaining counted nothing.
    assert_eq!(explain(&ls[0], "198.51.100.7").await, e);

    // Four bad recipients ban the address (block_after = 3).
    for i in 0..4 {
        bad_rcpt(&mut c, "mx1", "s0", "198.51.100.7", &format!("u{i}@x")).await;
    }
    let e = explain(&ls[1], "198.51.100.7").await;
    let a = e.address.unwrap();
    assert!(a.ban_ms_left > 590_000 && a.ban_ms_left <= 600_000, "{a:?}");
    assert_eq!(a.offence, 1);
    let v = e.connect.unwrap();
    assert_eq!(
        (action(&v), v.reason.as_str(), v.rule.as_str()),
        (Action::Disconnect, "banned", "Ban:198.51.100.7")
    );
    // A neighbour is only counted at network level.
    let n = explain(&ls[1], "198.51.100.8").await;
    assert_eq!(
        (n.address.unwrap().sessions, n.net.unwrap().sessions),
        (0, 2)
    );
    assert_eq!(action(&n.connect.unwrap()), Action::Accept);

    let bad = admin(&ls[0])
        .await
        .explain(authed(ExplainRequest {
            client_ip: "not-an-ip".into(),
            client_name: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

async fn lookup_reason(
    c: &mut mxlimit_proto::v1::limiter_client::LimiterClient<Channel>,
    ip: &str,
) -> String {
    c.lookup(LookupRequest {
        client_ip: ip.into(),
        client_name: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .verdict
    .unwrap()
    .reason
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
async fn a_block_on_one_instance_is_enforced_by_the_other(backend: Backend) {
    let toml = "[bad_rcpt]\nblock_after = 2\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\n";
    let p = two(backend, toml, "").await;
    let ls = &p.limiters;
    let mut a = admin(&ls[0]).await;
    let mut b_lim = ls[1].client().await;
    assert_eq!(
        action(&connect(&mut b_lim, "mx2", "before", "198.51.100.7").await),
        Action::Accept
    );

    let reply = a
        .block(authed(BlockRequest {
            target: "198.51.100.0/22".into(),
            ttl_ms: 600_000,
            reason: "dictionary attack".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .block
        .unwrap();
    assert_eq!(reply.target, "198.51.100.0/22");
    // In force at once on the instance that took it ...
    let mut a_lim = ls[0].client().await;
    let v = connect(&mut a_lim, "mx1", "s1", "198.51.101.3").await;
    assert_eq!(
        (action(&v), v.reason.as_str(), v.rule.as_str()),
        (Action::Disconnect, "blocked", "Block:198.51.100.0/22")
    );
    assert_eq!(
        v.text,
        "Blocked by the mail administrator: dictionary attack"
    );
    // ... and on the other within its ledger round.
    eventually("the block on the other instance", || {
        let mut c = b_lim.clone();
        async move { (lookup_reason(&mut c, "198.51.100.9").await == "blocked").then_some(()) }
    })
    .await;
    let v = connect(&mut b_lim, "mx2", "s2", "198.51.100.9").await;
    assert_eq!(v.reason, "blocked");
    assert_eq!(lookup_reason(&mut b_lim, "198.51.104.1").await, "ok");

    // An automatic ban shows next to it, and unblocking the address lifts the ban at once.
    for i in 0..3 {
        bad_rcpt(&mut b_lim, "mx2", "x", "192.0.2.5", &format!("u{i}@x")).await;
    }
    assert_eq!(lookup_reason(&mut a_lim, "192.0.2.5").await, "banned");
    let list = eventually("both entries listed", || async {
        {
            let l = admin(&ls[1])
                .await
                .list_blocks(authed(ListBlocksRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .blocks;
            let kinds: Vec<(String, String)> = l
                .iter()
                .map(|e| (e.target.clone(), e.kind.clone()))
                .collect();
            (kinds.len() == 2).then_some(kinds)
        }
    })
    .await;
    assert!(
        list.contains(&("198.51.100.0/22".into(), "block".into())),
        "{list:?}"
    );
    assert!(
        list.contains(&("192.0.2.5".into(), "ban".into())),
        "{list:?}"
    );
    let u = admin(&ls[1])
        .await
        .unblock(authed(UnblockRequest {
            target: "192.0.2.5".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(u.ban_removed && !u.block_removed, "{u:?}");
    assert_eq!(lookup_reason(&mut a_lim, "192.0.2.5").await, "ok");

    // Lifted on B, the block goes from A too.
    let u = admin(&ls[1])
        .await
        .unblock(authed(UnblockRequest {
            target: "198.51.100.0/22".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(u.block_removed, "{u:?}");
    eventually("the block lifted on the other instance", || {
        let mut c = a_lim.clone();
        async move { (lookup_reason(&mut c, "198.51.101.3").await == "ok").then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_instance_is_enforced_by_the_other_on_redis() {
    a_block_on_one_instance_is_enforced_by_the_other(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_instance_is_enforced_by_the_other_on_redis_cluster() {
    a_block_on_one_instance_is_enforced_by_the_other(Backend::Cluster).await;
}

/// A ban's refusal is held by every instance that gave it (no store round trip),
/// and an operator's unblock ends the holds: at once on the instance that unblocked,
/// within a ledger round on the others.
async fn an_unblock_ends_held_refusals_on_every_instance(backend: Backend) {
    let toml = "[bad_rcpt]\nblock_after = 1\ntarpit_after = 0\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n";
    let p = two(backend, toml, "").await;
    let ls = &p.limiters;
    let (mut a, mut b) = (ls[0].client().await, ls[1].client().await);
    let ip = "192.0.2.77";
    for i in 0..2 {
        bad_rcpt(&mut a, "mx1", "s0", ip, &format!("u{i}@x")).await;
    }
    for (c, node) in [(&mut a, "mx1"), (&mut b, "mx2")] {
        for i in 0..2 {
            let v = connect(c, node, &format!("h{i}"), ip).await;
            assert_eq!(v.reason, "banned", "{v:?}");
            assert!(v.hold_ms > 1_000_000 && v.hold_source == ip, "{v:?}");
        }
    }
    let u = admin(&ls[0])
        .await
        .unblock(authed(UnblockRequest { target: ip.into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(u.ban_removed, "{u:?}");
    assert_eq!(
        action(&connect(&mut a, "mx1", "after", ip).await),
        Action::Accept
    );
    let mut n = 0;
    eventually("the other instance's hold ended", || {
        n += 1;
        let (mut c, session) = (b.clone(), format!("b{n}"));
        async move {
            (action(&connect(&mut c, "mx2", &session, ip).await) == Action::Accept).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblock_ends_held_refusals_on_every_instance_in_memory() {
    an_unblock_ends_held_refusals_on_every_instance(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblock_ends_held_refusals_on_every_instance_on_redis() {
    an_unblock_ends_held_refusals_on_every_instance(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblock_ends_held_refusals_on_every_instance_on_redis_cluster() {
    an_unblock_ends_held_refusals_on_every_instance(Backend::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_with_bad_targets_or_reasons_are_refused() {
    let p = two(Backend::Memory, "", "").await;
    let ls = &p.limiters;
    let mut a = admin(&ls[0]).await;
    for (target, reason) in [
        ("0.0.0.0/0", ""),
        ("nonsense", ""),
        ("192.0.2.1", "two\r\nlines"),
    ] {
        let e = a
            .block(authed(BlockRequest {
                target: target.into(),
                ttl_ms: 1000,
                reason: reason.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{target}: {e:?}");
    }
    // A megabyte of target is refused without being echoed back whole: the caller
    // gets a short message, not RESOURCE_EXHAUSTED for an oversized error.
    let e = a
        .block(authed(BlockRequest {
            target: "x".repeat(1 << 20),
            ttl_ms: 1000,
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 200, "{} bytes", e.message().len());
    assert!(e.message().contains("xxxx…"), "{}", e.message());
    let e = a
        .unblock(authed(UnblockRequest {
            target: "y".repeat(1 << 20),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 200, "{} bytes", e.message().len());
    // Bytes that are no protobuf message, from an authenticated caller.
    let s = support::raw_call(
        ls[0].addr,
        "/mxlimit.v1.Admin/Block",
        vec![0x0a, 0xff, 0x01],
        Some(TOKEN),
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with("not a valid protobuf message"),
        "{}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrongly_authenticated_admin_calls_are_refused_on_the_limiter_port() {
    let p = two(Backend::Memory, "", "").await;
    let ls = &p.limiters;
    let mut a = admin(&ls[0]).await;
    let e = a
        .list_blocks(ListBlocksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut wrong = Request::new(BlockRequest {
        target: "192.0.2.1".into(),
        ..Default::default()
    });
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer test-admin-token-0123456788".parse().unwrap(),
    );
    assert_eq!(
        a.block(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // Nothing was blocked, and the Limiter service on the same port needs no token.
    let mut c = ls[0].client().await;
    assert_eq!(
        action(&connect(&mut c, "mx1", "s", "192.0.2.1").await),
        Action::Accept
    );

    // A limiter with no admin credential configured refuses every admin call.
    let policy = Arc::new(PolicyHandle::fixed(policy("", "")));
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let off =
        Limiter::start_with(store, policy, "127.0.0.1:0".parse().unwrap(), options(None)).await;
    let e = admin(&off)
        .await
        .list_blocks(authed(ListBlocksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("admin API is off"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_client_certificate_is_an_admin_and_an_agent_certificate_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = testkit::tls::Pki::new("test CA");
    let options = testkit::tls::mtls_admin_options(&pki, dir.path(), &["admin.example"]);
    let policy = Arc::new(PolicyHandle::fixed(policy("", "")));
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let l = Limiter::start_with(store, policy, "127.0.0.1:0".parse().unwrap(), options).await;
    let with_cert = |pair: testkit::tls::Pair| {
        let ca = pki.ca_pem().to_string();
        let addr = l.addr;
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .identity(tonic::transport::Identity::from_pem(pair.cert, pair.key))
                .domain_name("localhost");
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    };
    let admin_ch = with_cert(pki.client("admin.example")).await;
    let agent_ch = with_cert(pki.client("mx1.example")).await;
    // A wildcard certificate of the same CA would match the name as a server name;
    // it is no admin.
    let wildcard = AdminClient::new(with_cert(pki.client("*.example")).await)
        .list_blocks(ListBlocksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(wildcard.code(), tonic::Code::Unauthenticated);
    let r = AdminClient::new(admin_ch)
        .block(BlockRequest {
            target: "192.0.2.0/24".into(),
            ttl_ms: 60_000,
            reason: String::new(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let e = AdminClient::new(agent_ch.clone())
        .list_blocks(ListBlocksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // The agent's certificate still serves the Limiter, which sees the block.
    let mut c = mxlimit_proto::v1::limiter_client::LimiterClient::new(agent_ch);
    assert_eq!(lookup_reason(&mut c, "192.0.2.77").await, "blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_bans_are_listed_until_they_expire() {
    let toml = "[bad_rcpt]\nblock_after = 1\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_for = \"1s\"\n";
    let p = two(Backend::Redis, toml, "").await;
    let ls = &p.limiters;
    let mut c = ls[0].client().await;
    bad_rcpt(&mut c, "mx1", "s0", "203.0.113.1", "a@x").await;
    bad_rcpt(&mut c, "mx1", "s0", "203.0.113.1", "b@x").await;
    let st = eventually("the ban indexed", || async {
        {
            let l = admin(&ls[1])
                .await
                .list_blocks(authed(ListBlocksRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .blocks;
            (l.len() == 1).then_some(l)
        }
    })
    .await;
    assert_eq!(
        (st[0].target.as_str(), st[0].kind.as_str()),
        ("203.0.113.1", "ban")
    );
    assert!(st[0].expires_in_ms <= 1000);
    // The ban is over within a second, and so is its entry.
    eventually("the ban gone from the list", || async {
        {
            let l = admin(&ls[0])
                .await
                .list_blocks(authed(ListBlocksRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .blocks;
            l.is_empty().then_some(())
        }
    })
    .await;
}

/// An attack can ban far more sources than one reply should carry: the list is cut to
/// what was asked, with the total beside it; operator blocks are always listed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_lists_are_cut_to_what_was_asked_with_the_total() {
    let toml = "[bad_rcpt]\nblock_after = 1\nnetwork_block_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\n";
    let p = two(Backend::Redis, toml, "").await;
    let ls = &p.limiters;
    let mut c = ls[0].client().await;
    let attackers = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
    for ip in attackers {
        bad_rcpt(&mut c, "mx1", ip, ip, "a@x").await;
        bad_rcpt(&mut c, "mx1", ip, ip, "b@x").await;
    }
    admin(&ls[0])
        .await
        .block(authed(BlockRequest {
            target: "198.51.100.0/24".into(),
            ttl_ms: 60_000,
            reason: "by hand".into(),
        }))
        .await
        .unwrap();
    let list = |max_bans| async move {
        admin(&ls[1])
            .await
            .list_blocks(authed(ListBlocksRequest { max_bans }))
            .await
            .unwrap()
            .into_inner()
    };
    let all = eventually("three bans indexed", || async {
        let r = list(0).await;
        (r.bans_total == 3).then_some(r)
    })
    .await;
    let kinds = |r: &mxlimit_proto::v1::ListBlocksReply| {
        let mut k: Vec<String> = r.blocks.iter().map(|b| b.kind.clone()).collect();
        k.sort();
        k
    };
    assert_eq!(kinds(&all), ["ban", "ban", "ban", "block"]);
    let cut = list(2).await;
    assert_eq!(cut.bans_total, 3);
    assert_eq!(kinds(&cut), ["ban", "ban", "block"]);
    // Which bans are kept (the most time left) is checked per store in redis_store.rs.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_blocks_bite_in_shadow_mode_where_automatic_limits_only_report() {
    let p = two(
        Backend::Memory,
        "shadow = true\n[client_rate]\naddress = 1\nnetwork = 0\n",
        "",
    )
    .await;
    let ls = &p.limiters;
    let mut c = ls[0].client().await;
    connect(&mut c, "mx1", "s0", "192.0.2.1").await;
    let over = connect(&mut c, "mx1", "s1", "192.0.2.1").await;
    assert_eq!(
        (action(&over), over.shadow, over.reason.as_str()),
        (Action::Accept, true, "client_rate")
    );
    admin(&ls[0])
        .await
        .block(authed(BlockRequest {
            target: "192.0.2.0/24".into(),
            ttl_ms: 60_000,
            reason: String::new(),
        }))
        .await
        .unwrap();
    let v = connect(&mut c, "mx1", "s2", "192.0.2.1").await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str()),
        (Action::Disconnect, false, "blocked")
    );
    let e = explain(&ls[0], "192.0.2.1").await;
    assert_eq!(e.connect.unwrap().reason, "blocked");
    assert!(e.shadow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_list_buckets_stay_bounded_however_many_sources_attack() {
    let keep = 100;
    let p = Pair::start_with(Backend::Redis, policy(ATTACK_POLICY, ""), || ServeOptions {
        keeper: KeeperOptions {
            every: Duration::from_millis(50),
            keep,
        },
        ..options(Some(TOKEN))
    })
    .await;
    let mut c = p.limiters[0].client().await;
    // A heavy hitter's five bad recipients, then 300 other addresses with one each.
    // (Trimming keeps the largest counts: a source whose count only grows once it is
    // tied with hundreds of others could lose counts to it, so the heavy hitter comes
    // first, whatever the ledger rounds' timing.)
    for i in 0..5 {
        bad_rcpt(
            &mut c,
            "mx1",
            "heavy",
            "2001:db8:ffff::1",
            &format!("h{i}@y"),
        )
        .await;
    }
    for i in 0..300u32 {
        let ip = format!("2001:db8:{:x}::1", i + 1);
        bad_rcpt(&mut c, "mx1", &format!("s{i}"), &ip, "x@y").await;
    }
    let redis = p.redis.as_ref().unwrap();
    let buckets = || -> Vec<String> {
        redis
            .cmd(&["KEYS", "mxl:{adm}:t:ba:*"])
            .lines()
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    };
    let top = eventually("the heavy hitter on top", || async {
        let t = top(&p.limiters[1], GroupBy::Address, RankBy::BadRecipients).await;
        (t.first()
            .is_some_and(|r| r.0 == "2001:db8:ffff::1" && r.1 == 5))
        .then_some(t)
    })
    .await;
    assert_eq!(top.len(), 10);
    assert!(!buckets().is_empty());
    for k in buckets() {
        let n: u32 = redis
            .cmd(&["ZCARD", &k])
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(n <= keep, "{k} holds {n} sources, more than {keep}");
    }
}

/// An operator's unblock of an address forgets its offences as well as its bad
/// recipients: with pregreet's ban_at = 2, an offence before the unblock and one after
/// it do not add up to a ban.
async fn unblocking_an_address_forgets_its_offences(backend: Backend) {
    let toml = "[offences.pregreet]\nban_at = 2\nnetwork_ban_at = 0\n";
    let p = two(backend, toml, "").await;
    let ls = &p.limiters;
    let mut lim = ls[0].client().await;
    let ip = "192.0.2.20";
    let kind = mxlimit_proto::v1::OffenceKind::Pregreet;
    assert_eq!(
        action(&offence(&mut lim, "mx1", ip, kind, "before").await),
        Action::Accept
    );
    let u = admin(&ls[1])
        .await
        .unblock(authed(UnblockRequest { target: ip.into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(!u.ban_removed && !u.block_removed, "{u:?}");
    let v = offence(&mut lim, "mx1", ip, kind, "after").await;
    assert_eq!(
        action(&v),
        Action::Accept,
        "counted from before the unblock: {v:?}"
    );
    // Two offences after it do.
    let v = offence(&mut lim, "mx1", ip, kind, "after2").await;
    assert_eq!(v.rule, format!("Ban:{ip}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblocking_an_address_forgets_its_offences_in_memory() {
    unblocking_an_address_forgets_its_offences(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblocking_an_address_forgets_its_offences_on_redis() {
    unblocking_an_address_forgets_its_offences(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblocking_an_address_forgets_its_offences_on_redis_cluster() {
    unblocking_an_address_forgets_its_offences(Backend::Cluster).await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn seed(l: &Limiter, origin: &str, entries: &[(&str, u64, u64)]) -> (u64, u64, u64, u64) {
    let r = admin(l)
        .await
        .seed_top_sources(authed(SeedTopSourcesRequest {
            origin: origin.into(),
            entries: entries
                .iter()
                .map(|(ip, at, n)| SeedEntry {
                    client_ip: ip.to_string(),
                    at_unix_ms: *at,
                    bad_recipients: *n,
                })
                .collect(),
        }))
        .await
        .unwrap()
        .into_inner();
    (r.counted, r.seen, r.out_of_range, r.exempt)
}

async fn top_in(l: &Limiter, window_ms: u64, by: GroupBy) -> Vec<(String, u64)> {
    admin(l)
        .await
        .top_sources(authed(TopSourcesRequest {
            window_ms,
            group_by: by as i32,
            rank_by: RankBy::BadRecipients as i32,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner()
        .sources
        .into_iter()
        .map(|s| (s.source, s.bad_recipients))
        .collect()
}

fn rows(r: &[(&str, u64)]) -> Vec<(String, u64)> {
    r.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// `import-log --seed`'s call: old bad recipients land in the top lists at the time
/// they happened (hours ago: in the last day, not in the last hour), beside
/// what the limiter counted live, at the address and at the limiter's own network;
/// what the lists no longer keep, what lies ahead, and exempt sources are not added;
/// seeding again adds only what goes beyond what was seeded before. Seeded on one
/// instance, listed by the other.
async fn seeding_old_logs_fills_the_top_lists(backend: Backend) {
    const H: u64 = 3_600_000;
    let p = two(
        backend,
        "[bad_rcpt]\nblock_after = 0\nnetwork_block_after = 0\n",
        "Connect:198.51.100.9\tOK\n",
    )
    .await;
    let ls = &p.limiters;
    let mut c = ls[0].client().await;
    bad_rcpt(&mut c, "mx1", "live-1", "203.0.113.5", "u1@x").await;
    bad_rcpt(&mut c, "mx1", "live-2", "203.0.113.5", "u2@x").await;
    let now = unix_ms();
    let old = [
        ("203.0.113.5", now - 3 * H, 4),
        ("203.0.113.6", now - 3 * H, 2),
        ("203.0.113.5", now - 10 * 60_000, 3),
        ("2001:db8:5:0:1::1", now - 20 * H, 5),
        ("203.0.113.7", now - 8 * 24 * H, 9),
        // Its hour bucket still lives, but beyond the 7 days any list reads.
        ("203.0.113.11", now - 169 * H - 30 * 60_000, 8),
        ("203.0.113.8", now + 2 * H, 1),
        ("198.51.100.9", now - H, 6),
    ];
    assert_eq!(seed(&ls[0], "mx1", &old).await, (14, 0, 18, 6));

    let day = rows(&[
        ("203.0.113.5", 9),
        ("2001:db8:5:0:1::1", 5),
        ("203.0.113.6", 2),
    ]);
    // The live counts reach the ledger with the keeper's next round.
    let got = eventually("the live and seeded counts together", || async {
        let t = top_in(&ls[1], 24 * H, GroupBy::Address).await;
        (t == day).then_some(t)
    })
    .await;
    assert_eq!(got, day);
    assert_eq!(
        top_in(&ls[1], 24 * H, GroupBy::Network).await,
        rows(&[("203.0.113.0/24", 11), ("2001:db8:5::/64", 5)])
    );
    assert_eq!(
        top_in(&ls[1], H, GroupBy::Address).await,
        rows(&[("203.0.113.5", 5)])
    );

    // The same log again adds nothing; a longer one adds only what is new; another
    // MX host's log of the same minute adds up.
    assert_eq!(seed(&ls[1], "mx1", &old).await, (0, 14, 18, 6));
    assert_eq!(
        seed(&ls[0], "mx1", &[("203.0.113.5", now - 10 * 60_000, 7)]).await,
        (4, 3, 0, 0)
    );
    assert_eq!(
        seed(&ls[0], "mx2", &[("203.0.113.5", now - 10 * 60_000, 2)]).await,
        (2, 0, 0, 0)
    );
    assert_eq!(
        top_in(&ls[0], H, GroupBy::Address).await,
        rows(&[("203.0.113.5", 11)])
    );
    assert_eq!(
        top_in(&ls[0], 24 * H, GroupBy::Network).await,
        rows(&[("203.0.113.0/24", 17), ("2001:db8:5::/64", 5)])
    );
    // Just ahead of the clock counts now, once, however late it is seeded again.
    let ahead = [("203.0.113.9", now + 30 * 60_000, 1)];
    assert_eq!(seed(&ls[1], "mx1", &ahead).await, (1, 0, 0, 0));
    assert_eq!(seed(&ls[1], "mx1", &ahead).await, (0, 1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_old_logs_fills_the_top_lists_in_memory() {
    seeding_old_logs_fills_the_top_lists(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_old_logs_fills_the_top_lists_on_redis() {
    seeding_old_logs_fills_the_top_lists(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_old_logs_fills_the_top_lists_on_redis_cluster() {
    seeding_old_logs_fills_the_top_lists(Backend::Cluster).await;
}

/// A seed too big, a bad address or an absurd count is refused whole, saying which
/// entry; without credentials nothing is seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_seeds_are_refused_whole() {
    let p = two(Backend::Memory, "", "").await;
    let l = &p.limiters[0];
    let entry = |ip: &str, n: u64| SeedEntry {
        client_ip: ip.into(),
        at_unix_ms: unix_ms(),
        bad_recipients: n,
    };
    let cases = [
        (vec![entry("192.0.2.1", 1); 1001], "at most 1000"),
        (
            vec![entry("192.0.2.1", 1), entry("nope", 1)],
            "entries[1].client_ip",
        ),
        (
            vec![entry("192.0.2.1", 2_000_000_000)],
            "entries[0].bad_recipients",
        ),
    ];
    for (entries, says) in cases {
        let e = admin(l)
            .await
            .seed_top_sources(authed(SeedTopSourcesRequest {
                entries,
                origin: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let e = admin(l)
        .await
        .seed_top_sources(SeedTopSourcesRequest {
            entries: vec![entry("192.0.2.1", 1)],
            origin: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(top_in(l, 3_600_000, GroupBy::Address).await.is_empty());
}
