//! The milter adapter (sendmail and Postfix, milter protocol v6, via indymilter).
//!
//! - connect: `Connect`; a refusal becomes the reply (421 closes the session); the
//!   greet pause delays the greeting.
//! - RCPT: the MTA also sends recipients it rejected (`SMFIP_RCPT_REJ`, macro
//!   `{rcpt_mailer}` = `error`); each is a `Recipient` call (tarpit, 452, 421, ban).
//!   Accepted ones are checked here against the session's limits (452 4.5.3 past
//!   `max_rcpts_per_message`, the BAD_RCPT_THROTTLE delay, the tarpit once the source
//!   is tarpitted) without a call.
//! - close: `Disconnect`.
//!
//! Every delay is capped at `max_delay`, under the MTA's milter timeout.

use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indymilter::{
    Actions, Callbacks, Config, Context, MacroStage, NegotiateContext, ProtoOpts, SessionError,
    SetErrorReply, SocketInfo, Status,
};
use mxlimit_core::decision::verdict::{self, reason, rule};
use mxlimit_proto::v1::{Action, SessionPolicy, Verdict};

use super::{capped, smtp_reply, verified_name};
use crate::limiter::{Ends, Limiter, Rcpt, UNATTRIBUTED, action};
use crate::listen::Listener;
use crate::metrics::{Undecided, undecided};
use tracing::Instrument;

mod slots;

use slots::Slots;

/// This adapter's name in metrics.
const ADAPTER: &str = "milter";

/// One SMTP session, as the milter follows it.
#[derive(Debug, Default)]
pub struct Session {
    id: String,
    ip: Option<IpAddr>,
    name: Option<String>,
    admitted: bool,
    /// The MTA named no client address: decided by the fallback mode alone.
    unattributed: bool,
    policy: SessionPolicy,
    /// In this envelope: every RCPT (numbers each one, so a retried call counts once),
    /// the accepted ones (for `max_rcpts_per_message`), the unknown users.
    seen: u32,
    rcpts: u32,
    bad: u32,
    /// Set once the source is tarpitted: further RCPTs of the session wait this long.
    tarpit_ms: u32,
    /// Set once the session must end (a ban): every later command gets this reply.
    closing: Option<Verdict>,
    /// The session's trace: every limiter call of the session is a child of it.
    span: SessionSpan,
}

/// A span that is none until the session has one.
#[derive(Debug, Clone)]
struct SessionSpan(tracing::Span);

impl Default for SessionSpan {
    fn default() -> Self {
        SessionSpan(tracing::Span::none())
    }
}

#[derive(Clone)]
struct Milter {
    limiter: Arc<Limiter>,
    max_delay: Duration,
}

/// Serves the milter protocol on `listener` until `shutdown`.
pub async fn serve(
    listener: Listener,
    limiter: Arc<Limiter>,
    max_delay: Duration,
    max_sessions: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let callbacks = callbacks(Milter { limiter, max_delay });
    // `Slots` keeps the count (and says when it is reached); indymilter's own limit
    // would only queue connections unseen.
    let config = Config {
        max_connections: tokio::sync::Semaphore::MAX_PERMITS,
        ..Default::default()
    };
    tracing::info!(listen = %listener.local_addr(), "milter listening");
    match listener {
        Listener::Tcp(l) => {
            indymilter::run(Slots::new(l, max_sessions), callbacks, config, shutdown).await
        }
        // The socket file goes when `_file` is dropped, after the milter stops.
        Listener::Unix(l, _file) => {
            indymilter::run(Slots::new(l, max_sessions), callbacks, config, shutdown).await
        }
    }
}

fn callbacks(m: Milter) -> Callbacks<Session> {
    let (c, r, mail, data, abort, close) =
        (m.clone(), m.clone(), m.clone(), m.clone(), m.clone(), m);
    Callbacks::new()
        .on_session_error(session_error)
        .on_negotiate(|cx, _actions, opts| Box::pin(negotiate(cx, opts)))
        .on_connect(move |cx, host, info| {
            let m = c.clone();
            Box::pin(async move { m.connect(cx, host, info).await })
        })
        .on_mail(move |cx, _| {
            let _ = &mail;
            Box::pin(async move { new_envelope(cx) })
        })
        .on_rcpt(move |cx, args| {
            let m = r.clone();
            Box::pin(async move { m.rcpt(cx, args).await })
        })
        .on_data(move |cx| {
            let _ = &data;
            Box::pin(async move { still_open(cx) })
        })
        .on_abort(move |cx| {
            let _ = &abort;
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.new_envelope();
                }
                Status::Continue
            })
        })
        .on_close(move |cx| {
            let m = close.clone();
            Box::pin(async move {
                if let Some(s) = cx.data.take()
                    && s.admitted
                {
                    m.limiter
                        .disconnect(&s.id)
                        .instrument(s.span.0.clone())
                        .await;
                }
                Status::Continue
            })
        })
}

/// A milter connection that ended in an error (after its `close`, which released
/// the lease): whatever of its session was left went undecided.
fn session_error(e: &SessionError) {
    let cause = match e {
        // The agent stopping: nothing the MTA did.
        SessionError::MilterShutDown => return,
        // indymilter reads a packet past its 1 MiB limit as invalid data.
        SessionError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Undecided::ProtocolError
        }
        SessionError::Io(_) => Undecided::IoError,
        _ => Undecided::ProtocolError,
    };
    undecided(
        ADAPTER,
        cause,
        &format_args!("milter: the MTA's connection ended in an error: {e}"),
    );
}

async fn negotiate(cx: &mut NegotiateContext<Session>, offered: ProtoOpts) -> Status {
    // Rejected recipients are what a dictionary attack is made of: without them the
    // milter only sees the valid ones.
    if offered.contains(ProtoOpts::REJECTED_RCPT) {
        cx.requested_opts |= ProtoOpts::REJECTED_RCPT;
    } else {
        tracing::warn!(
            "the MTA does not send rejected recipients to milters (SMFIP_RCPT_REJ); bad recipients are not counted"
        );
    }
    // Nothing of the message itself is needed.
    for skip in [
        ProtoOpts::NO_HEADER,
        ProtoOpts::NO_EOH,
        ProtoOpts::NO_BODY,
        ProtoOpts::NO_UNKNOWN,
        ProtoOpts::NO_HELO,
    ] {
        if offered.contains(skip) {
            cx.requested_opts |= skip;
        }
    }
    cx.requested_actions = Actions::empty();
    let want = |s: &str| CString::new(s).expect("no NUL in macro names");
    cx.requested_macros
        .insert(MacroStage::Connect, want("{client_resolve} {client_name}"));
    cx.requested_macros.insert(
        MacroStage::Rcpt,
        want("{rcpt_mailer} {rcpt_host} {rcpt_addr}"),
    );
    Status::Continue
}

fn macro_str<'a>(cx: &'a Context<Session>, name: &CStr) -> Option<&'a str> {
    cx.macros.get(name).and_then(|v| v.to_str().ok())
}

/// Sets the verdict's reply and returns the status that carries it.
fn refuse(cx: &mut Context<Session>, v: &Verdict) -> Status {
    let (code, enhanced, text) = smtp_reply(v);
    // libmilter replies are printf formats to sendmail: a lone '%' would be a directive.
    let text = text.replace(['\r', '\n'], " ").replace('%', " percent");
    if cx
        .reply
        .set_error_reply(&code.to_string(), Some(&enhanced), [text.as_str()])
        .is_err()
    {
        tracing::warn!(code, %enhanced, "reply not accepted by the milter library; the MTA's default applies");
    }
    if code >= 500 {
        Status::Reject
    } else {
        Status::Tempfail
    }
}

fn new_envelope(cx: &mut Context<Session>) -> Status {
    if let Some(s) = cx.data.as_mut() {
        s.new_envelope();
    }
    still_open(cx)
}

impl Session {
    fn new_envelope(&mut self) {
        self.seen = 0;
        self.rcpts = 0;
        self.bad = 0;
    }
}

/// How the MTA answered a recipient, from `{rcpt_mailer}` and `{rcpt_host}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RcptFate {
    Accepted,
    /// Refused as an unknown user (5.1.x): what a dictionary attack is made of.
    Unknown {
        code: u32,
    },
    /// Refused for another reason (relay denied, greylisting, a lookup failure, a limit):
    /// not counted; a legitimate sender hits these too.
    OtherRefusal,
}

fn rcpt_fate(mailer: Option<&str>, host: Option<&str>) -> RcptFate {
    if mailer != Some("error") {
        return RcptFate::Accepted;
    }
    let status = host.unwrap_or("").trim();
    let mut parts = status.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        // An enhanced status: 5.1.x is a bad destination address.
        (Some("5"), Some("1"), Some(_)) => RcptFate::Unknown { code: 550 },
        (Some(_), Some(_), Some(_)) => RcptFate::OtherRefusal,
        // A bare reply code: 550 and 553 are what MTAs answer unknown users with.
        _ => match status.parse::<u32>() {
            Ok(c @ (550 | 553)) => RcptFate::Unknown { code: c },
            _ => RcptFate::OtherRefusal,
        },
    }
}

/// A session that must end answers every command with its closing reply.
fn still_open(cx: &mut Context<Session>) -> Status {
    match cx.data.as_ref().and_then(|s| s.closing.clone()) {
        Some(v) => refuse(cx, &v),
        None => Status::Continue,
    }
}

impl Milter {
    async fn connect(&self, cx: &mut Context<Session>, host: CString, info: SocketInfo) -> Status {
        let started = Instant::now();
        let ip = match info {
            SocketInfo::Inet(a) => Some(mxlimit_core::source::canonical(a.ip())),
            // A local (Unix socket) or unknown client, or an address text the library
            // could not read: nothing the limiter can count, and no reason to wave
            // the session through either.
            other => {
                let what = match other {
                    SocketInfo::Unix(path) => format!("a local socket ({path:?})"),
                    _ => "no address it could read".to_string(),
                };
                undecided(
                    ADAPTER,
                    Undecided::NoClientAddress,
                    &format_args!(
                        "the MTA named the client {host:?} by {what}: decided by the fallback mode"
                    ),
                );
                None
            }
        };
        // sendmail tells whether the name is forward-confirmed; Postfix's is already.
        let resolved_ok = macro_str(cx, c"{client_resolve}").is_none_or(|r| r == "OK");
        let name = host
            .to_str()
            .ok()
            .and_then(verified_name)
            .filter(|_| resolved_ok)
            .map(str::to_string);
        let id = self.limiter.new_session_id();
        let span = session_span(self.limiter.node(), ip.unwrap_or(UNATTRIBUTED), &id);
        let adm = match ip {
            Some(ip) => {
                self.limiter
                    .connect(&id, ip, name.as_deref(), "", Ends::Seen)
                    .instrument(span.clone())
                    .await
            }
            None => {
                self.limiter
                    .connect_unattributed(&id, name.as_deref(), Ends::Seen)
                    .await
            }
        };
        let admitted = adm.admitted();
        let greet = capped(
            adm.policy.greet_pause_ms,
            self.max_delay.saturating_sub(started.elapsed()),
        );
        cx.data = Some(Session {
            id,
            ip: Some(ip.unwrap_or(UNATTRIBUTED)),
            unattributed: ip.is_none(),
            name,
            admitted,
            // A source tarpitted already: every RCPT of the session waits, from the first.
            tarpit_ms: adm.policy.tarpit_ms,
            policy: adm.policy,
            span: SessionSpan(span),
            ..Default::default()
        });
        if !admitted {
            return refuse(cx, &adm.verdict);
        }
        // The greeting waits for this reply: this is the greet pause.
        if !greet.is_zero() {
            tokio::time::sleep(greet).await;
        }
        Status::Continue
    }

    // Long on purpose: one RCPT from the MTA to the verdict it enforces, in order
    // (what the MTA decided, the limiter or the local limits, the action).
    async fn rcpt(&self, cx: &mut Context<Session>, args: Vec<CString>) -> Status {
        let started = Instant::now();
        if let Some(st) = Some(still_open(cx)).filter(|s| *s != Status::Continue) {
            return st;
        }
        let fate = rcpt_fate(
            macro_str(cx, c"{rcpt_mailer}"),
            macro_str(cx, c"{rcpt_host}"),
        );
        let recipient = args
            .first()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(s) = cx.data.as_mut() else {
            return Status::Continue;
        };
        let Some(ip) = s.ip else {
            return Status::Continue;
        };
        s.seen = s.seen.saturating_add(1);
        let v = match fate {
            // The MTA refused it for a reason of its own: nothing to count or add, but
            // a tarpitted source waits here too (the MTA waits for this reply).
            RcptFate::OtherRefusal => {
                let wait = capped(
                    s.tarpit_ms,
                    self.max_delay.saturating_sub(started.elapsed()),
                );
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                return Status::Continue;
            }
            RcptFate::Accepted => {
                s.rcpts = s.rcpts.saturating_add(1);
                // Checked here, against the session's limits, without a call.
                local_rcpt_verdict(&s.policy, s.rcpts, s.bad, s.tarpit_ms)
            }
            RcptFate::Unknown { code } => {
                s.bad = s.bad.saturating_add(1);
                let rcpt = Rcpt {
                    recipient: &recipient,
                    rejected: true,
                    smtp_code: code,
                    envelope_rcpts: s.seen,
                    envelope_bad_rcpts: s.bad,
                };
                let (id, name, span) = (s.id.clone(), s.name.clone(), s.span.0.clone());
                if s.unattributed {
                    self.limiter
                        .recipient_unattributed(&id, name.as_deref(), rcpt)
                        .await
                        .0
                } else {
                    self.limiter
                        .recipient(&id, ip, name.as_deref(), rcpt)
                        .instrument(span)
                        .await
                        .0
                }
            }
        };
        let Some(s) = cx.data.as_mut() else {
            return Status::Continue;
        };
        match action(&v) {
            Action::Accept | Action::Unspecified => Status::Continue,
            Action::Delay => {
                if v.reason == reason::BAD_RCPT {
                    s.tarpit_ms = v.delay_ms;
                }
                // The limiter call counts against the MTA's timeout for this step too.
                tokio::time::sleep(capped(
                    v.delay_ms,
                    self.max_delay.saturating_sub(started.elapsed()),
                ))
                .await;
                Status::Continue
            }
            Action::Disconnect => {
                s.closing = Some(v.clone());
                refuse(cx, &v)
            }
            Action::Tempfail | Action::Reject => refuse(cx, &v),
        }
    }
}

/// One SMTP session's span (none when traces are off).
fn session_span(node: &str, ip: IpAddr, session: &str) -> tracing::Span {
    if !mxlimit_core::telemetry::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!("smtp.session", node, client_ip = %ip, session)
}

/// The limits of one session for a recipient the MTA accepted (too many recipients,
/// the tarpit, the throttle), as verdicts from the same builders as the limiter's.
fn local_rcpt_verdict(p: &SessionPolicy, rcpts: u32, prior_bad: u32, tarpit_ms: u32) -> Verdict {
    if p.max_rcpts_per_message > 0 && rcpts > p.max_rcpts_per_message {
        return verdict::max_rcpts(rule::MAX_RCPTS);
    }
    let throttle = if p.bad_rcpt_throttle > 0 && prior_bad >= p.bad_rcpt_throttle {
        p.bad_rcpt_delay_ms
    } else {
        0
    };
    // The longer delay answers; both only wait, they refuse nothing.
    if tarpit_ms > 0 && tarpit_ms >= throttle {
        verdict::delay(tarpit_ms, rule::BAD_RCPT, reason::BAD_RCPT)
    } else if throttle > 0 {
        verdict::delay(throttle, rule::BAD_RCPT_THROTTLE, reason::BAD_RCPT_THROTTLE)
    } else {
        verdict::accept(rule::BAD_RCPT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unknown_users_count_as_bad_recipients() {
        use RcptFate::*;
        let e = Some("error");
        assert_eq!(rcpt_fate(Some("local"), Some("")), Accepted);
        assert_eq!(rcpt_fate(Some("virtual"), None), Accepted);
        assert_eq!(rcpt_fate(e, Some("5.1.1")), Unknown { code: 550 });
        assert_eq!(rcpt_fate(e, Some("5.1.10")), Unknown { code: 550 });
        assert_eq!(rcpt_fate(e, Some("550")), Unknown { code: 550 });
        // Relay denied, greylisting, a lookup failure, too many recipients: not counted.
        for other in [
            "5.7.1",
            "4.2.0",
            "4.7.1",
            "4.3.0",
            "4.5.3",
            "452",
            "",
            "mx.example.com",
        ] {
            assert_eq!(rcpt_fate(e, Some(other)), OtherRefusal, "{other}");
        }
    }

    #[test]
    fn session_limits_for_accepted_recipients() {
        let p = SessionPolicy {
            max_rcpts_per_message: 3,
            bad_rcpt_throttle: 2,
            bad_rcpt_delay_ms: 1000,
            greet_pause_ms: 0,
            tarpit_ms: 0,
        };
        assert_eq!(action(&local_rcpt_verdict(&p, 3, 0, 0)), Action::Accept);
        let v = local_rcpt_verdict(&p, 4, 0, 0);
        assert_eq!((action(&v), v.smtp_code), (Action::Tempfail, 452));
        let v = local_rcpt_verdict(&p, 2, 2, 0);
        assert_eq!((action(&v), v.delay_ms), (Action::Delay, 1000));
        let v = local_rcpt_verdict(&p, 1, 0, 2500);
        assert_eq!(
            (action(&v), v.delay_ms),
            (Action::Delay, 2500),
            "a tarpitted source waits on every RCPT"
        );
    }
}
