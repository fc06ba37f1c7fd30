//! Test harness shared by the workspace's tests: real servers on free loopback ports,
//! started by the tests themselves, and (with the `limiter` feature) an in-process
//! limiter-server. The agent's own tests build without that feature, so that nothing
//! of the server enters mx-agent's dependency tree.
//!
//! `redis-server`, `redis-cli`, `dnsmasq`, Postfix and sendmail must be installed
//! (`scripts/test` installs them on Debian). A missing one FAILS the test with a message
//! saying so; nothing is skipped.

pub mod dns;
pub mod exim;
pub mod ipv6;
pub mod journald;
#[cfg(feature = "limiter")]
pub mod limiter;
pub mod milter;
pub mod otlp;
pub mod postfix;
pub mod prom;
pub mod redis;
pub mod sendmail;
pub mod smtp;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;

use mxlimit_core::policy::access;
use mxlimit_core::policy::{Policy, parse_settings};
use tonic::transport::Channel;

pub use self::dns::DnsServer;
#[cfg(feature = "limiter")]
pub use self::limiter::Limiter;
pub use self::redis::{RedisCluster, RedisServer};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where `program` is: on PATH, or in /usr/sbin or /sbin (Debian puts servers there).
pub fn find(program: &str) -> Option<std::path::PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Fails with a clear message when a program the tests need is missing.
pub fn require(program: &str, package: &str) -> std::path::PathBuf {
    find(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed: install Debian's `{package}` (scripts/test does). Tests never skip a missing server."
        )
    })
}

/// A policy from TOML and access-file text.
pub fn policy(toml: &str, access_text: &str) -> Policy {
    let settings = parse_settings(toml, Path::new("test-policy.toml")).expect("test policy");
    let file = access::parse(access_text, Path::new("test-access")).expect("test access");
    Policy::compile(settings, vec![file], vec![]).expect("test policy compiles")
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to limiter")
}
