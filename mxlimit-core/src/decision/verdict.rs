//! Verdicts, with sendmail's reply texts where sendmail has one.

use mxlimit_proto::v1::{Action, Verdict};

use crate::policy::settings::BanReply;
use crate::source::Level;

/// The `reason` of verdicts.
pub mod reason {
    pub const OK: &str = "ok";
    pub const ACCESS: &str = "access";
    pub const EXEMPT: &str = "exempt";
    pub const BANNED: &str = "banned";
    pub const BLOCKED: &str = "blocked";
    pub const CLIENT_RATE: &str = "client_rate";
    pub const CLIENT_CONN: &str = "client_conn";
    pub const BAD_RCPT: &str = "bad_rcpt";
    pub const BAD_RCPT_THROTTLE: &str = "bad_rcpt_throttle";
    pub const MAX_RCPTS: &str = "max_rcpts";
    /// The agent's own: it could not reach the limiter and fails closed.
    pub const LIMITER_UNAVAILABLE: &str = "limiter_unavailable";
}

/// Rules of the policy file that verdicts name, where the agent names them too.
pub mod rule {
    pub const MAX_RCPTS: &str = "policy:envelope.max_rcpts_per_message";
    pub const BAD_RCPT_THROTTLE: &str = "policy:envelope.bad_rcpt_throttle";
    pub const BAD_RCPT: &str = "policy:bad_rcpt";
    pub const TARPIT: &str = "policy:bad_rcpt.tarpit_after";
    pub const NETWORK_TARPIT: &str = "policy:bad_rcpt.network_tarpit_after";

    /// The policy table of an offence kind: `policy:offences.pregreet`.
    pub fn offences(kind: crate::offence::OffenceKind) -> &'static str {
        use crate::offence::OffenceKind::*;
        match kind {
            Pregreet => "policy:offences.pregreet",
            Protocol => "policy:offences.protocol",
            Auth => "policy:offences.auth",
        }
    }
}

fn verdict(
    action: Action,
    code: u32,
    enhanced: &str,
    text: &str,
    rule: &str,
    reason: &str,
) -> Verdict {
    Verdict {
        action: action as i32,
        smtp_code: code,
        enhanced_code: enhanced.to_string(),
        text: text.to_string(),
        delay_ms: 0,
        rule: rule.to_string(),
        reason: reason.to_string(),
        shadow: false,
        hold_ms: 0,
        hold_source: String::new(),
    }
}

/// Go on; `rule` names the limit that governs the source.
pub fn accept(rule: &str) -> Verdict {
    verdict(Action::Accept, 0, "", "", rule, reason::OK)
}

/// `Connect:... OK` or `RELAY`: accepted without limits.
pub fn exempt(rule: &str) -> Verdict {
    verdict(Action::Accept, 0, "", "", rule, reason::EXEMPT)
}

/// A `Connect:` refusal from the access file: 421 closes, other 4xx tempfail, 5xx reject.
pub fn access(code: u16, enhanced: &str, text: &str, rule: &str) -> Verdict {
    let action = match code {
        421 => Action::Disconnect,
        400..=499 => Action::Tempfail,
        _ => Action::Reject,
    };
    verdict(
        action,
        u32::from(code),
        enhanced,
        text,
        rule,
        reason::ACCESS,
    )
}

/// sendmail: "421 4.3.2 Connection rate limit exceeded."
pub fn client_rate(rule: &str) -> Verdict {
    verdict(
        Action::Disconnect,
        421,
        "4.3.2",
        "Connection rate limit exceeded.",
        rule,
        reason::CLIENT_RATE,
    )
}

/// sendmail: "421 4.3.2 Too many open connections."
pub fn client_conn(rule: &str) -> Verdict {
    verdict(
        Action::Disconnect,
        421,
        "4.3.2",
        "Too many open connections.",
        rule,
        reason::CLIENT_CONN,
    )
}

/// The rule of a ban: the banned source, `Ban:206.81.85.0/24`.
pub fn ban_rule(source: &str) -> String {
    format!("Ban:{source}")
}

fn ban_text(level: Level) -> &'static str {
    match level {
        // One text for every cause of a ban (bad recipients, offences): the store keeps
        // the ban, not why; the limiter's log says why.
        Level::Address => {
            "Too many invalid recipients or protocol errors from your address; try again later."
        }
        Level::Network => {
            "Too many invalid recipients or protocol errors from your network; try again later."
        }
    }
}

/// A banned source at `Connect`: 421 (the sender retries later) or 554, as configured.
pub fn banned_at_connect(reply: BanReply, level: Level, rule: &str) -> Verdict {
    match reply {
        BanReply::Tempfail => verdict(
            Action::Disconnect,
            421,
            "4.7.1",
            ban_text(level),
            rule,
            reason::BANNED,
        ),
        BanReply::Reject => verdict(
            Action::Reject,
            554,
            "5.7.1",
            ban_text(level),
            rule,
            reason::BANNED,
        ),
    }
}

/// A banned source in the middle of a session: the session is closed (421, whatever
/// `ban_reply` says: a 5xx mid-session would not close it).
pub fn banned_in_session(level: Level, rule: &str) -> Verdict {
    banned_at_connect(BanReply::Tempfail, level, rule)
}

/// The rule of an operator's block: `Block:206.81.85.0/24`.
pub fn block_rule(target: &ipnet::IpNet) -> String {
    format!("Block:{target}")
}

/// A source under an operator's block: at `Connect` as `ban_reply` says (421 or 554),
/// in a session always 421 (see `banned_in_session`).
pub fn blocked(reply: BanReply, rule: &str, reason_text: &str) -> Verdict {
    let text = if reason_text.is_empty() {
        "Blocked by the mail administrator.".to_string()
    } else {
        format!("Blocked by the mail administrator: {reason_text}")
    };
    let (action, code, enhanced) = match reply {
        BanReply::Tempfail => (Action::Disconnect, 421, "4.7.1"),
        BanReply::Reject => (Action::Reject, 554, "5.7.1"),
    };
    verdict(action, code, enhanced, &text, rule, reason::BLOCKED)
}

/// sendmail: "452 4.5.3 Too many recipients"
pub fn max_rcpts(rule: &str) -> Verdict {
    verdict(
        Action::Tempfail,
        452,
        "4.5.3",
        "Too many recipients",
        rule,
        reason::MAX_RCPTS,
    )
}

/// The agent's answer when no limiter answers and it fails closed: a temporary
/// failure (`action` is Tempfail or Disconnect, `code` 4xx).
pub fn unavailable(action: Action, code: u32) -> Verdict {
    verdict(
        action,
        code,
        "4.3.2",
        "Service temporarily unavailable, try again later",
        "agent:fallback.mode",
        reason::LIMITER_UNAVAILABLE,
    )
}

/// A tarpit: go on after `delay_ms`.
pub fn delay(delay_ms: u32, rule: &str, reason: &str) -> Verdict {
    let mut v = verdict(Action::Delay, 0, "", "", rule, reason);
    v.delay_ms = delay_ms;
    v
}

/// Shadow mode: a would-be block is reported, with its code, rule and reason, but the
/// action is ACCEPT and nothing is delayed.
pub fn shadow(mut v: Verdict) -> Verdict {
    if v.action != Action::Accept as i32 {
        v.action = Action::Accept as i32;
        v.delay_ms = 0;
        v.shadow = true;
    }
    v
}

/// Whether a verdict refuses or delays something (for logs and metrics).
pub fn is_block(v: &Verdict) -> bool {
    v.shadow || v.action != Action::Accept as i32
}

/// The `action` label of a verdict in metrics (the limiter's and the agent's).
pub fn action_label(a: Action) -> &'static str {
    match a {
        Action::Unspecified => "unspecified",
        Action::Accept => "accept",
        Action::Delay => "delay",
        Action::Tempfail => "tempfail",
        Action::Reject => "reject",
        Action::Disconnect => "disconnect",
    }
}

/// The `reason` label of a verdict in metrics: one of the limiter's reasons, or
/// `other`, so that a label never takes a value from the network.
pub fn reason_label(r: &str) -> &'static str {
    [
        reason::OK,
        reason::ACCESS,
        reason::EXEMPT,
        reason::BANNED,
        reason::BLOCKED,
        reason::CLIENT_RATE,
        reason::CLIENT_CONN,
        reason::BAD_RCPT,
        reason::BAD_RCPT_THROTTLE,
        reason::MAX_RCPTS,
    ]
    .into_iter()
    .find(|k| *k == r)
    .unwrap_or("other")
}
