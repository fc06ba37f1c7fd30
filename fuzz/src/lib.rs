//! Fuzz targets: each takes arbitrary bytes as the outside world would send or write
//! them, and must never panic (nor loop, nor allocate without bound). libFuzzer drives
//! them with coverage on nightly (`fuzz_targets/`, `cargo fuzz`); `tests/smoke.rs` drives
//! them on stable with seeds and mutations, in CI.
//!
//! The readers of the three MTA protocols are driven over an in-memory stream: they are
//! the agent's own functions, and on a byte slice they never wait.

use std::path::Path;

use futures_util::FutureExt;
use prost::Message;

/// A target: bytes in, nothing out; it must not panic.
pub type Target = fn(&[u8]);

/// Every target, by name (the libFuzzer binaries' names too).
pub const TARGETS: &[(&str, Target)] = &[
    ("access_file", access_file),
    ("policy_toml", policy_toml),
    ("agent_toml", agent_toml),
    ("duration", duration),
    ("limiter_request", limiter_request),
    ("socketmap", socketmap),
    ("policy_service", policy_service),
    ("milter", milter),
    ("mail_log", mail_log),
];

/// A sendmail access file, as bytes (Latin-1 and all); what parses is compiled too.
pub fn access_file(data: &[u8]) {
    let path = Path::new("fuzz-access");
    if let Ok(file) = mxlimit_core::policy::access::parse_bytes(data, path) {
        let _ = mxlimit_core::policy::Policy::compile(
            Default::default(),
            vec![file],
            vec![path.to_path_buf()],
        );
    }
}

/// The limiter's TOML policy; what parses is compiled with an empty access file.
pub fn policy_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz-policy.toml");
    if let Ok(settings) = mxlimit_core::policy::parse_settings(text, path) {
        let _ = mxlimit_core::policy::Policy::compile(settings, vec![], vec![]);
    }
}

/// mx-agent's TOML configuration, validated.
pub fn agent_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mx_agent::config::AgentConfig::parse(text, Path::new("fuzz-agent.toml"));
    }
}

/// Durations as flags, policy files and the CLI write them.
pub fn duration(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mxlimit_proto::duration::parse(text);
    }
}

/// A Limiter request (the first byte picks which) decoded as protobuf, then every field
/// through the limiter's validation.
pub fn limiter_request(data: &[u8]) {
    use ::limiter_server::grpc::validate;
    use mxlimit_proto::v1::{
        BlockRequest, ConnectRequest, HeartbeatRequest, OffenceRequest, RecipientRequest,
    };
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(r) = ConnectRequest::decode(body) {
                let _ = validate::node(&r.node);
                let _ = validate::id("session_id", &r.session_id, true);
                let _ = validate::id("epoch", &r.epoch, false);
                let _ = validate::client_ip("client_ip", &r.client_ip);
                let _ = validate::client_name(&r.client_name);
                let _ = validate::helo(&r.helo);
            }
        }
        1 => {
            if let Ok(r) = RecipientRequest::decode(body) {
                let _ = validate::client_ip("client_ip", &r.client_ip);
                let _ = validate::recipient(&r.recipient);
                let _ = validate::client_name(&r.client_name);
            }
        }
        2 => {
            if let Ok(r) = HeartbeatRequest::decode(body) {
                let _ = validate::count("sessions", r.session_ids.len() + r.leases.len());
                for l in &r.leases {
                    let _ = validate::id("leases.session_id", &l.session_id, true);
                    let _ = validate::client_ip("leases.client_ip", &l.client_ip);
                }
            }
        }
        3 => {
            if let Ok(r) = OffenceRequest::decode(body) {
                let _ = validate::offence_kind(r.kind);
                let _ = validate::id("event_id", &r.event_id, true);
                let _ = validate::client_ip("client_ip", &r.client_ip);
            }
        }
        _ => {
            if let Ok(r) = BlockRequest::decode(body) {
                let _ = ::limiter_server::admin::service::parse_target(&r.target);
            }
        }
    }
}

/// Sendmail's socketmap: netstrings, one after another, as the agent reads them.
pub fn socketmap(data: &[u8]) {
    let mut r = tokio::io::BufReader::new(data);
    for _ in 0..data.len() + 1 {
        let read = mx_agent::adapters::socketmap::read_netstring(&mut r);
        match read.now_or_never().expect("a byte slice never waits") {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// Postfix's policy delegation: requests, one after another, as the agent reads them.
pub fn policy_service(data: &[u8]) {
    use mx_agent::adapters::policy::{Request, read_request};
    let mut r = tokio::io::BufReader::new(data);
    for _ in 0..data.len() + 1 {
        match read_request(&mut r)
            .now_or_never()
            .expect("a byte slice never waits")
        {
            Request::Attributes(a) => {
                let _ = mx_agent::adapters::policy::client_of(&a);
            }
            Request::Closed | Request::TooLarge | Request::Failed(_) => return,
        }
    }
}

/// The milter protocol: framed messages, each parsed as a command, as the agent's milter
/// library reads them.
pub fn milter(data: &[u8]) {
    use indymilter::message::{self, command::Command};
    let mut r = data;
    for _ in 0..data.len() + 1 {
        match message::read(&mut r)
            .now_or_never()
            .expect("a byte slice never waits")
        {
            Ok(msg) => {
                let _ = Command::parse_command(msg);
            }
            Err(_) => return,
        }
    }
}

/// Mail logs (sendmail, Postfix, Exim), line by line, as `mxlimit import-log` and the
/// agent's log adapter read them.
pub fn mail_log(data: &[u8]) {
    let mut reader = mxlimit_maillog::Reader::new();
    let mut events = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        reader.line(&String::from_utf8_lossy(line), &mut events);
        events.clear();
    }
}
