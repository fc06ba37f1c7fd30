//! mxlimit's limiter: cluster-wide ClientRate, ClientConn and bad-recipient limits for
//! a fleet of MX hosts, served over gRPC (`mxlimit.v1.Limiter`). The decisions
//! themselves are `mxlimit_core`'s; this crate serves them, cluster-wide.
//!
//! - [`store`]: the Redis and Redis Cluster store (the in-memory one is the core's).
//! - [`grpc`]: the `Limiter` service: validation and error mapping.
//! - [`admin`]: the `Admin` service: top lists, explain, blocks; its authentication;
//!   the ledger keeper.
//! - [`tls`]: server TLS and mutual TLS, with certificate reloads.
//! - [`server`]: the gRPC server with health, reflection and graceful shutdown.
//! - [`metrics`]: the server's own metric names.

pub mod admin;
pub mod grpc;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;

/// The port the limiter listens on by default (on loopback).
pub const DEFAULT_LISTEN: &str = mxlimit_proto::DEFAULT_LISTEN;
