//! The MTA-facing protocol servers. Each turns the MTA's events into limiter calls and
//! verdicts into the MTA's replies, and never lets a reply wait past its `max_delay`.

mod accept;
pub mod logs;
pub mod milter;
pub mod policy;
pub mod socketmap;

use std::time::Duration;

use mxlimit_proto::v1::{Action, Verdict};

/// The SMTP reply a refusing verdict asks for, with defaults for verdicts that carry
/// none.
pub fn smtp_reply(v: &Verdict) -> (u32, String, String) {
    let action = crate::limiter::action(v);
    let code = match (v.smtp_code, action) {
        (c, _) if (400..600).contains(&c) => c,
        (_, Action::Disconnect) => 421,
        (_, Action::Reject) => 550,
        _ => 451,
    };
    let enhanced = if v.enhanced_code.is_empty() {
        if code >= 500 { "5.7.1" } else { "4.7.1" }.to_string()
    } else {
        v.enhanced_code.clone()
    };
    let text = if v.text.is_empty() {
        "Try again later".to_string()
    } else {
        v.text.clone()
    };
    (code, enhanced, text)
}

/// Whether a verdict refuses (a reply the MTA must give) rather than lets the step go on
/// (accept, or a delay).
pub fn refuses(v: &Verdict) -> bool {
    matches!(
        crate::limiter::action(v),
        Action::Reject | Action::Tempfail | Action::Disconnect
    )
}

/// A delay, capped so that the MTA's own timeout for the step never fires.
pub fn capped(delay_ms: u32, max: Duration) -> Duration {
    Duration::from_millis(u64::from(delay_ms)).min(max)
}

/// The client's verified host name as an MTA reports it: Postfix says `unknown` and
/// sendmail writes `[1.2.3.4]` when there is none.
pub fn verified_name(name: &str) -> Option<&str> {
    let n = name.trim();
    if n.is_empty() || n.eq_ignore_ascii_case("unknown") || n.starts_with('[') {
        return None;
    }
    mxlimit_core::policy::access::parse_name(n).ok().map(|_| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mtas_report_without_one() {
        assert_eq!(verified_name("mail.example.com"), Some("mail.example.com"));
        assert_eq!(verified_name("unknown"), None);
        assert_eq!(verified_name("[192.0.2.1]"), None);
        assert_eq!(verified_name("bad name!"), None);
    }

    #[test]
    fn replies_get_defaults() {
        let v = Verdict {
            action: Action::Disconnect as i32,
            ..Default::default()
        };
        assert_eq!(
            smtp_reply(&v),
            (421, "4.7.1".into(), "Try again later".into())
        );
        let v = mxlimit_core::decision::verdict::max_rcpts("test");
        assert_eq!(
            smtp_reply(&v),
            (452, "4.5.3".into(), "Too many recipients".into())
        );
    }
}
