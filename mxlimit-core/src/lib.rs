//! What the limiter and the agent share: how a decision is made, whatever serves it.
//!
//! - [`source`]: a client address, its network, and their canonical text.
//! - [`policy`]: the TOML policy and the sendmail access file, compiled; reloads.
//! - [`decision`]: the decision path of each RPC, top to bottom, and its verdicts;
//!   the operators' blocks and the top-list tallies it consults and feeds.
//! - [`store`]: the `Store` trait (one operation per decision), the Connect check
//!   order, and the in-memory store. The Redis store is limiter-server's.
//! - [`offence`]: kinds of protocol offence, counted beside bad recipients.
//! - [`names`]: verified reverse names for host and domain rules.
//! - [`telemetry`], [`metrics`], [`shutdown`]: logs and traces, metric names and the
//!   Prometheus listener, the signals that stop a process.

pub mod decision;
pub mod exit;
pub mod metrics;
pub mod names;
pub mod offence;
pub mod policy;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod telemetry;
