//! mx-agent: runs on each MX host, asks the cluster-wide limiter at the right moments
//! of every SMTP session, and turns its verdicts into the MTA's replies.
//!
//! - [`limiter`]: the limiter client (deadlines, discovery, fallback, heartbeats).
//! - [`adapters`]: the MTA protocols: milter, Postfix policy delegation, socketmap.
//! - [`agent`]: all of it assembled, as `main` runs it.

pub mod adapters;
pub mod agent;
pub mod config;
pub mod limiter;
pub mod listen;
pub mod metrics;
