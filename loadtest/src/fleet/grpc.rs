//! Simulated MX nodes that call limiters over gRPC, one session at a time, as mx-agent
//! does: Connect, a Recipient per RCPT, Disconnect.

use std::net::IpAddr;
use std::time::Instant;

use mxlimit_proto::v1::limiter_client::LimiterClient;
use mxlimit_proto::v1::{Action, ConnectRequest, DisconnectRequest, RecipientRequest, Verdict};
use tonic::transport::Channel;

use super::{Outcome, Rcpt, SessionReport};

/// Node `i` asks `limiters[i % limiters.len()]`: one limiter for all (cluster-wide
/// counting) or one each (per-host counting, as sendmail and Postfix count).
pub struct GrpcFleet {
    nodes: Vec<(String, LimiterClient<Channel>)>,
}

impl GrpcFleet {
    pub fn new(nodes: usize, limiters: &[Channel]) -> GrpcFleet {
        GrpcFleet {
            nodes: (0..nodes)
                .map(|i| {
                    (
                        format!("mx{}", i + 1),
                        LimiterClient::new(limiters[i % limiters.len()].clone()),
                    )
                })
                .collect(),
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    pub async fn session(
        &self,
        node: usize,
        session: &str,
        ip: IpAddr,
        rcpts: &[Rcpt],
    ) -> SessionReport {
        let (name, client) = &self.nodes[node % self.nodes.len()];
        let mut c = client.clone();
        let t = Instant::now();
        let connect = c
            .connect(ConnectRequest {
                node: name.clone(),
                session_id: session.into(),
                client_ip: ip.to_string(),
                epoch: "loadtest".into(),
                ..Default::default()
            })
            .await;
        let connect_latency = t.elapsed();
        let v = match connect {
            Ok(r) => r.into_inner().verdict.unwrap_or_default(),
            Err(e) => {
                return SessionReport {
                    connect: Outcome::Error,
                    reason: e.code().to_string(),
                    rcpts: Vec::new(),
                    connect_latency,
                };
            }
        };
        let connect = outcome(&v);
        let mut out = SessionReport {
            connect,
            reason: v.reason.clone(),
            rcpts: Vec::new(),
            connect_latency,
        };
        if !connect.passed() {
            return out;
        }
        let mut bad = 0;
        for (i, r) in rcpts.iter().enumerate() {
            bad += u32::from(r.bad);
            let v = c
                .recipient(RecipientRequest {
                    node: name.clone(),
                    session_id: session.into(),
                    client_ip: ip.to_string(),
                    recipient: r.address.clone(),
                    rejected: r.bad,
                    smtp_code: if r.bad { 550 } else { 250 },
                    envelope_rcpts: i as u32 + 1,
                    envelope_bad_rcpts: bad,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().verdict.unwrap_or_default());
            let o = v.as_ref().map_or(Outcome::Error, outcome);
            out.rcpts.push(o);
            if matches!(o, Outcome::Banned | Outcome::Error)
                || v.is_ok_and(|v| v.action == Action::Disconnect as i32)
            {
                break;
            }
        }
        let _ = c
            .disconnect(DisconnectRequest {
                node: name.clone(),
                session_id: session.into(),
                client_ip: ip.to_string(),
                epoch: "loadtest".into(),
            })
            .await;
        out
    }
}

fn outcome(v: &Verdict) -> Outcome {
    match Action::try_from(v.action).unwrap_or(Action::Accept) {
        Action::Accept | Action::Unspecified => Outcome::Accepted,
        Action::Delay => Outcome::Delayed,
        _ if v.reason == "banned" => Outcome::Banned,
        _ => Outcome::Refused,
    }
}
