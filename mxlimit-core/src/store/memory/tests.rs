//! The in-memory store on a hand-moved clock: windows and TTLs checked to the
//! millisecond. (The same behaviours are checked over gRPC on every store by the
//! integration suite.)

use super::*;
use crate::source::{Aggregation, Source};
use crate::store::{Ban, BanPolicy, NetLeases};

fn src(ip: &str) -> Source {
    Source::new(ip.parse().unwrap(), Aggregation::default())
}

fn lease<'a>(session: &'a str) -> LeaseId<'a> {
    LeaseId {
        node: "mx1",
        epoch: "e1",
        session,
    }
}

fn op<'a>(s: &'a Source, session: &'a str) -> ConnectOp<'a> {
    ConnectOp {
        source: s,
        lease: lease(session),
        rate: PerLevel::default(),
        window_ms: 1000,
        conn: PerLevel::default(),
        lease_ttl_ms: 30_000,
        shadow: false,
        bad_window_ms: 60_000,
    }
}

fn store() -> (MemoryStore, Clock) {
    let clock = Clock::manual();
    (
        MemoryStore::with_clock(MemoryConfig::default(), clock.clone()),
        clock,
    )
}

fn rate2(o: ConnectOp<'_>) -> ConnectOp<'_> {
    ConnectOp {
        rate: PerLevel {
            address: 2,
            network: 0,
        },
        ..o
    }
}

fn conn2(o: ConnectOp<'_>) -> ConnectOp<'_> {
    ConnectOp {
        conn: PerLevel {
            address: 2,
            network: 0,
        },
        lease_ttl_ms: 5000,
        ..o
    }
}

async fn admitted(st: &MemoryStore, o: ConnectOp<'_>) -> bool {
    st.connect(&o).await.unwrap().refusal.is_none()
}

#[tokio::test]
async fn client_rate_admits_at_most_n_in_any_window() {
    let (st, clock) = store();
    let s = &src("10.0.0.1");
    let rate = rate2;
    let ids = ["s0", "s1", "s2", "s3", "s4", "s5"];
    assert!(admitted(&st, rate(op(s, ids[0]))).await); // t=0
    clock.advance(600);
    assert!(admitted(&st, rate(op(s, ids[1]))).await); // t=600
    clock.advance(100);
    assert!(!admitted(&st, rate(op(s, ids[2]))).await); // t=700: 2 in (−300, 700]
    clock.advance(301);
    // t=1001: the connection of t=0 has left the window, the one of t=600 has not.
    // A fixed window starting at 1000 would admit two here.
    assert!(admitted(&st, rate(op(s, ids[3]))).await);
    assert!(!admitted(&st, rate(op(s, ids[4]))).await);
    clock.advance(600);
    assert!(admitted(&st, rate(op(s, ids[5]))).await); // t=1601
}

#[tokio::test]
async fn a_session_admitted_again_after_its_release_is_logged_once() {
    // As ZADD on Redis: the member moves to now, the log does not grow.
    let (st, clock) = store();
    let s = &src("10.0.0.1");
    assert!(admitted(&st, rate2(op(s, "a"))).await); // t=0
    st.disconnect(s, lease("a")).await.unwrap();
    clock.advance(500);
    assert!(admitted(&st, rate2(op(s, "a"))).await); // t=500: "a" moves to 500
    st.disconnect(s, lease("a")).await.unwrap();
    assert!(
        admitted(&st, rate2(op(s, "b"))).await,
        "two members in the log, not three"
    );
    assert!(!admitted(&st, rate2(op(s, "c"))).await);
    clock.advance(501);
    // t=1001: "a" logged at 500 is still in the window; the log holds a and b.
    assert!(!admitted(&st, rate2(op(s, "c"))).await);
}

#[tokio::test]
async fn network_rate_counts_every_address_of_the_network() {
    let (st, _) = store();
    let srcs: Vec<Source> = (1..=4).map(|i| src(&format!("10.0.0.{i}"))).collect();
    let mut got = Vec::new();
    for (i, s) in srcs.iter().enumerate() {
        let id = format!("s{i}");
        let o = ConnectOp {
            rate: PerLevel {
                address: 0,
                network: 3,
            },
            ..op(s, &id)
        };
        got.push(st.connect(&o).await.unwrap().refusal);
    }
    assert_eq!(got[..3], [None, None, None]);
    assert_eq!(
        got[3],
        Some(Refusal::Rate {
            level: Level::Network,
            count: 3
        })
    );
}

#[tokio::test]
async fn leases_are_released_expire_and_retries_count_once() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    let conn = conn2;
    assert!(admitted(&st, conn(op(&s, "a"))).await);
    // A retried Connect of the same session holds one lease, not two.
    let again = st.connect(&conn(op(&s, "a"))).await.unwrap();
    assert!(again.retry && again.refusal.is_none());
    assert!(admitted(&st, conn(op(&s, "b"))).await);
    assert_eq!(
        st.connect(&conn(op(&s, "c"))).await.unwrap().refusal,
        Some(Refusal::Conn {
            level: Level::Address,
            count: 2
        })
    );
    st.disconnect(&s, lease("a")).await.unwrap();
    st.disconnect(&s, lease("a")).await.unwrap(); // twice is harmless
    assert!(admitted(&st, conn(op(&s, "c"))).await);
    clock.advance(4999);
    assert!(!admitted(&st, conn(op(&s, "d"))).await);
    clock.advance(1);
    assert!(
        admitted(&st, conn(op(&s, "d"))).await,
        "leases expire at their TTL"
    );
}

#[tokio::test]
async fn heartbeats_renew_listed_leases_and_a_new_epoch_frees_the_old() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    let conn = conn2;
    assert!(admitted(&st, conn(op(&s, "a"))).await);
    assert!(admitted(&st, conn(op(&s, "b"))).await);
    clock.advance(4000);
    let hb = HeartbeatOp {
        node: "mx1",
        epoch: "e1",
        by_net: vec![NetLeases {
            source: s.clone(),
            leases: vec![("a", s.ip_text.clone()), ("b", s.ip_text.clone())],
        }],
        bare: vec![],
        lease_ttl_ms: 6000,
    };
    let out = st.heartbeat(&hb).await.unwrap();
    assert_eq!((out.renewed, out.freed), (2, 0));
    clock.advance(5000); // 9000: both renewed at 4000 live to 10000
    assert!(!admitted(&st, conn(op(&s, "c"))).await);
    let restart = HeartbeatOp {
        epoch: "e2",
        by_net: vec![],
        bare: vec![],
        ..hb
    };
    let out = st.heartbeat(&restart).await.unwrap();
    assert_eq!(out.freed, 2);
    assert!(out.epoch_changed);
    assert!(
        admitted(&st, conn(op(&s, "c"))).await,
        "old epoch's leases freed at once"
    );
}

fn rcpt<'a>(s: &'a Source, event: &str, rejected: bool) -> RecipientOp<'a> {
    RecipientOp {
        source: s,
        event: event.to_string(),
        rejected,
        window_ms: 10_000,
        tarpit_after: PerLevel {
            address: 2,
            network: 5,
        },
        block_after: PerLevel {
            address: 3,
            network: 6,
        },
        ban: BanPolicy {
            block_for_ms: 1000,
            escalation: 2.0,
            max_block_ms: 10_000,
            remember_ms: 100_000,
        },
        shadow: false,
    }
}

#[tokio::test]
async fn bad_recipients_ban_past_block_after_with_escalation() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    // Network bans off here: this is about the address.
    let rcpt = |s, e: &str, r| RecipientOp {
        block_after: PerLevel {
            address: 3,
            network: 0,
        },
        ..rcpt(s, e, r)
    };
    for (i, want) in [1, 2, 3].into_iter().enumerate() {
        let out = st
            .recipient(&rcpt(&s, &format!("e{i}"), true))
            .await
            .unwrap();
        assert_eq!((out.ban, out.bad.address), (None, want));
    }
    // A retried call counts once.
    assert_eq!(
        st.recipient(&rcpt(&s, "e2", true))
            .await
            .unwrap()
            .bad
            .address,
        3
    );
    let out = st.recipient(&rcpt(&s, "e3", true)).await.unwrap();
    assert_eq!(
        out.ban,
        Some(Ban {
            level: Level::Address,
            remaining_ms: 1000,
            new: true,
            offence: 1
        })
    );
    let c = st.connect(&op(&s, "x")).await.unwrap();
    assert_eq!(
        c.refusal,
        Some(Refusal::Banned {
            level: Level::Address,
            remaining_ms: 1000
        })
    );
    clock.advance(1000);
    assert!(admitted(&st, op(&s, "y")).await, "the ban is over");
    for i in 10..14 {
        st.recipient(&rcpt(&s, &format!("e{i}"), true))
            .await
            .unwrap();
    }
    let c = st.connect(&op(&s, "z")).await.unwrap();
    assert_eq!(
        c.refusal,
        Some(Refusal::Banned {
            level: Level::Address,
            remaining_ms: 2000
        }),
        "second offence: twice as long"
    );
}

#[tokio::test]
async fn bad_recipients_of_many_addresses_ban_the_network() {
    let (st, _) = store();
    let mut last = None;
    // One bad RCPT per address: no address goes past its limit, the network does.
    for i in 1..=7 {
        let s = src(&format!("10.0.0.{i}"));
        last = st
            .recipient(&rcpt(&s, &format!("e{i}"), true))
            .await
            .unwrap()
            .ban;
    }
    assert_eq!(last.map(|b| b.level), Some(Level::Network));
    let other = src("10.0.0.200");
    assert_eq!(
        st.connect(&op(&other, "n"))
            .await
            .unwrap()
            .refusal
            .map(|r| matches!(
                r,
                Refusal::Banned {
                    level: Level::Network,
                    ..
                }
            )),
        Some(true)
    );
}

#[tokio::test]
async fn shadow_mode_admits_but_reports() {
    let (st, _) = store();
    let s = src("10.0.0.1");
    let o = |id| ConnectOp {
        rate: PerLevel {
            address: 1,
            network: 0,
        },
        shadow: true,
        ..op(&s, id)
    };
    assert_eq!(st.connect(&o("a")).await.unwrap().refusal, None);
    assert_eq!(
        st.connect(&o("b")).await.unwrap().refusal,
        Some(Refusal::Rate {
            level: Level::Address,
            count: 1
        })
    );
    // Admitted anyway: its lease is held, so a retry is a retry.
    assert!(st.connect(&o("b")).await.unwrap().retry);
}

#[tokio::test]
async fn a_flood_of_distinct_ipv6_addresses_stays_within_max_entries() {
    let clock = Clock::manual();
    let st = MemoryStore::with_clock(
        MemoryConfig {
            max_entries: 64 * 100,
        },
        clock.clone(),
    );
    // A ban that must survive the flood.
    let victim = src("2001:db8:ffff::1");
    for i in 0..4 {
        let mut r = rcpt(&victim, &format!("e{i}"), true);
        r.ban.block_for_ms = 1_000_000;
        r.ban.max_block_ms = 1_000_000;
        st.recipient(&r).await.unwrap();
    }
    for i in 0..100_000u32 {
        let s = src(&format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff));
        let o = ConnectOp {
            lease_ttl_ms: 60_000,
            ..op(&s, "s")
        };
        st.connect(&o).await.unwrap();
        clock.advance(1);
    }
    assert!(st.entries() <= 64 * 100, "{} entries", st.entries());
    assert_eq!(
        st.entries(),
        st.entries_held(),
        "the count is the maps' size"
    );
    assert!(st.evicted() > 0);
    assert!(matches!(
        st.connect(&op(&victim, "v")).await.unwrap().refusal,
        Some(Refusal::Banned { .. })
    ));
    // Once everything has expired, a sweep empties the store.
    clock.advance(10_000_000);
    st.sweep();
    assert_eq!(st.entries(), 0);
}

#[tokio::test]
async fn a_flood_inside_one_network_stays_within_max_entries_and_counts_right() {
    let clock = Clock::manual();
    let st = MemoryStore::with_clock(
        MemoryConfig {
            max_entries: 64 * 100,
        },
        clock.clone(),
    );
    for i in 0..20_000u32 {
        let s = src(&format!("2001:db8:1:2::{:x}:{:x}", i >> 16, i & 0xffff));
        st.connect(&ConnectOp {
            lease_ttl_ms: 1,
            ..op(&s, "s")
        })
        .await
        .unwrap();
        st.recipient(&rcpt(&s, &format!("e{i}"), true))
            .await
            .unwrap();
        clock.advance(2);
        assert_eq!(st.entries(), st.entries_held(), "after {i}");
    }
    assert!(st.entries() <= 64 * 100, "{} entries", st.entries());
}

#[tokio::test]
async fn leases_of_unlimited_sources_expire_too() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    for i in 0..1000 {
        st.connect(&ConnectOp {
            lease_ttl_ms: 1000,
            ..op(&s, &format!("s{i}"))
        })
        .await
        .unwrap();
    }
    clock.advance(1000);
    st.connect(&ConnectOp {
        lease_ttl_ms: 1000,
        ..op(&s, "last")
    })
    .await
    .unwrap();
    let shard = st.shard(&s.net);
    assert_eq!(
        shard.nets[&s.net].leases.count(),
        1,
        "expired leases are dropped without a limit too"
    );
}

#[tokio::test]
async fn bare_session_ids_keep_leases_past_the_registry_ttl() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    // The design contract's caller: no epoch on Connect, bare ids on Heartbeat.
    let o = |id| ConnectOp {
        lease: LeaseId {
            node: "mx1",
            epoch: "",
            session: id,
        },
        conn: PerLevel {
            address: 1,
            network: 0,
        },
        lease_ttl_ms: 1000,
        ..op(&s, id)
    };
    assert!(admitted(&st, o("a")).await);
    // Heartbeats every 300 ms with only the session id, for ten lease TTLs (2.5 registry TTLs).
    for _ in 0..34 {
        clock.advance(300);
        let hb = HeartbeatOp {
            node: "mx1",
            epoch: "e1",
            by_net: vec![],
            bare: vec!["a"],
            lease_ttl_ms: 1000,
        };
        assert_eq!(st.heartbeat(&hb).await.unwrap().renewed, 1);
    }
    assert!(
        !admitted(&st, o("b")).await,
        "the renewed lease still holds"
    );
}

#[tokio::test]
async fn leases_taken_without_an_epoch_are_renewed_not_freed() {
    let (st, _) = store();
    let s = src("10.0.0.1");
    let no_epoch = LeaseId {
        node: "mx1",
        epoch: "",
        session: "a",
    };
    let o = ConnectOp {
        lease: no_epoch,
        conn: PerLevel {
            address: 1,
            network: 0,
        },
        ..op(&s, "a")
    };
    assert!(admitted(&st, o).await);
    let hb = HeartbeatOp {
        node: "mx1",
        epoch: "boot-7",
        by_net: vec![],
        bare: vec!["a"],
        lease_ttl_ms: 30_000,
    };
    let out = st.heartbeat(&hb).await.unwrap();
    assert_eq!((out.renewed, out.freed), (1, 0));
    assert!(
        !admitted(
            &st,
            ConnectOp {
                conn: PerLevel {
                    address: 1,
                    network: 0
                },
                ..op(&s, "b")
            }
        )
        .await
    );
}

#[tokio::test]
async fn shadow_bans_are_kept_apart_and_never_bite() {
    let (st, _) = store();
    let s = src("10.0.0.1");
    for i in 0..4 {
        let r = RecipientOp {
            shadow: true,
            ..rcpt(&s, &format!("e{i}"), true)
        };
        st.recipient(&r).await.unwrap();
    }
    let shadowed = st
        .connect(&ConnectOp {
            shadow: true,
            ..op(&s, "a")
        })
        .await
        .unwrap();
    assert!(
        matches!(shadowed.refusal, Some(Refusal::Banned { .. })),
        "reported in shadow mode"
    );
    assert_eq!(
        st.connect(&op(&s, "b")).await.unwrap().refusal,
        None,
        "not a ban outside shadow mode"
    );
}

#[tokio::test]
async fn nodes_are_forgotten_when_idle() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    for i in 0..50 {
        st.connect(&ConnectOp {
            lease: LeaseId {
                node: &format!("n{i}"),
                epoch: "",
                session: "s",
            },
            lease_ttl_ms: 1000,
            ..op(&s, "s")
        })
        .await
        .unwrap();
    }
    assert_eq!(st.nodes(), 50);
    clock.advance(4001);
    st.sweep();
    assert_eq!(st.nodes(), 0);
}

fn offence_op<'a>(s: &'a Source, event: &str, at: (u32, u32)) -> OffenceOp<'a> {
    OffenceOp {
        source: s,
        kind: crate::offence::OffenceKind::Pregreet,
        event: event.to_string(),
        window_ms: 10_000,
        ban_at: PerLevel {
            address: at.0,
            network: at.1,
        },
        ban: BanPolicy {
            block_for_ms: 5000,
            escalation: 2.0,
            max_block_ms: 60_000,
            remember_ms: 600_000,
        },
        shadow: false,
    }
}

#[tokio::test]
async fn offences_slide_out_of_their_window_and_a_network_counts_addresses_once() {
    let (st, clock) = store();
    let a = &src("10.7.0.1");
    let first = st.offence(&offence_op(a, "e1", (2, 0))).await.unwrap();
    assert_eq!((first.ban, first.count.address), (None, 1));
    clock.advance(10_001);
    // t=10001: e1 has left the 10 s window; e2 is alone in it.
    let second = st.offence(&offence_op(a, "e2", (2, 0))).await.unwrap();
    assert_eq!((second.ban, second.count.address), (None, 1));
    clock.advance(1);
    let third = st.offence(&offence_op(a, "e3", (2, 0))).await.unwrap();
    let ban = third.ban.expect("two in the window ban");
    assert_eq!(
        (ban.level, ban.remaining_ms, ban.new, ban.offence),
        (Level::Address, 5000, true, 1)
    );

    // Network: one address offending three times is one offending address.
    let b = &src("10.7.1.1");
    for e in ["n1", "n2", "n3"] {
        let o = st.offence(&offence_op(b, e, (0, 2))).await.unwrap();
        assert_eq!((o.ban, o.count.network), (None, 1), "{e}");
    }
    let c = &src("10.7.1.2");
    let o = st.offence(&offence_op(c, "n4", (0, 2))).await.unwrap();
    assert_eq!(o.ban.map(|b| b.level), Some(Level::Network));
    // An address of that network is banned at connect; the ban ends after block_for,
    // and the network starts afresh.
    let d = &src("10.7.1.3");
    assert!(!admitted(&st, op(d, "s1")).await);
    clock.advance(5001);
    assert!(admitted(&st, op(d, "s2")).await);
    let o = st.offence(&offence_op(d, "n5", (0, 2))).await.unwrap();
    assert_eq!((o.ban, o.count.network), (None, 1));
}

#[test]
fn the_rate_logs_recent_members_stay_bounded_and_answer_maybe_when_full() {
    use super::state::Recent;
    let mut r = Recent::default();
    let m = |i: usize| -> Arc<str> { format!("m{i}").into() };
    for i in 0..Recent::MAX {
        assert!(!r.note(&m(i), 1_000, 60_000));
    }
    // Full of live members: a new one is not kept, and may have been logged.
    assert!(r.note(&m(Recent::MAX), 1_000, 60_000));
    assert!(r.note(&m(0), 2_000, 60_000), "a member noted before");
    // Once they expire, room again (searched at most once a second).
    assert!(!r.note(&m(Recent::MAX + 1), 62_000, 60_000));
}

#[tokio::test]
async fn bare_ids_find_only_sessions_admitted_without_an_epoch() {
    let (st, clock) = store();
    let (s, t) = (src("10.0.0.1"), src("10.9.0.1"));
    let no_epoch = |s, id| ConnectOp {
        lease: LeaseId {
            node: "mx1",
            epoch: "",
            session: id,
        },
        ..op(s, id)
    };
    assert!(admitted(&st, no_epoch(&s, "a")).await);
    assert!(admitted(&st, no_epoch(&t, "b")).await);
    assert!(admitted(&st, op(&s, "c")).await);
    clock.advance(1000);
    let hb = HeartbeatOp {
        node: "mx1",
        epoch: "e1",
        by_net: vec![],
        bare: vec!["a", "b", "c", "never"],
        lease_ttl_ms: 30_000,
    };
    let out = st.heartbeat(&hb).await.unwrap();
    assert_eq!(
        (out.renewed, out.unknown),
        (2, 2),
        "a and b, in two networks, found; c (with an epoch) and an unknown id not"
    );
    // Another node's heartbeat does not find mx1's sessions.
    let other = HeartbeatOp { node: "mx2", ..hb };
    assert_eq!(st.heartbeat(&other).await.unwrap().unknown, 4);
}

#[tokio::test]
async fn the_session_index_of_a_node_is_bounded() {
    let (st, _) = store();
    let ids: Vec<String> = (0..=100_000).map(|i| format!("s{i}")).collect();
    let srcs: Vec<Source> = (0..=100_000u32)
        .map(|i| src(&format!("10.{}.{}.1", i >> 8 & 0xff, i & 0xff)))
        .collect();
    for (id, s) in ids.iter().zip(&srcs) {
        let o = ConnectOp {
            lease: LeaseId {
                node: "mx1",
                epoch: "",
                session: id,
            },
            ..op(s, id)
        };
        assert!(admitted(&st, o).await);
    }
    let hb = HeartbeatOp {
        node: "mx1",
        epoch: "e1",
        by_net: vec![],
        bare: vec!["s0", "s99999", "s100000"],
        lease_ttl_ms: 30_000,
    };
    let out = st.heartbeat(&hb).await.unwrap();
    assert_eq!(
        (out.renewed, out.unknown),
        (2, 1),
        "the 100 001st live session is past the bound: not indexed"
    );
}

#[tokio::test]
async fn an_epoch_that_flaps_sweeps_at_most_three_times_a_minute() {
    let (st, clock) = store();
    let s = src("10.0.0.1");
    let hb = |epoch| HeartbeatOp {
        node: "mx1",
        epoch,
        by_net: vec![],
        bare: vec![],
        lease_ttl_ms: 600_000,
    };
    let long = |o| ConnectOp {
        lease_ttl_ms: 600_000,
        ..conn2(o)
    };
    // Three changes in a minute are swept at once, as restarts are.
    for e in ["e7", "e8", "e9"] {
        assert!(st.heartbeat(&hb(e)).await.unwrap().freed == 0);
    }
    assert!(admitted(&st, long(op(&s, "a"))).await); // under e1, the op's epoch
    clock.advance(1000);
    // The fourth in the same minute is not swept, nor recorded.
    let out = st.heartbeat(&hb("e2")).await.unwrap();
    assert_eq!((out.freed, out.epoch_changed), (0, false));
    clock.advance(60_000);
    // In the next minute, the next heartbeat of the new epoch sweeps.
    let out = st.heartbeat(&hb("e2")).await.unwrap();
    assert_eq!((out.freed, out.epoch_changed), (1, true));
}
