//! Real MTAs over SMTP, from any 127.x.y.z source address: the greeting, EHLO, MAIL, the
//! recipients and a last, valid recipient (which shows whether the MTA closed the
//! session).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use testkit::smtp::Smtp;

use super::{Outcome, Rcpt, SessionReport};

pub struct SmtpFleet {
    mx: Vec<SocketAddr>,
    /// A reply at least this slow was tarpitted.
    tarpit: Duration,
    /// A recipient the MTAs accept, sent last: a session closed by a ban answers it 421.
    probe: String,
}

impl SmtpFleet {
    pub fn new(mx: Vec<SocketAddr>, tarpit: Duration, probe: &str) -> SmtpFleet {
        SmtpFleet {
            mx,
            tarpit,
            probe: probe.into(),
        }
    }

    pub fn nodes(&self) -> usize {
        self.mx.len()
    }

    pub async fn session(&self, node: usize, ip: IpAddr, rcpts: &[Rcpt]) -> SessionReport {
        let server = self.mx[node % self.mx.len()];
        let t = Instant::now();
        let refused = |reason: String, t: Instant| SessionReport {
            connect: if reason.contains("Too many invalid recipients") {
                Outcome::Banned
            } else {
                Outcome::Refused
            },
            reason,
            rcpts: Vec::new(),
            connect_latency: t.elapsed(),
        };
        let failed = |reason: String, t: Instant| SessionReport {
            connect: Outcome::Error,
            reason,
            rcpts: Vec::new(),
            connect_latency: t.elapsed(),
        };
        let (mut s, greeting) = match Smtp::connect(ip, server).await {
            Ok(c) => c,
            Err(e) => return failed(format!("connect: {e}"), t),
        };
        match greeting.code {
            220 => {}
            0 => return failed("closed before the greeting".into(), t),
            _ => return refused(greeting.text, t),
        }
        for cmd in ["EHLO loadtest.example", "MAIL FROM:<loadtest@example.org>"] {
            match s.cmd(cmd).await {
                Ok(r) if r.code == 250 => {}
                // Code 0: the MTA closed the connection without a reply.
                Ok(r) if r.code == 0 => return failed(format!("{cmd}: closed"), t),
                Ok(r) => return refused(r.text, t),
                Err(e) => return failed(format!("{cmd}: {e}"), t),
            }
        }
        let connect_latency = t.elapsed();
        let mut out = SessionReport {
            connect: Outcome::Accepted,
            reason: String::new(),
            rcpts: Vec::new(),
            connect_latency,
        };
        for r in rcpts {
            let reply = match s.cmd(&format!("RCPT TO:<{}>", r.address)).await {
                Ok(reply) => reply,
                Err(_) => {
                    out.rcpts.push(Outcome::Error);
                    return out;
                }
            };
            let o = match reply.code {
                421 => Outcome::Banned,
                // Closed without a reply: not an answer of any limit.
                0 => Outcome::Error,
                // The MTA's own answers: an unknown user refused, a valid one taken.
                550 if r.bad => pace(reply.took, self.tarpit),
                250 if !r.bad => pace(reply.took, self.tarpit),
                _ => Outcome::Refused,
            };
            out.rcpts.push(o);
            if matches!(o, Outcome::Banned | Outcome::Error) {
                return out;
            }
        }
        // A banned source's session is closed at its next command (which must reach the
        // milter: RSET does not).
        if let Ok(r) = s.cmd(&format!("RCPT TO:<{}>", self.probe)).await
            && (r.code == 421 || r.code == 0)
            && let Some(last) = out.rcpts.last_mut()
        {
            *last = Outcome::Banned;
        }
        let _ = s.cmd("QUIT").await;
        out
    }
}

fn pace(took: Duration, tarpit: Duration) -> Outcome {
    if !tarpit.is_zero() && took >= tarpit {
        Outcome::Delayed
    } else {
        Outcome::Accepted
    }
}
