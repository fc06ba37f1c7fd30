//! The MX hosts a scenario is played against: simulated nodes calling limiters over
//! gRPC (as mx-agent does), or real MTAs over SMTP.

pub mod grpc;
pub mod smtp;

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// What became of one step (the connection, or one recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Went through (a bad recipient went on to the MTA's own "user unknown").
    Accepted,
    /// Went through after a tarpit delay.
    Delayed,
    /// Refused by a limit (rate, concurrency, access rule, envelope limit).
    Refused,
    /// Refused because the source is banned (or was banned by this very recipient).
    Banned,
    /// The limiter or MTA failed to answer.
    Error,
}

impl Outcome {
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Accepted | Outcome::Delayed)
    }
}

/// One session as it went.
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub connect: Outcome,
    pub reason: String,
    pub rcpts: Vec<Outcome>,
    pub connect_latency: Duration,
}

/// A recipient to send: `bad` ones are made-up users.
#[derive(Debug, Clone)]
pub struct Rcpt {
    pub address: String,
    pub bad: bool,
}

pub enum Fleet {
    Grpc(grpc::GrpcFleet),
    Smtp(smtp::SmtpFleet),
}

impl Fleet {
    pub async fn session(
        &self,
        node: usize,
        session: &str,
        ip: IpAddr,
        rcpts: &[Rcpt],
    ) -> SessionReport {
        match self {
            Fleet::Grpc(f) => f.session(node, session, ip, rcpts).await,
            Fleet::Smtp(f) => f.session(node, ip, rcpts).await,
        }
    }

    pub fn nodes(&self) -> usize {
        match self {
            Fleet::Grpc(f) => f.nodes(),
            Fleet::Smtp(f) => f.nodes(),
        }
    }
}
