//! mxlimit's load and attack harness.
//!
//! - [`bench`]: limiter throughput and latency over gRPC, and the Redis ceiling.
//! - [`scenario`]: attackers and legitimate senders, on a fixed schedule.
//! - [`fleet`]: the MX hosts traffic goes through (simulated over gRPC, or real MTAs).
//! - [`attack`]: plays a scenario and measures containment.
//! - [`report`]: JSON, a table, and a chart.
//! - [`lab`]: the limiters (and MTAs) a run is played against.

pub mod attack;
pub mod bench;
pub mod fleet;
pub mod lab;
pub mod report;
pub mod scenario;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use attack::{Limits, measure, play};
use fleet::Fleet;
use fleet::grpc::GrpcFleet;
use report::Report;
use scenario::Scenario;

/// Plays `scenario` against cluster-wide counting (one limiter for all nodes) and
/// per-host counting (one limiter per node) at the same time, and reports both.
pub async fn attack_grpc(
    scenario: &Scenario,
    policy_toml: &str,
    redis: Option<&str>,
) -> Result<Report> {
    let settings =
        mxlimit_core::policy::parse_settings(policy_toml, std::path::Path::new("policy"))?;
    let lab = lab::GrpcLab::start(policy_toml, scenario.nodes, redis).await?;
    let cluster = Arc::new(Fleet::Grpc(GrpcFleet::new(
        scenario.nodes,
        &[lab::channel(lab.cluster.addr).await?],
    )));
    let mut own = Vec::new();
    for l in &lab.per_host {
        own.push(lab::channel(l.addr).await?);
    }
    let per_host = Arc::new(Fleet::Grpc(GrpcFleet::new(scenario.nodes, &own)));
    let (c, p) = tokio::join!(
        play(scenario, cluster, None),
        play(scenario, per_host, None)
    );
    let limits = Limits::of(&settings);
    Ok(Report {
        scenario: scenario.clone(),
        limits,
        cluster_wide: measure("cluster-wide", scenario, limits, &c),
        per_host: measure("per-host", scenario, limits, &p),
    })
}

/// The same over real SMTP: Postfix instances with mx-agent milters (the lab), one mode
/// after the other. `tarpit`: a reply this slow was tarpitted.
pub async fn attack_smtp(
    scenario: &Scenario,
    policy_toml: &str,
    tarpit: Duration,
) -> Result<Report> {
    let settings =
        mxlimit_core::policy::parse_settings(policy_toml, std::path::Path::new("policy"))?;
    let lab = lab::SmtpLab::start(policy_toml, scenario.nodes).await?;
    let probe = lab::SmtpLab::MAILBOX;
    let cluster = Arc::new(Fleet::Smtp(fleet::smtp::SmtpFleet::new(
        lab.cluster_mx.clone(),
        tarpit,
        probe,
    )));
    let per_host = Arc::new(Fleet::Smtp(fleet::smtp::SmtpFleet::new(
        lab.per_host_mx.clone(),
        tarpit,
        probe,
    )));
    let c = play(scenario, cluster, None).await;
    let p = play(scenario, per_host, None).await;
    let limits = Limits::of(&settings);
    Ok(Report {
        scenario: scenario.clone(),
        limits,
        cluster_wide: measure("cluster-wide", scenario, limits, &c),
        per_host: measure("per-host", scenario, limits, &p),
    })
}
