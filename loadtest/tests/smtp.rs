//! `loadtest smtp`'s lab and scenario over real SMTP: private Postfix instances with
//! mx-agent milters, cluster-wide (one limiter on a real redis-server) and per-host.

use std::time::Duration;

use loadtest::scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dictionary_attack_over_real_postfix_is_held_cluster_wide_and_not_per_host() {
    // The mx-agent binary, built by cargo for this workspace.
    assert!(
        loadtest::lab::agent_binary().is_ok(),
        "build mx-agent first (cargo test --workspace does)"
    );
    let mut s = scenario::preset(
        "dictionary",
        2,
        Duration::from_secs(2),
        &scenario::loopback_networks(),
    )
    .unwrap();
    for a in &mut s.actors {
        a.rate *= 0.2; // 20 attempts per second over SMTP
    }
    let r = loadtest::attack_smtp(&s, scenario::DEMO_POLICY, Duration::ZERO)
        .await
        .unwrap();
    let (c, p) = (&r.cluster_wide.actors[0], &r.per_host.actors[0]);
    assert_eq!(c.attempts, 40);
    // 30 unknown users pass cluster-wide (network_block_after), then the network is
    // banned on both MX; per host, neither MX ever sees 30.
    assert_eq!(c.bad_rcpts_passed, 30, "{}", r.table());
    assert!(c.time_to_ban_ms.is_some(), "{}", r.table());
    assert_eq!(p.bad_rcpts_passed, 40, "{}", r.table());
    assert_eq!(p.time_to_ban_ms, None);
    for m in [&r.cluster_wide, &r.per_host] {
        let legit = &m.actors[1];
        assert_eq!(
            (legit.false_refusals, legit.errors),
            (0, 0),
            "{}: {}",
            m.mode,
            r.table()
        );
    }
}
