//! The harness counts right: scenarios against limiters with known limits yield exactly
//! the expected admitted and refused counts, and per-host counting N times as much.

use std::time::Duration;

use loadtest::attack::ActorReport;
use loadtest::scenario::{Actor, Role, Scenario};

fn scenario(nodes: usize, rate: f64, secs: u64) -> Scenario {
    let d = Duration::from_secs(secs);
    Scenario {
        name: "test".into(),
        nodes,
        actors: vec![
            Actor {
                name: "attacker".into(),
                role: Role::Attacker,
                network: "198.51.100.0/24".parse().unwrap(),
                addresses: 40,
                rate,
                rcpts: 1,
                bad: true,
                start: Duration::ZERO,
                stop: d,
            },
            Actor {
                name: "legit".into(),
                role: Role::Legitimate,
                network: "192.0.2.0/24".parse().unwrap(),
                addresses: 1,
                // Stays under every limit the tests set.
                rate: 2.0,
                rcpts: 1,
                bad: false,
                start: Duration::ZERO,
                stop: d,
            },
        ],
    }
}

fn attacker(r: &loadtest::report::Report) -> (&ActorReport, &ActorReport) {
    (&r.cluster_wide.actors[0], &r.per_host.actors[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rate_holds_exactly_cluster_wide_and_per_host_lets_n_times_through() {
    let policy = "[client_rate]\nwindow = \"1h\"\naddress = 0\nnetwork = 5\n[client_conn]\naddress = 0\nnetwork = 0\n\
                  [bad_rcpt]\ntarpit_after = 0\nblock_after = 0\nnetwork_tarpit_after = 0\nnetwork_block_after = 0\n";
    let s = scenario(4, 25.0, 2);
    let r = loadtest::attack_grpc(&s, policy, None).await.unwrap();
    let (c, p) = attacker(&r);
    assert_eq!(
        (c.attempts, c.admitted, c.refused, c.errors),
        (50, 5, 45, 0)
    );
    assert_eq!(c.max_admitted_in_window, 5, "+0 over the limit");
    // Each of 4 nodes counts alone (12 or 13 attempts each): 4 times the limit.
    assert_eq!((p.attempts, p.admitted, p.refused), (50, 4 * 5, 50 - 4 * 5));
    assert_eq!(p.max_admitted_in_window, 4 * 5);
    for mode in [&r.cluster_wide, &r.per_host] {
        assert_eq!(mode.actors[1].false_refusals, 0, "{}", mode.mode);
        assert_eq!(mode.actors[1].admitted, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_hold_exactly_cluster_wide_and_per_host_lets_n_times_through() {
    let policy = "[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0\n\
                  [bad_rcpt]\ntarpit_after = 0\nblock_after = 0\nnetwork_tarpit_after = 0\nnetwork_block_after = 5\n";
    let s = scenario(2, 25.0, 2);
    let r = loadtest::attack_grpc(&s, policy, None).await.unwrap();
    let (c, p) = attacker(&r);
    // Cluster-wide: 5 bad recipients pass, the 6th bans the network on every node.
    assert_eq!(
        (c.admitted, c.bad_rcpts_sent, c.bad_rcpts_passed),
        (6, 6, 5)
    );
    assert_eq!(c.refused, 50 - 6);
    assert_eq!(c.time_to_ban_ms, Some(5 * 40));
    // Per-host: each of the 2 nodes lets 5 pass before it bans.
    assert_eq!((p.admitted, p.bad_rcpts_passed), (12, 10));
    assert!(p.time_to_ban_ms.unwrap() > c.time_to_ban_ms.unwrap());
    assert_eq!(r.cluster_wide.first_ban_ms, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_write_json_and_a_chart() {
    let s = loadtest::scenario::preset(
        "dictionary",
        2,
        Duration::from_millis(500),
        &loadtest::scenario::grpc_networks(),
    )
    .unwrap();
    let r = loadtest::attack_grpc(&s, loadtest::scenario::DEMO_POLICY, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    r.write_json(&dir.path().join("r.json")).unwrap();
    r.write_svg(&dir.path().join("r.svg")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(json["cluster_wide"]["mode"], "cluster-wide");
    assert_eq!(json["per_host"]["actors"][0]["name"], "dictionary attack");
    let svg = std::fs::read_to_string(dir.path().join("r.svg")).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("cluster-wide counting")
            && svg.contains("per-host counting")
    );
    assert!(r.table().contains("connections admitted"));
}
