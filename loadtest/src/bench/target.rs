//! What `bench` drives: a running limiter, or one started in this process (in memory,
//! or on a Redis), reached over one connection per simulated MX node.

use anyhow::{Context, Result};
use tonic::transport::Channel;

use crate::lab::{self, RunKeys};

pub struct Target {
    /// One connection per simulated MX node, as each agent has its own.
    pub nodes: Vec<Channel>,
    _embedded: Option<(testkit::Limiter, Option<RunKeys>)>,
}

impl Target {
    /// `target`: a running limiter (host:port); without it, one is started here with the
    /// bench policy, on `redis` when given.
    pub async fn open(target: Option<&str>, redis: Option<&str>, nodes: usize) -> Result<Target> {
        let embedded = match target {
            Some(_) => None,
            None => Some(lab::shared_limiter(super::POLICY, redis).await?),
        };
        let addr = match (target, &embedded) {
            (Some(t), _) => t
                .parse()
                .with_context(|| format!("--target {t}: want host:port"))?,
            (None, Some((l, _))) => l.addr,
            (None, None) => unreachable!("started above"),
        };
        let mut channels = Vec::with_capacity(nodes);
        for _ in 0..nodes.max(1) {
            channels.push(lab::channel(addr).await?);
        }
        Ok(Target {
            nodes: channels,
            _embedded: embedded,
        })
    }
}
