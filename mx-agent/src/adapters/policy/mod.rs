//! Postfix policy delegation (`check_policy_service`): `name=value` lines, a blank line
//! ends a request, the answer is `action=...` and a blank line; connections are reused.
//!
//! The first request of an SMTP session (any stage) makes the `Connect` call; RCPT-stage
//! requests make a `Recipient` call for ban, tarpit and `max_rcpts_per_message`.
//! What Postfix never tells a policy service: rejected recipients (it asks before it
//! checks them) and disconnects. So with Postfix this adapter counts no bad recipients
//! (use the milter for that), and its sessions' leases are released only by their TTL.
//! Exim asks it from its ACLs (`${readsocket}`, docs/MTA.md), and asks again after it
//! refused a recipient, with mxlimit's [`REJECTED`] attribute: that one is counted.
//!
//! Beside the milter, Postfix asks it with `policy_context=bans` in
//! `smtpd_recipient_restrictions`: then it answers bans and refusals only
//! ([`PolicyService::bans`]), the check that makes a ban bite at a recipient Postfix
//! rejects itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxlimit_core::decision::verdict::{self, reason};
use mxlimit_proto::v1::{Action, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{capped, refuses, smtp_reply, verified_name};
use crate::limiter::{Ends, Limiter, Rcpt, action};
use crate::listen::{Listener, Stream};
use crate::metrics::{Undecided, undecided};

/// This adapter's name in metrics.
const ADAPTER: &str = "policy";
/// The `policy_context` that asks for the ban check alone (see [`PolicyService::bans`]).
pub const BANS_CONTEXT: &str = "bans";
/// mxlimit's attribute: `mxlimit_rejected=yes` on a RCPT request says the MTA refused
/// that recipient as unknown (Postfix never sends it; Exim's ACL does).
pub const REJECTED: &str = "mxlimit_rejected";

/// Largest request accepted (Postfix's own requests are a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;
/// How long a session is remembered after its last request: Postfix's `smtpd_timeout`
/// (300 s) ends an idle session before that.
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// A policy connection idle this long is closed (Postfix's own idle limit is 300 s).
const CONNECTION_IDLE: Duration = Duration::from_secs(600);
const MAX_SESSIONS_REMEMBERED: usize = 100_000;

struct Known {
    id: String,
    refusal: Option<Verdict>,
    tarpit_ms: u32,
    instance: String,
    rcpts: u32,
    bad_rcpts: u32,
    /// The RCPT (of this message) whose answer waited last.
    delayed_rcpt: u32,
    seen: Instant,
}

pub struct PolicyService {
    limiter: Arc<Limiter>,
    max_delay: Duration,
    sessions: Mutex<HashMap<String, Known>>,
}

impl PolicyService {
    pub fn new(limiter: Arc<Limiter>, max_delay: Duration) -> Arc<PolicyService> {
        Arc::new(PolicyService {
            limiter,
            max_delay,
            sessions: Mutex::default(),
        })
    }

    /// Serves connections from `listener` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        max_sessions: usize,
        shutdown: impl Future<Output = ()>,
    ) {
        super::accept::serve(ADAPTER, listener, max_sessions, shutdown, move |stream| {
            let me = self.clone();
            async move { me.connection(stream).await }
        })
        .await
    }

    async fn connection(&self, stream: Box<dyn Stream>) -> std::io::Result<()> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        loop {
            let read = read_request(&mut r);
            let attrs = match tokio::time::timeout(CONNECTION_IDLE, read).await {
                Err(_) => return Ok(()), // idle: Postfix reconnects when it needs to
                Ok(Request::Closed) => return Ok(()),
                Ok(Request::TooLarge) => {
                    w.write_all(b"action=DUNNO\n\n").await?;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "request too large",
                    ));
                }
                Ok(Request::Failed(e)) => return Err(e),
                Ok(Request::Attributes(a)) => a,
            };
            let answer = self.decide(&attrs).await;
            w.write_all(format!("action={answer}\n\n").as_bytes())
                .await?;
            w.flush().await?;
        }
    }

    /// The answer to one request: `DUNNO` or an SMTP reply.
    pub async fn decide(&self, a: &HashMap<String, String>) -> String {
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
        // Postfix says `unknown` when it has no address for the client: such a session
        // is decided by the fallback mode, never waved through.
        let ip = mxlimit_core::source::parse_client_ip(get("client_address"));
        if get("policy_context").eq_ignore_ascii_case(BANS_CONTEXT) {
            return self.bans(ip).await;
        }
        // Postfix has no session id for policy services: the client's address and port
        // are unique while the session lasts.
        let key = format!("{}:{}", get("client_address"), get("client_port"));
        let name = verified_name(get("client_name"));
        let (id, refusal) = self.session(a, &key, ip, name).await;
        if let Some(v) = refusal {
            return reply(&v);
        }
        if !get("protocol_state").eq_ignore_ascii_case("RCPT") {
            return "DUNNO".into();
        }
        self.rcpt(a, &key, &id, ip, name).await
    }

    /// The session a request belongs to, and its refusal if it was refused: a
    /// CONNECT starts one (a `Connect` to the limiter), a later stage goes on with it.
    async fn session(
        &self,
        a: &HashMap<String, String>,
        key: &str,
        ip: Option<IpAddr>,
        name: Option<&str>,
    ) -> (String, Option<Verdict>) {
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
        // A CONNECT request always starts a session; at any other stage a session of
        // this address and port seen lately goes on (a port is reused only later).
        let starts = get("protocol_state").eq_ignore_ascii_case("CONNECT");
        let known = if starts {
            None
        } else {
            let now = Instant::now();
            let mut sessions = self.lock();
            sessions
                .get_mut(key)
                .filter(|k| now.duration_since(k.seen) < SESSION_IDLE)
                .map(|k| {
                    k.seen = now;
                    (k.id.clone(), k.refusal.clone())
                })
        };
        if let Some(k) = known {
            return k;
        }
        let id = self.limiter.new_session_id();
        // Postfix never says when the session ends: the lease lives its TTL.
        let adm = match ip {
            Some(ip) => {
                self.limiter
                    .connect(&id, ip, name, get("helo_name"), Ends::Unseen)
                    .await
            }
            None => {
                undecided(
                    ADAPTER,
                    Undecided::NoClientAddress,
                    &format_args!(
                        "policy: Postfix named the client by {:?}, not an address: decided by the fallback mode",
                        truncate_for_log(get("client_address"))
                    ),
                );
                self.limiter
                    .connect_unattributed(&id, name, Ends::Unseen)
                    .await
            }
        };
        let refusal = (!adm.admitted()).then(|| adm.verdict.clone());
        // A refusal for want of a limiter (fail-closed) is not kept: the next
        // request asks again.
        if adm.origin != crate::limiter::Origin::Closed {
            self.remember(key, &id, refusal.clone());
        }
        (id, refusal)
    }

    /// An RCPT the MTA has not refused: counted at the limiter, tarpitted or refused
    /// as its verdict says.
    async fn rcpt(
        &self,
        a: &HashMap<String, String>,
        key: &str,
        id: &str,
        ip: Option<IpAddr>,
        name: Option<&str>,
    ) -> String {
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
        // mxlimit's own attribute, for MTAs that ask again once they have refused the
        // recipient (Exim's ACL after `!verify = recipient`): the same RCPT, rejected.
        let rejected = get(REJECTED).eq_ignore_ascii_case("yes");
        let (rcpts, bad, tarpit_ms) = self.count_rcpt(key, get("instance"), rejected);
        let rcpt = Rcpt {
            recipient: get("recipient"),
            rejected,
            smtp_code: if rejected { 550 } else { 0 },
            envelope_rcpts: rcpts,
            envelope_bad_rcpts: bad,
        };
        let (v, _) = match ip {
            Some(ip) => self.limiter.recipient(id, ip, name, rcpt).await,
            None => self.limiter.recipient_unattributed(id, name, rcpt).await,
        };
        match action(&v) {
            Action::Accept | Action::Unspecified => {
                self.tarpit(key, rcpts, rejected, tarpit_ms).await;
                "DUNNO".into()
            }
            Action::Delay => {
                if v.reason == reason::BAD_RCPT
                    && let Some(k) = self.lock().get_mut(key)
                {
                    k.tarpit_ms = v.delay_ms;
                }
                self.tarpit(key, rcpts, rejected, v.delay_ms).await;
                "DUNNO".into()
            }
            Action::Disconnect => {
                if let Some(k) = self.lock().get_mut(key) {
                    k.refusal = Some(v.clone());
                }
                reply(&v)
            }
            Action::Tempfail | Action::Reject => reply(&v),
        }
    }

    /// `policy_context=bans`: only the cluster-wide bans, blocks and access refusals,
    /// for a Postfix whose sessions the milter decides (no second `Connect`, nothing
    /// counted). Postfix asks at every RCPT, before it rejects an unknown user itself,
    /// so a ban made anywhere closes the session at its next RCPT, whatever the
    /// recipient; a milter's reply to a recipient Postfix rejected is ignored.
    async fn bans(&self, ip: Option<IpAddr>) -> String {
        // No address: the milter decided the session by the fallback mode.
        let Some(ip) = ip else {
            return "DUNNO".into();
        };
        match self.limiter.lookup(ip, None).await {
            // Fail-closed, and the limiter unreachable.
            None => reply(&verdict::unavailable(Action::Tempfail, 451)),
            Some(v) if refuses(&v) => reply(&v),
            Some(_) => "DUNNO".into(),
        }
    }

    /// Waits `ms` before the answer: the tarpit. One RCPT waits once, though an MTA
    /// that asks again about a recipient it refused (Exim) asks twice.
    async fn tarpit(&self, key: &str, rcpt: u32, rejected: bool, ms: u32) {
        if ms == 0 {
            return;
        }
        {
            let mut s = self.lock();
            if let Some(k) = s.get_mut(key) {
                if rejected && k.delayed_rcpt == rcpt {
                    return;
                }
                k.delayed_rcpt = rcpt;
            }
        }
        tokio::time::sleep(capped(ms, self.max_delay)).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, key: &str, id: &str, refusal: Option<Verdict>) {
        let now = Instant::now();
        let mut s = self.lock();
        if s.len() >= MAX_SESSIONS_REMEMBERED {
            s.retain(|_, k| now.duration_since(k.seen) < SESSION_IDLE);
            if s.len() >= MAX_SESSIONS_REMEMBERED {
                s.clear();
            }
        }
        s.insert(
            key.to_string(),
            Known {
                id: id.to_string(),
                refusal,
                tarpit_ms: 0,
                instance: String::new(),
                rcpts: 0,
                bad_rcpts: 0,
                delayed_rcpt: 0,
                seen: now,
            },
        );
    }

    /// Counts a RCPT of the session's current message; returns the RCPTs and rejected
    /// RCPTs so far, this one included, and the session's tarpit. A `rejected` request
    /// is the RCPT asked about just before, now refused: counted as bad, not again as
    /// a RCPT.
    fn count_rcpt(&self, key: &str, instance: &str, rejected: bool) -> (u32, u32, u32) {
        let mut s = self.lock();
        let Some(k) = s.get_mut(key) else {
            return (1, u32::from(rejected), 0);
        };
        if k.instance != instance {
            k.instance = instance.to_string();
            k.rcpts = 0;
            k.bad_rcpts = 0;
            k.delayed_rcpt = 0;
        }
        if rejected {
            k.rcpts = k.rcpts.max(1);
            k.bad_rcpts += 1;
        } else {
            k.rcpts += 1;
        }
        k.seen = Instant::now();
        (k.rcpts, k.bad_rcpts, k.tarpit_ms)
    }

    /// Sessions remembered now.
    pub fn remembered(&self) -> usize {
        self.lock().len()
    }
}

/// At most 64 bytes of a value from the network, for a log line.
fn truncate_for_log(s: &str) -> &str {
    &s[..s.floor_char_boundary(64)]
}

/// A refusal as a Postfix access action: `421 4.3.2 text` (421 also disconnects).
fn reply(v: &Verdict) -> String {
    let (code, enhanced, text) = smtp_reply(v);
    format!("{code} {enhanced} {}", text.replace(['\r', '\n'], " "))
}

/// One policy delegation request, as read from Postfix.
#[derive(Debug)]
pub enum Request {
    /// `name=value` lines up to the empty line (a line without `=` is ignored).
    Attributes(HashMap<String, String>),
    /// The connection ended before a request began or ended.
    Closed,
    /// Over 64 KiB before its empty line.
    TooLarge,
    Failed(std::io::Error),
}

/// Reads one request: never more than 64 KiB of it, whatever bytes come.
pub async fn read_request<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Request {
    let mut attrs = HashMap::new();
    let mut line = Vec::new();
    let mut size = 0;
    loop {
        line.clear();
        let mut limited = (&mut *r).take((MAX_REQUEST - size + 1) as u64);
        let n = match limited.read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(e) => return Request::Failed(e),
        };
        if n == 0 {
            return Request::Closed; // Postfix closed the connection.
        }
        size += n;
        if size > MAX_REQUEST {
            return Request::TooLarge;
        }
        // Values may carry any bytes (a HELO name, an SMTPUTF8 address).
        let text = String::from_utf8_lossy(&line);
        let l = text.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Request::Attributes(attrs);
        }
        if let Some((k, v)) = l.split_once('=') {
            attrs.insert(k.to_string(), v.to_string());
        }
    }
}

/// The address Postfix names the client by, for tests and logs.
pub fn client_of(a: &HashMap<String, String>) -> Option<IpAddr> {
    a.get("client_address")
        .and_then(|s| mxlimit_core::source::parse_client_ip(s))
}
