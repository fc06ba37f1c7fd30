//! mxlimit's limiter: cluster-wide ClientRate, ClientConn and bad-recipient limits for
//! a fleet of MX hosts, served over gRPC (`mxlimit.v1.Limiter`).
//!
//! - [`policy`]: the TOML policy and the sendmail access file, compiled; reloads.
//! - [`decision`]: the decision path of each RPC, top to bottom.
//! - [`store`]: the counters (in memory, Redis, Redis Cluster), one operation per decision.
//! - [`names`]: verified reverse names for host and domain rules.
//! - [`grpc`]: the `Limiter` service: validation and error mapping.
//! - [`admin`]: the `Admin` service: top lists, explain, blocks; its authentication.
//! - [`server`]: the gRPC server with health, reflection and graceful shutdown.

pub mod admin;
pub mod decision;
pub mod grpc;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tls;

/// The port the limiter listens on by default (on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7525";
