//! IPv6 client sources for the tests: a documentation /64 (`2001:db8:…`) routed to
//! `lo` as local, so that a client can bind any address of it (with
//! `IPV6_FREEBIND`, see [`crate::smtp`]) and servers on `[::1]` see connections from
//! many IPv6 addresses and networks. Needs root (scripts/test and CI run as root);
//! without it the test fails saying so.

use std::net::Ipv6Addr;
use std::process::Command;
use std::sync::Mutex;

use crate::require;

/// Routes `prefix` (a /64, `2001:db8:66::`) on `lo` as local; idempotent, so every
/// test may ask for the prefixes it uses.
pub fn route_on_lo(prefix: Ipv6Addr) {
    // Two tests adding the same route at once would see "File exists" races.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let ip = require("ip", "iproute2");
    let route = format!("{prefix}/64");
    let shown = Command::new(&ip)
        .args(["-6", "route", "show", "table", "local", &route])
        .output()
        .expect("ip -6 route show");
    if String::from_utf8_lossy(&shown.stdout).contains(&route) {
        return;
    }
    let out = Command::new(&ip)
        .args(["-6", "route", "add", "local", &route, "dev", "lo"])
        .output()
        .expect("ip -6 route add");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("File exists"),
        "cannot route {route} on lo (the IPv6 tests need root, as scripts/test runs): {err}"
    );
}
