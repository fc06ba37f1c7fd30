//! The decision path on the in-memory store, without gRPC: what one decision costs in
//! the engine and the store. `cargo bench -p mxlimit-core --bench decision`

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mxlimit_core::decision::{Connect, Engine, Recipient};
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::policy::{Policy, access, parse_settings};
use mxlimit_core::store::LeaseId;
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};

const ACCESS: &str = include_str!("../../examples/access");

/// The example access file has a name rule; reverse lookups (which wait up to the DNS
/// deadline for an unknown address) are not what this measures.
fn engine(toml: &str) -> Engine<Arc<MemoryStore>> {
    let toml = format!("{toml}\n[dns]\nmode = \"off\"\n");
    let settings = parse_settings(&toml, Path::new("bench.toml")).unwrap();
    let file = access::parse(ACCESS, Path::new("access")).unwrap();
    let policy = Policy::compile(settings, vec![file], vec![]).unwrap();
    let engine = Engine::new(
        Arc::new(MemoryStore::new(MemoryConfig::default())),
        Arc::new(PolicyHandle::fixed(policy)),
    );
    // As in a served limiter, where the ledger keeper runs: refusals and bad
    // recipients are tallied for the top lists.
    engine.tally().enable();
    engine
}

/// 64 000 addresses in 256 networks, visited in turn: a steady working set, as a busy
/// MX sees it (floods past the store's bound are the eviction path, not this one).
fn ip(n: u64) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(10, 0, (n % 256) as u8, 1 + ((n / 256) % 250) as u8).into()
}

// Long on purpose: the whole measurement in the order it runs.
fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));

    // Every connection admitted (limits off), then released: the full lease cycle.
    let admit =
        engine("[client_rate]\naddress = 0\nnetwork = 0\n[client_conn]\naddress = 0\nnetwork = 0");
    let n = AtomicU64::new(0);
    g.bench_function("connect+disconnect", |b| {
        b.to_async(&rt).iter(|| async {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let session = i.to_string();
            let lease = LeaseId {
                node: "mx1",
                epoch: "e1",
                session: &session,
            };
            let req = Connect {
                lease,
                ip: ip(i),
                client_name: None,
            };
            let r = admit.connect(&req).await.unwrap();
            assert!(r.verdict.is_some());
            admit.disconnect(ip(i), lease).await.unwrap();
        })
    });

    // With the default policy every limit is checked; one address soon goes over its
    // ClientRate and is refused: the refusal path.
    let limited = engine("");
    let n = AtomicU64::new(0);
    g.bench_function("connect refused (client_rate)", |b| {
        b.to_async(&rt).iter(|| async {
            let session = n.fetch_add(1, Ordering::Relaxed).to_string();
            let lease = LeaseId {
                node: "mx1",
                epoch: "e1",
                session: &session,
            };
            let req = Connect {
                lease,
                ip: ip(7),
                client_name: None,
            };
            limited.connect(&req).await.unwrap()
        })
    });

    // A rejected recipient counted at both levels (bans off so that counting goes on).
    let rcpt = engine("[bad_rcpt]\nblock_after = 0\nnetwork_block_after = 0");
    let n = AtomicU64::new(0);
    g.bench_function("recipient rejected", |b| {
        b.to_async(&rt).iter(|| async {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let session = i.to_string();
            let req = Recipient {
                node: "mx1",
                session: &session,
                ip: ip(i),
                client_name: None,
                recipient: "nobody@example.org",
                rejected: true,
                envelope_rcpts: 1,
                envelope_bad_rcpts: 1,
            };
            let r = rcpt.recipient(&req).await.unwrap();
            // The ledger keeper empties the tally once a second; at 20 000 decisions a
            // second that is every 20 000 calls.
            if i.is_multiple_of(20_000) {
                std::hint::black_box(rcpt.tally().take());
            }
            r
        })
    });
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
