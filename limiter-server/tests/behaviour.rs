//! The behaviour of the limiter over gRPC, with two limiter instances on one store,
//! on every store: in memory, one real redis-server, and a real 3-primary Redis Cluster.

mod support;

use std::time::{Duration, Instant};

use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{
    Action, ConnectReply, HeartbeatRequest, Lease, OffenceKind, ReleaseRequest, Verdict,
};
use support::*;
use tonic::transport::Channel;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Memory).await }
        )* }
        mod redis { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await }
        )* }
        mod cluster { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Cluster).await }
        )* }
    };
}

suite!(
    client_rate_holds_across_instances_and_the_network,
    client_rate_window_slides,
    client_conn_leases_hold_across_instances_and_free_on_disconnect,
    leases_expire_without_heartbeat_and_live_with_it,
    a_new_epoch_frees_the_old_leases_at_once,
    a_flapping_epoch_sweeps_at_most_three_times_a_minute,
    a_refused_first_connect_does_not_keep_a_network_out_of_the_registry,
    a_caller_without_epochs_keeps_its_leases_by_session_id,
    bare_session_ids_are_found_through_the_session_index,
    a_heartbeat_over_the_cap_is_refused_whole,
    retried_calls_count_once,
    bad_recipients_spread_over_a_network_tarpit_then_ban_everywhere,
    a_tarpitted_source_s_new_sessions_are_tarpitted_from_the_start,
    bad_recipients_of_one_address_escalate,
    envelope_limits,
    access_rules,
    shadow_mode_reports_without_blocking,
    bad_input_is_invalid_argument,
    lookup_answers_bans_and_access_rules_without_counting,
    explain_predicts_the_next_connect_in_every_state,
    offences_ban_the_address_then_the_network_on_every_instance,
    offence_kinds_count_apart_and_can_be_exempt_off_or_shadowed,
    held_refusals_end_when_the_store_would_admit,
    held_refusals_keep_rules_exemptions_and_shadow_mode_exact,
    release_frees_many_leases_across_networks_in_one_call,
);

/// Generous windows: only the sliding-window and lease tests depend on time.
const BASE: &str = "[bad_rcpt]\nnetwork_block_after = 0\nblock_after = 0\ntarpit_after = 0\nnetwork_tarpit_after = 0\n";

async fn client_rate_holds_across_instances_and_the_network(backend: Backend) {
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 3\nnetwork = 5\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    // Address level: 3 per window, whichever instance is asked.
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(connect(p.inst(i), "mx1", &format!("a{i}"), "10.1.1.5").await);
    }
    assert!(
        got[..3].iter().all(|v| action(v) == Action::Accept),
        "{got:?}"
    );
    for v in &got[3..] {
        assert_eq!(action(v), Action::Disconnect);
        assert_eq!(
            (v.smtp_code, v.enhanced_code.as_str(), v.text.as_str()),
            (421, "4.3.2", "Connection rate limit exceeded.")
        );
        assert_eq!(
            (v.rule.as_str(), v.reason.as_str()),
            ("policy:client_rate.address", "client_rate")
        );
    }
    // Network level: the 3 admitted above count for 10.1.1.0/24; 2 more addresses of it
    // get in, then every address of the network is refused.
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(
            connect(
                p.inst(i),
                "mx2",
                &format!("n{i}"),
                &format!("10.1.1.{}", 100 + i),
            )
            .await,
        );
    }
    assert_eq!(
        got.iter().map(action).collect::<Vec<_>>(),
        [
            Action::Accept,
            Action::Accept,
            Action::Disconnect,
            Action::Disconnect
        ]
    );
    assert_eq!(got[2].rule, "policy:client_rate.network");
    // Another network is untouched.
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "other", "10.1.2.1").await),
        Action::Accept
    );
}

/// "At most N in ANY window of W": fixed windows, which admit 2N across a boundary,
/// fail this test.
async fn client_rate_window_slides(backend: Backend) {
    const W: Duration = Duration::from_millis(1500);
    let toml = "[client_rate]\nwindow = \"1500ms\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.9.9.9";
    let t_a = Instant::now();
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "a", ip).await),
        Action::Accept
    );
    let r_a = Instant::now();
    tokio::time::sleep_until((t_a + Duration::from_millis(700)).into()).await;
    let t_b = Instant::now();
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "b", ip).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "c", ip).await),
        Action::Disconnect
    );
    assert!(
        t_a.elapsed() < W,
        "the machine stalled for {:?}; the window test is inconclusive",
        t_a.elapsed()
    );
    // Once `a` has surely left the window, one connection fits again, not two: `b` is
    // still in the window that ends now.
    tokio::time::sleep_until((r_a + W + Duration::from_millis(50)).into()).await;
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "d", ip).await),
        Action::Accept
    );
    let second = connect(&mut p.a, "mx1", "e", ip).await;
    assert!(
        t_b.elapsed() < W,
        "the machine stalled; the window test is inconclusive"
    );
    assert_eq!(
        action(&second),
        Action::Disconnect,
        "2 connections in a window that ends now"
    );
}

async fn client_conn_leases_hold_across_instances_and_free_on_disconnect(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 2\nnetwork = 3\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.3.3.3";
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s1", ip).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "s2", ip).await),
        Action::Accept
    );
    let v = connect(&mut p.a, "mx1", "s3", ip).await;
    assert_eq!(
        (action(&v), v.smtp_code, v.text.as_str()),
        (Action::Disconnect, 421, "Too many open connections.")
    );
    assert_eq!(
        (v.rule.as_str(), v.reason.as_str()),
        ("policy:client_conn.address", "client_conn")
    );
    // mx1's session ends; the Disconnect may reach either instance.
    disconnect(&mut p.b, "mx1", "s1", ip).await;
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s3", ip).await),
        Action::Accept
    );
    // Network level: s2, s3 hold 2 of 3.
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "s4", "10.3.3.4").await),
        Action::Accept
    );
    let v = connect(&mut p.a, "mx1", "s5", "10.3.3.5").await;
    assert_eq!(
        (action(&v), v.rule.as_str()),
        (Action::Disconnect, "policy:client_conn.network")
    );
}

async fn leases_expire_without_heartbeat_and_live_with_it(backend: Backend) {
    const TTL: Duration = Duration::from_secs(1);
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let reply =
        p.a.connect(connect_req("mx1", "kept", "10.5.5.1"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(reply.lease_ttl_ms, 1000);
    let t_kept = Instant::now();
    let r =
        p.b.connect(connect_req("mx2", "dropped", "10.5.5.2"))
            .await
            .unwrap()
            .into_inner();
    let r_dropped = Instant::now();
    assert_eq!(action(&r.verdict.unwrap()), Action::Accept);
    // mx1 renews "kept" every 300 ms through either instance; nobody renews "dropped".
    let mut i = 0;
    while t_kept.elapsed() < TTL + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.inst(i)
            .heartbeat(HeartbeatRequest {
                node: "mx1".into(),
                epoch: "e1".into(),
                leases: vec![Lease {
                    session_id: "kept".into(),
                    client_ip: "10.5.5.1".into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        i += 1;
    }
    tokio::time::sleep_until((r_dropped + TTL + Duration::from_millis(50)).into()).await;
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "again", "10.5.5.2").await),
        Action::Accept,
        "an unrenewed lease expires"
    );
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "nope", "10.5.5.1").await),
        Action::Disconnect,
        "a renewed lease lives on"
    );
}

async fn a_new_epoch_frees_the_old_leases_at_once(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 2\nnetwork = 0\nlease_ttl = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.6.6.6";
    assert_eq!(
        action(&connect(&mut p.a, "mx9", "old1", ip).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.b, "mx9", "old2", ip).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.a, "mx8", "x", ip).await),
        Action::Disconnect
    );
    // mx9 restarts: its first heartbeat carries a new epoch and no sessions.
    p.b.heartbeat(HeartbeatRequest {
        node: "mx9".into(),
        epoch: "e2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        action(&connect(&mut p.a, "mx8", "x", ip).await),
        Action::Accept
    );
    let mut new = connect_req("mx9", "new1", ip);
    new.epoch = "e2".into();
    assert_eq!(
        action(
            &p.a.connect(new)
                .await
                .unwrap()
                .into_inner()
                .verdict
                .unwrap()
        ),
        Action::Accept
    );
    // The new epoch's own heartbeat keeps the new lease.
    p.a.heartbeat(HeartbeatRequest {
        node: "mx9".into(),
        epoch: "e2".into(),
        session_ids: vec!["new1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        action(&connect(&mut p.b, "mx8", "y", ip).await),
        Action::Disconnect
    );
}

/// A caller that changes epoch on every heartbeat (or two processes sharing a node
/// name) makes at most three sweeps of the node's networks a minute: restarts are swept
/// at once, a fourth change in the minute frees nothing yet.
async fn a_flapping_epoch_sweeps_at_most_three_times_a_minute(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.6.9.1";
    let hb = |epoch: &str| HeartbeatRequest {
        node: "mx9".into(),
        epoch: epoch.into(),
        ..Default::default()
    };
    // Two restarts, swept at once: each frees the lease the run before took.
    for (i, epoch) in ["e7", "e8"].into_iter().enumerate() {
        let mut req = connect_req("mx9", &format!("r{i}"), ip);
        req.epoch = format!("run{i}");
        let v =
            p.a.connect(req)
                .await
                .unwrap()
                .into_inner()
                .verdict
                .unwrap();
        assert_eq!(action(&v), Action::Accept, "{epoch}");
        p.b.heartbeat(hb(epoch)).await.unwrap();
    }
    p.b.heartbeat(hb("e9")).await.unwrap(); // the third change of the minute
    assert_eq!(
        action(&connect(&mut p.a, "mx9", "s1", ip).await),
        Action::Accept,
        "the restarts freed their leases at once"
    );
    // A fourth change in the same minute: the e1 lease is not freed yet.
    p.b.heartbeat(hb("e2")).await.unwrap();
    assert_eq!(
        action(&connect(&mut p.b, "mx8", "x", ip).await),
        Action::Disconnect,
        "a fourth sweep in a minute waits"
    );
}

/// The limiter writes a node's network registry once per lease TTL; a refused Connect
/// writes no lease, so the node's next admitted Connect there must still register the
/// network, or a restart (new epoch) would not find that lease to free it.
async fn a_refused_first_connect_does_not_keep_a_network_out_of_the_registry(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let (taken, other) = ("10.6.7.1", "10.6.7.2");
    assert_eq!(
        action(&connect(&mut p.b, "mx8", "s0", taken).await),
        Action::Accept
    );
    // mx9's first Connect in 10.6.7.0/24 is refused (the address holds its one session).
    assert_eq!(
        action(&connect(&mut p.a, "mx9", "s1", taken).await),
        Action::Disconnect
    );
    // Its second, on the same limiter, is admitted.
    assert_eq!(
        action(&connect(&mut p.a, "mx9", "s2", other).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.b, "mx7", "s3", other).await),
        Action::Disconnect
    );
    // mx9 restarts: the new epoch frees s2, found through the registry.
    p.b.heartbeat(HeartbeatRequest {
        node: "mx9".into(),
        epoch: "e2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        action(&connect(&mut p.b, "mx7", "s4", other).await),
        Action::Accept,
        "the restarted node's old lease was freed"
    );
}

/// A caller that follows the design contract sends no epoch on Connect but one on
/// Heartbeat, and renews by `session_ids` alone; its leases must live as long as it
/// renews them (past the node registry's TTL of 4 lease TTLs) and not be freed.
async fn a_caller_without_epochs_keeps_its_leases_by_session_id(backend: Backend) {
    const TTL: Duration = Duration::from_secs(1);
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\nlease_ttl = \"1s\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.12.0.1";
    let mut req = connect_req("mta1", "q1", ip);
    req.epoch.clear();
    assert_eq!(
        action(
            &p.a.connect(req)
                .await
                .unwrap()
                .into_inner()
                .verdict
                .unwrap()
        ),
        Action::Accept
    );
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < 5 * TTL + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.inst(i)
            .heartbeat(HeartbeatRequest {
                node: "mta1".into(),
                epoch: "boot-1".into(),
                session_ids: vec!["q1".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        i += 1;
    }
    let mut other = connect_req("mta2", "x", ip);
    other.epoch.clear();
    let v =
        p.b.connect(other)
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(
        (action(&v), v.reason.as_str()),
        (Action::Disconnect, "client_conn"),
        "the renewed lease still holds"
    );
}

/// A contract caller's heartbeat names thousands of sessions in as many networks by id
/// alone: each is found through the node's session index (in calls of at most 250),
/// and all are renewed; ids the index does not hold are counted as unknown (a search
/// of the networks would have found the one admitted with an epoch).
async fn bare_session_ids_are_found_through_the_session_index(backend: Backend) {
    const N: usize = 2500;
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = |i: usize| format!("10.{}.{}.1", 100 + i / 256, i % 256);
    for i in 0..N {
        let mut req = connect_req("mta1", &format!("q{i}"), &ip(i));
        req.epoch.clear();
        let v = p
            .inst(i)
            .connect(req)
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        assert_eq!(action(&v), Action::Accept);
    }
    // One session with an epoch: the caller should send its address (`leases`).
    assert_eq!(
        action(&connect(&mut p.a, "mta1", "with-epoch", "10.99.0.1").await),
        Action::Accept
    );
    let mut ids: Vec<String> = (0..N).map(|i| format!("q{i}")).collect();
    ids.push("with-epoch".into());
    ids.push("never-connected".into());
    let reply =
        p.b.heartbeat(HeartbeatRequest {
            node: "mta1".into(),
            epoch: "e1".into(),
            session_ids: ids,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.renewed, reply.unknown_sessions),
        (N as u64, 2),
        "every epoch-less session renewed, in {N} networks; the other two unknown"
    );
    // The same sessions with their addresses renew alike, the one with an epoch too.
    let mut leases: Vec<Lease> = (0..N)
        .map(|i| Lease {
            session_id: format!("q{i}"),
            client_ip: ip(i),
        })
        .collect();
    leases.push(Lease {
        session_id: "with-epoch".into(),
        client_ip: "10.99.0.1".into(),
    });
    let reply =
        p.a.heartbeat(HeartbeatRequest {
            node: "mta1".into(),
            epoch: "e1".into(),
            leases,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.renewed, reply.unknown_sessions), (N as u64 + 1, 0));
}

/// At most 100 000 sessions per heartbeat, bare and with address together: one over is
/// refused as a whole, with a message that says so, and nothing is renewed.
async fn a_heartbeat_over_the_cap_is_refused_whole(backend: Backend) {
    let p = Pair::start(backend, policy("", "")).await;
    let mut a = p.a.clone();
    let e = a
        .heartbeat(HeartbeatRequest {
            node: "mta1".into(),
            epoch: "e1".into(),
            session_ids: (0..60_000).map(|i| format!("s{i}")).collect(),
            leases: (0..40_001)
                .map(|i| Lease {
                    session_id: format!("l{i}"),
                    client_ip: "192.0.2.1".into(),
                })
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("100001 entries, at most 100000"),
        "{}",
        e.message()
    );
    // A message over 24 MiB is refused before it is decoded (tonic's OUT_OF_RANGE).
    let e = a
        .heartbeat(HeartbeatRequest {
            node: "mta1".into(),
            epoch: "e1".into(),
            session_ids: vec!["x".repeat(25 << 20)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{}", e.message());
    assert!(
        e.message().contains("the limit is: 25165824 bytes"),
        "{}",
        e.message()
    );
}

async fn retried_calls_count_once(backend: Backend) {
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 2\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_after = 2\nnetwork_block_after = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.7.7.7";
    // The same Connect sent three times (a retry after a lost reply) counts once.
    for i in 0..3 {
        assert_eq!(
            action(&connect(p.inst(i), "mx1", "s1", ip).await),
            Action::Accept
        );
    }
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s2", ip).await),
        Action::Accept
    );
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s3", ip).await),
        Action::Disconnect
    );
    // The same bad RCPT retried counts once: two distinct ones, then the ban on the third.
    for i in 0..3 {
        assert_eq!(
            action(&bad_rcpt(p.inst(i), "mx1", "s1", ip, "nobody@example.org").await),
            Action::Accept
        );
    }
    assert_eq!(
        action(&bad_rcpt(&mut p.b, "mx1", "s2", ip, "nobody@example.org").await),
        Action::Accept
    );
    assert_eq!(
        action(&bad_rcpt(&mut p.a, "mx1", "s2", ip, "nobody2@example.org").await),
        Action::Disconnect
    );
}

async fn a_tarpitted_source_s_new_sessions_are_tarpitted_from_the_start(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 2\nblock_after = 100\nnetwork_tarpit_after = 3\nnetwork_block_after = 100\n\
                tarpit_delay = \"700ms\"\nblock_for = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let tarpit = |r: &ConnectReply| r.policy.as_ref().map(|p| p.tarpit_ms);
    let connect_full = async |c: &mut LimiterClient<Channel>, s: &str, ip: &str| {
        c.connect(connect_req("mx1", s, ip))
            .await
            .expect("connect")
            .into_inner()
    };
    // Address level: past tarpit_after (2) bad recipients of 10.14.0.1.
    for (i, want) in [(0, 0), (1, 0), (2, 0), (3, 700)] {
        let r = connect_full(p.inst(i), &format!("a{i}"), "10.14.0.1").await;
        assert_eq!(tarpit(&r), Some(want), "after {i} bad recipients");
        bad_rcpt(
            p.inst(i + 1),
            "mx1",
            &format!("a{i}"),
            "10.14.0.1",
            &format!("u{i}@x"),
        )
        .await;
    }
    // Network level: 10.14.0.1's 4 count for the /24 (past 3); a new address of it is
    // tarpitted from its first session, another network is not.
    let r = connect_full(&mut p.b, "n1", "10.14.0.77").await;
    assert_eq!(tarpit(&r), Some(700));
    let r = connect_full(&mut p.a, "n2", "10.15.0.1").await;
    assert_eq!(tarpit(&r), Some(0));
}

async fn bad_recipients_spread_over_a_network_tarpit_then_ban_everywhere(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 2\nblock_after = 100\nnetwork_tarpit_after = 4\nnetwork_block_after = 6\n\
                tarpit_delay = \"1500ms\"\nblock_for = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    // A dictionary attack: one unknown user from each of 7 addresses of 10.4.4.0/24,
    // over two MX nodes and both limiter instances.
    let mut got = Vec::new();
    for i in 0..7 {
        let ip = format!("10.4.4.{}", i + 1);
        let node = if i % 2 == 0 { "mx1" } else { "mx2" };
        assert_eq!(
            action(&connect(p.inst(i), node, &format!("s{i}"), &ip).await),
            Action::Accept
        );
        got.push(
            bad_rcpt(
                p.inst(i + 1),
                node,
                &format!("s{i}"),
                &ip,
                &format!("user{i}@example.org"),
            )
            .await,
        );
    }
    let actions: Vec<Action> = got.iter().map(action).collect();
    assert_eq!(
        actions,
        [
            Action::Accept,
            Action::Accept,
            Action::Accept,
            Action::Accept,
            Action::Delay,
            Action::Delay,
            Action::Disconnect
        ]
    );
    assert_eq!(
        (
            got[4].delay_ms,
            got[4].reason.as_str(),
            got[4].rule.as_str()
        ),
        (1500, "bad_rcpt", "policy:bad_rcpt.network_tarpit_after")
    );
    let ban = &got[6];
    assert_eq!(
        (
            ban.smtp_code,
            ban.enhanced_code.as_str(),
            ban.reason.as_str(),
            ban.rule.as_str()
        ),
        (421, "4.7.1", "banned", "Ban:10.4.4.0/24")
    );
    // Both instances now refuse every address of the network at Connect.
    for (i, ip) in ["10.4.4.1", "10.4.4.200", "10.4.4.201"].iter().enumerate() {
        let v = connect(p.inst(i), "mx3", &format!("later{i}"), ip).await;
        assert_eq!(
            (action(&v), v.smtp_code, v.reason.as_str(), v.rule.as_str()),
            (Action::Disconnect, 421, "banned", "Ban:10.4.4.0/24")
        );
        assert_eq!(
            v.text,
            "Too many invalid recipients or protocol errors from your network; try again later."
        );
    }
    // Another network is not touched.
    assert_eq!(
        action(&connect(&mut p.a, "mx3", "ok", "10.4.5.1").await),
        Action::Accept
    );
}

async fn bad_recipients_of_one_address_escalate(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 1\nblock_after = 2\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n\
                tarpit_delay = \"2s\"\nblock_for = \"1s\"\nescalation = 3.0\nmax_block = \"1h\"\nban_reply = \"reject\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.8.8.8";
    let v: Vec<Action> = [
        bad_rcpt(&mut p.a, "mx1", "s", ip, "a@x").await,
        bad_rcpt(&mut p.b, "mx1", "s", ip, "b@x").await,
        bad_rcpt(&mut p.a, "mx1", "s", ip, "c@x").await,
    ]
    .iter()
    .map(action)
    .collect();
    assert_eq!(v, [Action::Accept, Action::Delay, Action::Disconnect]);
    let banned = connect(&mut p.b, "mx1", "t", ip).await;
    assert_eq!(
        (
            action(&banned),
            banned.smtp_code,
            banned.enhanced_code.as_str()
        ),
        (Action::Reject, 554, "5.7.1"),
        "ban_reply = reject"
    );
    assert_eq!(banned.rule, "Ban:10.8.8.8");
    // The first ban lasts 1s; the second offence 3s.
    let over = Instant::now() + Duration::from_millis(1100);
    tokio::time::sleep_until(over.into()).await;
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "u", ip).await),
        Action::Accept
    );
    for r in ["d@x", "e@x", "f@x"] {
        bad_rcpt(&mut p.a, "mx1", "u", ip, r).await;
    }
    let second = Instant::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        action(&connect(&mut p.b, "mx1", "w", ip).await),
        Action::Reject,
        "a repeat offence is banned longer"
    );
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "stalled; inconclusive"
    );
}

async fn envelope_limits(backend: Backend) {
    let toml = "[envelope]\nmax_rcpts_per_message = 3\nbad_rcpt_throttle = 2\nbad_rcpt_delay = \"1s\"\n\
                [bad_rcpt]\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_after = 0\nnetwork_block_after = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let reply =
        p.a.connect(connect_req("mx1", "s", "10.10.0.1"))
            .await
            .unwrap()
            .into_inner();
    let sp = reply.policy.unwrap();
    assert_eq!(
        (
            sp.max_rcpts_per_message,
            sp.bad_rcpt_throttle,
            sp.bad_rcpt_delay_ms
        ),
        (3, 2, 1000)
    );
    let r = |n, bad, rejected| {
        rcpt_req(
            "mx1",
            "s",
            "10.10.0.1",
            &format!("r{n}@x"),
            rejected,
            n,
            bad,
        )
    };
    let v =
        p.a.recipient(r(4, 0, false))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(
        (
            action(&v),
            v.smtp_code,
            v.enhanced_code.as_str(),
            v.text.as_str()
        ),
        (Action::Tempfail, 452, "4.5.3", "Too many recipients")
    );
    assert_eq!(v.reason, "max_rcpts");
    // Two bad RCPTs in this envelope: the third RCPT (bad or not) waits bad_rcpt_delay.
    let v =
        p.b.recipient(r(2, 2, true))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(action(&v), Action::Accept);
    let v =
        p.b.recipient(r(3, 2, false))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(
        (action(&v), v.delay_ms, v.reason.as_str()),
        (Action::Delay, 1000, "bad_rcpt_throttle")
    );
}

const SENDMAIL_ACCESS: &str = "Connect:206.81.85\tREJECT\nClientRate:67.92.16\t2\nClientConn:61.191.231\t2\n\
ClientRate:\t10\nClientConn:\t5\nClientRate:customerdomain.com\t0\nGreetPause:okslammer.com\t0\nGreetPause:127.0.0.1\t0\n\
Connect:192.0.2.1\tOK\nConnect:192.0.2.2\tERROR:4.7.0:421 Closing for maintenance\n";

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
async fn access_rules(backend: Backend) {
    let toml = format!(
        "{BASE}[client_rate]\nwindow = \"1h\"\nnetwork = 0\n[client_conn]\nnetwork = 0\n[envelope]\ngreet_pause = \"3s\"\n"
    );
    let mut p = Pair::start(backend, policy(&toml, SENDMAIL_ACCESS)).await;
    // Connect: REJECT, as sendmail: 550 5.7.1 Access denied.
    let v = connect(&mut p.a, "mx1", "r", "206.81.85.9").await;
    assert_eq!(
        (
            action(&v),
            v.smtp_code,
            v.enhanced_code.as_str(),
            v.text.as_str()
        ),
        (Action::Reject, 550, "5.7.1", "Access denied")
    );
    assert_eq!(
        (v.rule.as_str(), v.reason.as_str()),
        ("Connect:206.81.85", "access")
    );
    let v = connect(&mut p.b, "mx1", "m", "192.0.2.2").await;
    assert_eq!(
        (action(&v), v.smtp_code, v.text.as_str()),
        (Action::Disconnect, 421, "Closing for maintenance")
    );
    // Per-prefix override: 2 for 67.92.16.x ...
    let got: Vec<Action> = futures(&mut p, "67.92.16.7", 3).await;
    assert_eq!(got, [Action::Accept, Action::Accept, Action::Disconnect]);
    let v = connect(&mut p.a, "mx1", "x", "67.92.16.7").await;
    assert_eq!(v.rule, "ClientRate:67.92.16");
    // ... the wildcard (10) elsewhere ...
    let got = futures(&mut p, "198.18.0.1", 11).await;
    assert_eq!(got.iter().filter(|a| **a == Action::Accept).count(), 10);
    assert_eq!(
        connect(&mut p.a, "mx1", "y", "198.18.0.1").await.rule,
        "ClientRate:"
    );
    // ... and 0 (unlimited) for the verified name, even inside 67.92.16.
    for i in 0..12 {
        let mut req = connect_req("mx2", &format!("c{i}"), "67.92.16.8");
        req.client_name = "mail.customerdomain.com".into();
        let v = p
            .inst(i)
            .connect(req)
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        assert_eq!(action(&v), Action::Accept, "connection {i}: {v:?}");
        disconnect(p.inst(i), "mx2", &format!("c{i}"), "67.92.16.8").await;
    }
    // ClientConn per prefix (2) and wildcard (5); OK exempts from everything.
    for i in 0..3 {
        let v = connect(&mut p.a, "mx1", &format!("k{i}"), "61.191.231.1").await;
        assert_eq!(action(&v) == Action::Accept, i < 2, "{v:?}");
    }
    for i in 0..20 {
        let v = connect(p.inst(i), "mx1", &format!("ok{i}"), "192.0.2.1").await;
        assert_eq!(
            (action(&v), v.reason.as_str(), v.rule.as_str()),
            (Action::Accept, "exempt", "Connect:192.0.2.1")
        );
    }
    // GreetPause: 0 for 127.0.0.1 and okslammer.com, the default (3s) elsewhere.
    let gp = |r: mxlimit_proto::v1::ConnectReply| r.policy.unwrap().greet_pause_ms;
    assert_eq!(
        gp(p.a
            .connect(connect_req("mx1", "g1", "127.0.0.1"))
            .await
            .unwrap()
            .into_inner()),
        0
    );
    assert_eq!(
        gp(p.a
            .connect(connect_req("mx1", "g2", "127.0.0.2"))
            .await
            .unwrap()
            .into_inner()),
        3000
    );
    let mut req = connect_req("mx1", "g3", "198.18.1.1");
    req.client_name = "smtp.okslammer.com".into();
    assert_eq!(gp(p.b.connect(req).await.unwrap().into_inner()), 0);
}

/// `n` sessions from `ip`, each disconnected at once (so only ClientRate counts).
async fn futures(p: &mut Pair, ip: &str, n: usize) -> Vec<Action> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("{ip}-{i}");
        out.push(action(&connect(p.inst(i), "mx1", &id, ip).await));
        disconnect(p.inst(i + 1), "mx1", &id, ip).await;
    }
    out
}

async fn shadow_mode_reports_without_blocking(backend: Backend) {
    let toml = "shadow = true\n[client_rate]\nwindow = \"1h\"\naddress = 1\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 1\nblock_after = 2\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n";
    let mut p = Pair::start(backend, policy(toml, "Connect:203.0.113.9 REJECT\n")).await;
    let first = connect(&mut p.a, "mx1", "s1", "10.11.0.1").await;
    assert_eq!((action(&first), first.shadow), (Action::Accept, false));
    let v = connect(&mut p.b, "mx1", "s2", "10.11.0.1").await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str(), v.smtp_code),
        (Action::Accept, true, "client_rate", 421)
    );
    let v = connect(&mut p.a, "mx1", "s3", "203.0.113.9").await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str()),
        (Action::Accept, true, "access")
    );
    let tarpit = [
        bad_rcpt(&mut p.a, "mx1", "s1", "10.11.0.1", "a@x").await,
        bad_rcpt(&mut p.b, "mx1", "s1", "10.11.0.1", "b@x").await,
        bad_rcpt(&mut p.a, "mx1", "s1", "10.11.0.1", "c@x").await,
    ];
    assert_eq!(
        tarpit
            .iter()
            .map(|v| (action(v), v.shadow, v.delay_ms))
            .collect::<Vec<_>>(),
        [
            (Action::Accept, false, 0),
            (Action::Accept, true, 0),
            (Action::Accept, true, 0)
        ]
    );
    assert_eq!(tarpit[2].reason, "banned");
    // Shadow mode delays nothing, from the first RCPT of a session either.
    let r =
        p.b.connect(connect_req("mx1", "s5", "10.11.0.1"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.policy.map(|p| p.tarpit_ms), Some(0));
    let v = connect(&mut p.b, "mx1", "s4", "10.11.0.1").await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str()),
        (Action::Accept, true, "banned")
    );
}

async fn bad_input_is_invalid_argument(backend: Backend) {
    let mut p = Pair::start(backend, policy("", "")).await;
    // Bytes that are no protobuf message: field 1 says 255 bytes follow, none do.
    let addr = p.limiters[0].addr;
    for path in [
        "/mxlimit.v1.Limiter/Connect",
        "/mxlimit.v1.Limiter/Recipient",
        "/mxlimit.v1.Limiter/Heartbeat",
    ] {
        let s = raw_call(addr, path, vec![0x0a, 0xff, 0x01], None).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{path}: {s:?}");
        assert!(
            s.message().starts_with("not a valid protobuf message: "),
            "{}",
            s.message()
        );
    }
    let check = |r: Result<tonic::Response<_>, tonic::Status>, needle: &str| {
        let s = r.map(|_: tonic::Response<()>| ()).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().contains(needle),
            "{:?} does not say {needle:?}",
            s.message()
        );
    };
    let unit = |r: Result<tonic::Response<mxlimit_proto::v1::ConnectReply>, tonic::Status>| {
        r.map(|x| x.map(|_| ()))
    };
    check(
        unit(p.a.connect(connect_req("mx1", "s", "1.2.3")).await),
        "client_ip: \"1.2.3\" is not an IPv4 or IPv6 address",
    );
    check(
        unit(p.a.connect(connect_req("mx1", "s", "")).await),
        "client_ip: must not be empty",
    );
    check(
        unit(p.a.connect(connect_req("mx1", "", "1.2.3.4")).await),
        "session_id: must not be empty",
    );
    check(
        unit(p.a.connect(connect_req("", "s", "1.2.3.4")).await),
        "node: must not be empty",
    );
    check(
        unit(
            p.a.connect(connect_req("mx1", &"s".repeat(1 << 20), "1.2.3.4"))
                .await,
        ),
        "session_id: 1048576 bytes, at most 128",
    );
    let mut req = connect_req("mx1", "s", "1.2.3.4");
    req.helo = "h".repeat(3 << 20);
    check(unit(p.b.connect(req).await), "helo: 3145728 bytes");
    let mut req = connect_req("mx1", "s", "1.2.3.4");
    req.client_name = "not a name".into();
    check(unit(p.b.connect(req).await), "client_name");
    let r =
        p.a.recipient(rcpt_req(
            "mx1",
            "s",
            "1.2.3.4",
            &"r".repeat(100_000),
            true,
            1,
            1,
        ))
        .await
        .map(|x| x.map(|_| ()));
    check(r, "recipient: 100000 bytes, at most 512");
    let r =
        p.a.recipient(rcpt_req("mx1", "s", "::ffff:zz", "a@b", true, 1, 1))
            .await
            .map(|x| x.map(|_| ()));
    check(r, "client_ip");
    let r =
        p.b.heartbeat(HeartbeatRequest {
            node: "mx1".into(),
            leases: vec![Lease {
                session_id: "s".into(),
                client_ip: "nope".into(),
            }],
            ..Default::default()
        })
        .await
        .map(|x| x.map(|_| ()));
    check(r, "leases.client_ip");
    let unit_o = |r: Result<tonic::Response<mxlimit_proto::v1::OffenceReply>, tonic::Status>| {
        r.map(|x| x.map(|_| ()))
    };
    let mut req = offence_req("mx1", "1.2.3.4", OffenceKind::Pregreet, "e");
    req.kind = 0;
    check(
        unit_o(p.a.offence(req).await),
        "kind: 0 is not an offence kind",
    );
    let mut req = offence_req("mx1", "1.2.3.4", OffenceKind::Pregreet, "e");
    req.kind = 77;
    check(unit_o(p.b.offence(req).await), "kind: 77");
    check(
        unit_o(
            p.a.offence(offence_req("mx1", "1.2.3.4", OffenceKind::Auth, ""))
                .await,
        ),
        "event_id: must not be empty",
    );
    check(
        unit_o(
            p.a.offence(offence_req("mx1", "1.2.3.4", OffenceKind::Auth, "a b"))
                .await,
        ),
        "event_id: \"a b\" has characters other than printable ASCII",
    );
    check(
        unit_o(
            p.a.offence(offence_req("mx1", "1.2.3", OffenceKind::Auth, "e"))
                .await,
        ),
        "client_ip",
    );
    // The server is still fine.
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "fine", "1.2.3.4").await),
        Action::Accept
    );
}

async fn lookup_answers_bans_and_access_rules_without_counting(backend: Backend) {
    use mxlimit_proto::v1::LookupRequest;
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 1\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [bad_rcpt]\ntarpit_after = 0\nblock_after = 1\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n";
    let mut p = Pair::start(
        backend,
        policy(
            toml,
            "Connect:203.0.113\tREJECT\nConnect:198.51.100.1\tOK\n",
        ),
    )
    .await;
    let lookup = |ip: &str| LookupRequest {
        client_ip: ip.into(),
        ..Default::default()
    };
    // Counting nothing: many lookups, and the one connection ClientRate allows is still there.
    for i in 0..5 {
        let v = p
            .inst(i)
            .lookup(lookup("10.13.0.1"))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        assert_eq!((action(&v), v.reason.as_str()), (Action::Accept, "ok"));
    }
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s1", "10.13.0.1").await),
        Action::Accept
    );
    let v =
        p.b.lookup(lookup("203.0.113.5"))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(
        (action(&v), v.smtp_code, v.rule.as_str()),
        (Action::Reject, 550, "Connect:203.0.113")
    );
    let v =
        p.a.lookup(lookup("198.51.100.1"))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(v.reason, "exempt");
    // A ban made through one instance is seen by the other's lookups.
    bad_rcpt(&mut p.a, "mx1", "s1", "10.13.0.1", "a@x").await;
    bad_rcpt(&mut p.a, "mx1", "s1", "10.13.0.1", "b@x").await;
    let v =
        p.b.lookup(lookup("10.13.0.1"))
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
    assert_eq!(
        (action(&v), v.smtp_code, v.reason.as_str(), v.rule.as_str()),
        (Action::Disconnect, 421, "banned", "Ban:10.13.0.1")
    );
    let e = p.a.lookup(lookup("not-an-ip")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
/// Explain's `connect` verdict is what the next Connect of the same source gets, in
/// every state a source can be in: the Connect check order is written once in Rust
/// (memory store, Explain) and restated in connect.lua, and this holds them together.
async fn explain_predicts_the_next_connect_in_every_state(backend: Backend) {
    use limiter_server::admin::auth::{AdminAuth, AuthConfig};
    use limiter_server::server::ServeOptions;
    use mxlimit_proto::v1::admin_client::AdminClient;
    use mxlimit_proto::v1::{BlockRequest, ExplainRequest};

    const TOKEN: &str = "test-admin-token-0123456789";
    fn authed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r
    }
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 3\nnetwork = 6\n\
                [client_conn]\naddress = 2\nnetwork = 4\nlease_ttl = \"1h\"\n\
                [bad_rcpt]\ntarpit_after = 0\nnetwork_tarpit_after = 0\nblock_after = 2\nnetwork_block_after = 4\nblock_for = \"1h\"\n";
    let access = "Connect:192.0.2.10\tOK\nConnect:192.0.2.20\tREJECT\n\
                  Connect:10.2.6.50\tOK\nConnect:10.2.13.5\tREJECT\n";
    /// A session that comes and goes: admitted connections count in the window.
    async fn visit(c: &mut LimiterClient<Channel>, session: &str, ip: &str) {
        connect(c, "mx1", session, ip).await;
        disconnect(c, "mx1", session, ip).await;
    }
    for shadow in [false, true] {
        let toml = format!("shadow = {shadow}\n{toml}");
        let mut p = Pair::start_with(backend, policy(&toml, access), || ServeOptions {
            admin: Some(
                AdminAuth::new(AuthConfig {
                    token: Some(TOKEN.into()),
                    ..Default::default()
                })
                .unwrap(),
            ),
            ..Default::default()
        })
        .await;
        let mut admin = AdminClient::new(channel(p.limiters[0].addr).await);
        let c = &mut p.a;
        let mut n = 0;
        let mut session = || {
            n += 1;
            format!("s{n}")
        };
        // Over ClientRate at the address: 3 admitted (and gone) in the window.
        for _ in 0..3 {
            visit(c, &session(), "10.2.1.5").await;
        }
        // Over ClientRate at the network: 6 addresses of 10.2.2.0/24, each once.
        for i in 1..=6 {
            visit(c, &session(), &format!("10.2.2.{i}")).await;
        }
        // Over ClientConn at the address (2 live sessions), and at the network (4).
        for _ in 0..2 {
            connect(c, "mx1", &session(), "10.2.3.5").await;
        }
        for i in 1..=4 {
            connect(c, "mx1", &session(), &format!("10.2.4.{i}")).await;
        }
        // Banned at the address; at the network (5 addresses, 1 bad recipient each);
        // banned AND over rate (the ban answers).
        for i in 0..3 {
            bad_rcpt(c, "mx1", &session(), "10.2.5.5", &format!("u{i}@x")).await;
        }
        for i in 1..=5 {
            bad_rcpt(c, "mx1", &session(), &format!("10.2.6.{i}"), "u@x").await;
        }
        // Over at both levels (the address answers): banned, over rate, over conn.
        for i in 0..3 {
            bad_rcpt(c, "mx1", &session(), "10.2.9.5", &format!("u{i}@x")).await;
        }
        for i in 1..=5 {
            bad_rcpt(c, "mx1", &session(), &format!("10.2.9.{i}"), "u@x").await;
        }
        for i in [5, 5, 5, 1, 2, 3] {
            visit(c, &session(), &format!("10.2.10.{i}")).await;
        }
        for i in [5, 5, 1, 2] {
            connect(c, "mx1", &session(), &format!("10.2.11.{i}")).await;
        }
        // Over ClientRate and ClientConn at the address (rate answers): one session
        // come and gone, two live.
        visit(c, &session(), "10.2.8.5").await;
        for _ in 0..2 {
            connect(c, "mx1", &session(), "10.2.8.5").await;
        }
        for i in 0..3 {
            let s = session();
            visit(c, &s, "10.2.7.5").await;
            bad_rcpt(c, "mx1", &s, "10.2.7.5", &format!("u{i}@x")).await;
        }
        // Exempt (its connections count nowhere); refused by the access file (in
        // shadow mode counted as well, here past its rate); blocked by an operator,
        // once alone and once over a ban.
        for _ in 0..4 {
            connect(c, "mx1", &session(), "192.0.2.10").await;
        }
        for _ in 0..3 {
            visit(c, &session(), "10.2.13.5").await;
        }
        for i in 0..3 {
            bad_rcpt(c, "mx1", &session(), "10.2.12.5", &format!("u{i}@x")).await;
        }
        for target in ["203.0.113.0/24", "10.2.12.0/24"] {
            admin
                .block(authed(BlockRequest {
                    target: target.into(),
                    ttl_ms: 600_000,
                    reason: "dictionary attack".into(),
                }))
                .await
                .expect("block");
        }

        // (state, source, the reason and the rule that must answer)
        let states = [
            ("fresh", "198.51.100.1", "ok", "policy:client_rate.address"),
            (
                "over rate, address",
                "10.2.1.5",
                "client_rate",
                "policy:client_rate.address",
            ),
            (
                "over rate, network",
                "10.2.2.99",
                "client_rate",
                "policy:client_rate.network",
            ),
            (
                "over conn, address",
                "10.2.3.5",
                "client_conn",
                "policy:client_conn.address",
            ),
            (
                "over conn, network",
                "10.2.4.99",
                "client_conn",
                "policy:client_conn.network",
            ),
            ("banned, address", "10.2.5.5", "banned", "Ban:10.2.5.5"),
            ("banned, network", "10.2.6.99", "banned", "Ban:10.2.6.0/24"),
            (
                "banned at both levels",
                "10.2.9.5",
                "banned",
                "Ban:10.2.9.5",
            ),
            (
                "over rate at both levels",
                "10.2.10.5",
                "client_rate",
                "policy:client_rate.address",
            ),
            (
                "over conn at both levels",
                "10.2.11.5",
                "client_conn",
                "policy:client_conn.address",
            ),
            ("banned and over rate", "10.2.7.5", "banned", "Ban:10.2.7.5"),
            (
                "over rate and conn",
                "10.2.8.5",
                "client_rate",
                "policy:client_rate.address",
            ),
            ("exempt", "192.0.2.10", "exempt", "Connect:192.0.2.10"),
            (
                "exempt in a banned network",
                "10.2.6.50",
                "exempt",
                "Connect:10.2.6.50",
            ),
            (
                "access refusal",
                "192.0.2.20",
                "access",
                "Connect:192.0.2.20",
            ),
            (
                "access refusal over rate",
                "10.2.13.5",
                "access",
                "Connect:10.2.13.5",
            ),
            ("blocked", "203.0.113.5", "blocked", "Block:203.0.113.0/24"),
            (
                "blocked and banned",
                "10.2.12.5",
                "blocked",
                "Block:10.2.12.0/24",
            ),
        ];
        for (state, ip, reason, rule) in states {
            let explained = admin
                .explain(authed(ExplainRequest {
                    client_ip: ip.into(),
                    ..Default::default()
                }))
                .await
                .expect("explain")
                .into_inner()
                .connect
                .expect("a connect verdict");
            let got = connect(c, "mx1", &session(), ip).await;
            // How long a refusal holds is the store's to say, at the time it decides.
            let unheld = Verdict {
                hold_ms: 0,
                hold_source: String::new(),
                ..got.clone()
            };
            assert_eq!(explained, unheld, "{state} ({ip}), shadow = {shadow}");
            let holds = !shadow && (reason == "banned" || reason == "client_rate");
            assert_eq!(got.hold_ms > 0, holds, "{state} ({ip}), shadow = {shadow}");
            // The states are what they say: each is answered by the reason and the rule
            // (so the level) it was built for.
            assert_eq!(
                (got.reason.as_str(), got.rule.as_str()),
                (reason, rule),
                "{state} ({ip}), shadow = {shadow}"
            );
            // Blocks bite in shadow mode too; the rest only report there.
            let blocks = reason != "ok" && reason != "exempt" && (!shadow || reason == "blocked");
            assert_eq!(
                action(&got) != Action::Accept,
                blocks,
                "{state} ({ip}), shadow = {shadow}: {got:?}"
            );
        }
    }
}

/// Early talkers, counted as the log adapter (or a custom MTA) reports them: with
/// pregreet's thresholds at 2 offences per address and 3 offending addresses per
/// network, an address is banned at its second offence (a retried call counts once),
/// then a third offending address bans its network, on both instances, for IPv4 and
/// IPv6 networks alike.
// Long on purpose: one attack whose steps build on each other, read top to bottom.
async fn offences_ban_the_address_then_the_network_on_every_instance(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [offences.pregreet]\nban_at = 2\nnetwork_ban_at = 3\nblock_for = \"1h\"\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let pregreet = OffenceKind::Pregreet;
    for (net, a, b, c, other) in [
        (
            "10.6.6.0/24",
            "10.6.6.1",
            "10.6.6.2",
            "10.6.6.3",
            "10.6.6.200",
        ),
        (
            "2001:db8:6::/64",
            "2001:db8:6::1",
            "2001:db8:6::2",
            "2001:db8:6::3",
            "2001:db8:6::c8",
        ),
    ] {
        let first = offence(&mut p.a, "mx1", a, pregreet, "e1").await;
        assert_eq!(
            (action(&first), first.reason.as_str(), first.rule.as_str()),
            (Action::Accept, "ok", "policy:offences.pregreet")
        );
        // The same event again (a retry, another instance): still one.
        let retry = offence(&mut p.b, "mx1", a, pregreet, "e1").await;
        assert_eq!(action(&retry), Action::Accept, "{retry:?}");
        // The same event id from another node is another offence.
        let ban = offence(&mut p.b, "mx2", a, pregreet, "e1").await;
        assert_eq!(
            (
                action(&ban),
                ban.smtp_code,
                ban.reason.as_str(),
                ban.rule.clone()
            ),
            (Action::Disconnect, 421, "banned", format!("Ban:{a}"))
        );
        for (i, inst) in [0, 1].into_iter().enumerate() {
            let v = connect(p.inst(inst), "mx3", &format!("{a}-{i}"), a).await;
            assert_eq!(
                (action(&v), v.reason.as_str(), v.rule.clone()),
                (Action::Disconnect, "banned", format!("Ban:{a}"))
            );
            assert_eq!(
                v.text,
                "Too many invalid recipients or protocol errors from your address; try again later."
            );
        }
        // Further offences of a banned address answer its ban.
        let again = offence(&mut p.a, "mx1", a, pregreet, "e9").await;
        assert_eq!(again.rule, format!("Ban:{a}"));
        // The network is not banned yet: two addresses short of three.
        assert_eq!(
            action(&connect(&mut p.a, "mx3", &format!("{other}-x"), other).await),
            Action::Accept
        );
        assert_eq!(
            action(&offence(&mut p.a, "mx1", b, pregreet, "e2").await),
            Action::Accept
        );
        // The third address of the network bans the whole network.
        let ban = offence(&mut p.b, "mx2", c, pregreet, "e3").await;
        assert_eq!(
            (action(&ban), ban.rule.clone()),
            (Action::Disconnect, format!("Ban:{net}"))
        );
        let v = connect(&mut p.b, "mx3", &format!("{other}-y"), other).await;
        assert_eq!(
            (action(&v), v.rule.clone()),
            (Action::Disconnect, format!("Ban:{net}"))
        );
    }
    // Another network is untouched.
    assert_eq!(
        action(&connect(&mut p.a, "mx3", "ok", "10.6.7.1").await),
        Action::Accept
    );
}

/// Each kind has its own count: two protocol errors and one pregreet do not add up to
/// a ban (protocol's default is 3); AUTH failures are off by default and never ban; an
/// exempt source (Connect: OK) is not counted; in shadow mode a would-be ban is only
/// reported.
async fn offence_kinds_count_apart_and_can_be_exempt_off_or_shadowed(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                [offences.pregreet]\nban_at = 2\nnetwork_ban_at = 0\n";
    let mut p = Pair::start(backend, policy(toml, "Connect:10.6.8.9 OK\n")).await;
    let ip = "10.6.8.1";
    let v = [
        offence(&mut p.a, "mx1", ip, OffenceKind::Protocol, "p1").await,
        offence(&mut p.b, "mx1", ip, OffenceKind::Protocol, "p2").await,
        offence(&mut p.a, "mx1", ip, OffenceKind::Pregreet, "g1").await,
    ];
    assert_eq!(
        v.iter()
            .map(|v| (action(v), v.rule.as_str()))
            .collect::<Vec<_>>(),
        [
            (Action::Accept, "policy:offences.protocol"),
            (Action::Accept, "policy:offences.protocol"),
            (Action::Accept, "policy:offences.pregreet")
        ]
    );
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s1", ip).await),
        Action::Accept
    );
    // The third protocol error bans (default ban_at = 3).
    let ban = offence(&mut p.b, "mx1", ip, OffenceKind::Protocol, "p3").await;
    assert_eq!(
        (action(&ban), ban.rule.as_str()),
        (Action::Disconnect, "Ban:10.6.8.1")
    );

    let brute = "10.6.8.2";
    for i in 0..20 {
        let v = offence(&mut p.a, "mx1", brute, OffenceKind::Auth, &format!("a{i}")).await;
        assert_eq!(
            (action(&v), v.rule.as_str()),
            (Action::Accept, "policy:offences.auth")
        );
    }
    assert_eq!(
        action(&connect(&mut p.b, "mx1", "s2", brute).await),
        Action::Accept,
        "auth is off by default"
    );

    let exempt = "10.6.8.9";
    for i in 0..3 {
        let v = offence(
            &mut p.a,
            "mx1",
            exempt,
            OffenceKind::Pregreet,
            &format!("x{i}"),
        )
        .await;
        assert_eq!((action(&v), v.reason.as_str()), (Action::Accept, "exempt"));
    }

    let mut s = Pair::start(backend, policy(&format!("shadow = true\n{toml}"), "")).await;
    let ip = "10.6.9.1";
    offence(&mut s.a, "mx1", ip, OffenceKind::Pregreet, "g1").await;
    let v = offence(&mut s.b, "mx1", ip, OffenceKind::Pregreet, "g2").await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str()),
        (Action::Accept, true, "banned")
    );
    let v = connect(&mut s.a, "mx1", "s3", ip).await;
    assert_eq!(
        (action(&v), v.shadow, v.reason.as_str()),
        (Action::Accept, true, "banned")
    );
}

/// A refusal by ClientRate holds, on the instance that got it, until the oldest
/// admission leaves the window, and never longer: the hold ends no later than the
/// store would admit, and the store admits again then.
async fn held_refusals_end_when_the_store_would_admit(backend: Backend) {
    const W: Duration = Duration::from_millis(1500);
    let toml = "[client_rate]\nwindow = \"1500ms\"\naddress = 2\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ip = "10.8.8.8";
    let sent_a = Instant::now();
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "a", ip).await),
        Action::Accept
    );
    // The store logged `a` between sent_a and now: it leaves the window by then + W.
    let a_leaves_by = Instant::now() + W;
    assert_eq!(
        action(&connect(&mut p.b, "mx2", "b", ip).await),
        Action::Accept
    );
    let sent_c = Instant::now();
    let c = connect(&mut p.a, "mx1", "c", ip).await;
    assert_eq!(
        (action(&c), c.reason.as_str()),
        (Action::Disconnect, "client_rate")
    );
    assert_eq!(c.hold_source, ip);
    assert!(c.hold_ms > 0, "a rate refusal holds: {c:?}");
    let held_until = sent_c + Duration::from_millis(c.hold_ms.into());
    assert!(
        held_until <= a_leaves_by,
        "held past the time the store would admit: {c:?}"
    );
    // Meanwhile, answered from the hold: the same refusal, with less time left.
    let d = connect(&mut p.a, "mx1", "d", ip).await;
    assert_eq!(
        (action(&d), d.rule.as_str()),
        (Action::Disconnect, c.rule.as_str())
    );
    assert!(d.hold_ms <= c.hold_ms && d.hold_ms > 0);
    // The other instance learns it from the store, and holds it too.
    let e = connect(&mut p.b, "mx2", "e", ip).await;
    assert!(action(&e) == Action::Disconnect && e.hold_ms > 0);
    // Once the hold is over the store decides again: refused (and held) only while
    // `a` may still be in the window, then admitted, never before `a` could leave it.
    tokio::time::sleep_until(held_until.into()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    let admitted_at = loop {
        n += 1;
        let v = connect(&mut p.a, "mx1", &format!("f{n}"), ip).await;
        if action(&v) == Action::Accept {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "never admitted again: {v:?}");
        let wait = Duration::from_millis(v.hold_ms.max(5).into());
        tokio::time::sleep(wait).await;
    };
    assert!(
        admitted_at >= sent_a + W,
        "admitted before `a` left the window"
    );
}

/// Holds never change who gets in: an exempt address of a held network, a host rule
/// that lifts the limit, a reload that raises it, and shadow mode (which holds
/// nothing) are all answered as without holds.
async fn held_refusals_keep_rules_exemptions_and_shadow_mode_exact(backend: Backend) {
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 1\nnetwork = 3\n[client_conn]\naddress = 0\nnetwork = 0\n";
    let access = "Connect:10.7.7.9\tOK\nClientRate:friendly.example\t0\n";
    let mut p = Pair::start(backend, policy(toml, access)).await;
    let named = async |c: &mut LimiterClient<Channel>, session: &str, ip: &str, name: &str| {
        let mut r = connect_req("mx1", session, ip);
        r.client_name = name.into();
        c.connect(r).await.unwrap().into_inner().verdict.unwrap()
    };
    // The address level: 10.7.7.1 refused and held ...
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s1", "10.7.7.1").await),
        Action::Accept
    );
    let held = connect(&mut p.a, "mx1", "s2", "10.7.7.1").await;
    assert!(
        action(&held) == Action::Disconnect && held.hold_ms > 0,
        "{held:?}"
    );
    // ... yet the same address under a host rule without a limit gets in.
    let v = named(&mut p.a, "s3", "10.7.7.1", "mx.friendly.example").await;
    assert_eq!(action(&v), Action::Accept, "{v:?}");
    // The network level (3 per window): a third address fills it, a fourth is held.
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s4", "10.7.7.2").await),
        Action::Accept
    );
    // Promised to the caller for the address alone: an exempt address (and a name
    // rule) could tell the network's addresses apart, which a caller does not know.
    let net = connect(&mut p.a, "mx1", "s5", "10.7.7.3").await;
    assert_eq!(
        (action(&net), net.hold_source.as_str()),
        (Action::Disconnect, "10.7.7.3")
    );
    assert!(net.hold_ms > 0);
    // The limiter holds the whole network, for every address of it but the exempt one.
    let v = connect(&mut p.a, "mx1", "s6", "10.7.7.4").await;
    assert_eq!(
        (action(&v), v.rule.as_str()),
        (Action::Disconnect, net.rule.as_str())
    );
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s7", "10.7.7.9").await),
        Action::Accept
    );

    // A reload that raises the limit: the held address gets in at once.
    let toml = "[client_rate]\nwindow = \"1h\"\naddress = 5\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    p.policy.set(policy(toml, ""));
    assert_eq!(
        action(&connect(&mut p.a, "mx1", "s8", "10.7.7.1").await),
        Action::Accept,
        "held under the old limit only"
    );

    // Shadow mode counts every connection: nothing is held, nothing refused.
    let toml = "shadow = true\n[client_rate]\nwindow = \"1h\"\naddress = 1\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n";
    p.policy.set(policy(toml, ""));
    for i in 0..3 {
        let v = connect(&mut p.a, "mx1", &format!("sh{i}"), "10.6.6.6").await;
        assert_eq!(action(&v), Action::Accept);
        assert_eq!((v.hold_ms, v.shadow), (0, i > 0), "{v:?}");
    }
}

/// `Release` frees the leases of many ended sessions of one node, in any networks and
/// families, as their Disconnects would; again, it frees nothing; bad input is refused.
async fn release_frees_many_leases_across_networks_in_one_call(backend: Backend) {
    let toml = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 1\nnetwork = 0\n";
    let mut p = Pair::start(backend, policy(toml, "")).await;
    let ips = [
        "10.4.1.1",
        "10.4.1.2",
        "10.4.2.1",
        "10.4.2.2",
        "10.4.3.1",
        "2001:db8:4::1",
    ];
    for (i, ip) in ips.iter().enumerate() {
        let v = connect(p.inst(i), "mx1", &format!("s{i}"), ip).await;
        assert_eq!(action(&v), Action::Accept, "{ip}");
        let again = connect(p.inst(i), "mx1", &format!("t{i}"), ip).await;
        assert_eq!(again.reason, "client_conn", "{ip}");
    }
    let mut leases: Vec<Lease> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Lease {
            session_id: format!("s{i}"),
            client_ip: ip.to_string(),
        })
        .collect();
    leases.push(Lease {
        session_id: "never".into(),
        client_ip: "10.4.1.1".into(),
    });
    let req = ReleaseRequest {
        node: "mx1".into(),
        epoch: "e1".into(),
        leases,
    };
    let r = p.a.release(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.released, 6);
    for (i, ip) in ips.iter().enumerate() {
        let v = connect(p.inst(i + 1), "mx1", &format!("u{i}"), ip).await;
        assert_eq!(action(&v), Action::Accept, "{ip}: freed");
    }
    let r = p.b.release(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.released, 0, "released twice");
    let mut bad = req;
    bad.leases[0].client_ip = "not-an-address".into();
    let e = p.a.release(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}
