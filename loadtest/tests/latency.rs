//! Open-loop latency counts from each session's intended start: a stall shows in every
//! session it delays, not only in the few that were in flight when it began.

use std::time::Duration;

use loadtest::bench::target::Target;
use loadtest::bench::{Api, BenchOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_shows_every_session_a_stall_delays() {
    let redis = testkit::RedisServer::start();
    let target = Target::open(None, Some(&redis.url()), 2).await.unwrap();
    let port = redis.port;
    // 300 ms into the run, the limiter's Redis stops answering for 300 ms (a real
    // pause of every client of that Redis).
    let stall = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        testkit::redis::resp_command(port, &["CLIENT", "PAUSE", "300", "ALL"])
    });
    let r = run(
        &target.nodes,
        &BenchOptions {
            nodes: 2,
            concurrency: 1,
            rate: Some(200.0),
            duration: Duration::from_secs(1),
            rcpts: 0,
            bad_share: 0.0,
            networks: 16,
            progress: false,
            release_every: None,
            api: Api::Mxlimit,
        },
    )
    .await;
    assert_eq!(stall.join().unwrap(), "+OK");
    assert_eq!((r.sessions, r.errors.len()), (200, 0), "{r:?}");
    // About 60 of the 200 sessions were due during the pause, waiting from 300 ms down
    // to nothing: the slowest tenth waited 200 ms or more, the slowest ~300 ms.
    let connect = &r.latency["connect"];
    assert!(connect.max_us >= 250_000, "{connect:?}");
    assert!(connect.p90_us >= 150_000, "{connect:?}");
    // Most were not delayed at all.
    assert!(connect.p50_us < 50_000, "{connect:?}");
}
