//! The ceiling of a Redis for the limiter's work: `redis-benchmark` running EVALSHA of
//! the limiter's own Connect and Release scripts, with the keys and arguments of a
//! decision on one Redis server, so that the limiter's throughput can be put next to
//! what that Redis can do at most.
//!
//! redis-benchmark draws a new number for every `__rand_int__`, so one call's keys
//! belong to different networks out of 100 000: the sorted sets stay small, a little
//! cheaper than the limiter's busier ones. The ceiling errs high, so the ratio errs low.

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use limiter_server::store::redis::sources;
use redis::{ConnectionAddr, IntoConnectionInfo};
use serde::Serialize;

use crate::lab::remove_keys;

/// One script's EVALSHA rate.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptRate {
    pub script: &'static str,
    pub evalsha_per_s: f64,
}

/// The ceiling for one session's work: a Connect and a Disconnect.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub clients: u32,
    pub requests: u64,
    pub connect: ScriptRate,
    pub release: ScriptRate,
    /// Sessions per second that Redis could take if it did nothing but these two
    /// scripts: one of each per session.
    pub sessions_per_s: f64,
}

/// Fails unless redis-cli and redis-benchmark can run.
pub fn check_tools() -> Result<()> {
    for tool in ["redis-cli", "redis-benchmark"] {
        Command::new(tool)
            .arg("--version")
            .output()
            .with_context(|| format!("run {tool} (Debian package redis-tools)"))?;
    }
    Ok(())
}

/// The prefix of every key the measurement writes: its own, so that it never touches a
/// limiter's keys and can remove what it wrote.
const PREFIX: &str = "mxlimit-ceiling";

/// The redis-cli / redis-benchmark arguments that reach the Redis at `url`.
fn server_args(url: &str) -> Result<Vec<String>> {
    let info = url
        .into_connection_info()
        .with_context(|| format!("Redis URL {url}"))?;
    let (host, port) = match info.addr() {
        ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        _ => bail!("{url}: the ceiling needs a plain TCP Redis (no TLS, no Unix socket)"),
    };
    let r = info.redis_settings();
    let mut args = vec!["-h".into(), host, "-p".into(), port.to_string()];
    if r.db() != 0 {
        args.extend(["-n".into(), r.db().to_string()]);
    }
    if let Some(user) = r.username() {
        args.extend(["--user".into(), user.into()]);
    }
    if let Some(pass) = r.password() {
        args.extend(["-a".into(), pass.into(), "--no-auth-warning".into()]);
    }
    Ok(args)
}

/// Measures EVALSHA of the Connect script and of the Release script, each with
/// `clients` connections and `requests` calls, then removes the keys they wrote.
pub fn measure(redis_url: &str, clients: u32, requests: u64) -> Result<Ceiling> {
    let server = server_args(redis_url)?;
    let mut con = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .with_context(|| format!("connect to {redis_url}"))?;
    let tag = format!("{PREFIX}:{{n4:bench__rand_int__}}");
    let key = |k: &str| format!("{tag}:{k}");
    let member = "10.0.0.1\u{1f}bench\u{1f}e\u{1f}__rand_int__";
    // One admitted connection with every limit on and none reached, as a node's steady
    // state is: without the registry key (the limiter sends it once per lease TTL per
    // node and network). KEYS 7 and 8 are the bad-recipient logs, read for the tarpit.
    let mut connect: Vec<String> = ["x:a", "x", "r:a", "r", "c", "l", "b:a", "b"]
        .iter()
        .map(|k| key(k))
        .collect();
    connect.extend(
        [
            member, "1000000", "1000000", "60000", "1000000", "1000000", "30000", "0", "10.0.0.1",
            "60000",
        ]
        .map(String::from),
    );
    let release = vec![key("c"), key("l"), member.to_string()];
    let connect = run_script(
        &mut con,
        &server,
        "connect.lua",
        sources::CONNECT,
        8,
        &connect,
        clients,
        requests,
    )?;
    let release = run_script(
        &mut con,
        &server,
        "release.lua",
        sources::RELEASE,
        2,
        &release,
        clients,
        requests,
    )?;
    remove_keys(redis_url, PREFIX)?;
    let sessions_per_s = 1.0 / (1.0 / connect.evalsha_per_s + 1.0 / release.evalsha_per_s);
    Ok(Ceiling {
        clients,
        requests,
        connect,
        release,
        sessions_per_s,
    })
}

/// Loads `source`, checks that one call with these keys and arguments succeeds, runs
/// redis-benchmark, and checks that no call failed (redis-benchmark counts an error
/// reply as a request done).
#[allow(clippy::too_many_arguments)]
fn run_script(
    con: &mut redis::Connection,
    server: &[String],
    script: &'static str,
    source: &str,
    keys: usize,
    args: &[String],
    clients: u32,
    requests: u64,
) -> Result<ScriptRate> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query(con)
        .with_context(|| format!("SCRIPT LOAD {script}"))?;
    let once: Vec<String> = args
        .iter()
        .map(|a| a.replace("__rand_int__", "0"))
        .collect();
    redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(keys)
        .arg(&once)
        .exec(con)
        .with_context(|| format!("one EVALSHA of {script} before measuring"))?;
    let failed_before = failed_calls(con)?;
    let mut argv = server.to_vec();
    argv.extend([
        "-c".into(),
        clients.to_string(),
        "-n".into(),
        requests.to_string(),
        "-r".into(),
        "100000".into(),
        "-q".into(),
        "EVALSHA".into(),
        sha,
        keys.to_string(),
    ]);
    argv.extend(args.iter().cloned());
    let out = Command::new("redis-benchmark")
        .args(&argv)
        .output()
        .context("run redis-benchmark (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "redis-benchmark failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = failed_calls(con)? - failed_before;
    ensure!(
        failed == 0,
        "{failed} EVALSHA calls of {script} failed during the measurement"
    );
    Ok(ScriptRate {
        script,
        evalsha_per_s: requests_per_s(&text)
            .with_context(|| format!("redis-benchmark said: {text}"))?,
    })
}

/// EVALSHA calls that failed so far, from INFO commandstats.
fn failed_calls(con: &mut redis::Connection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con)?;
    Ok(evalsha_stat(&info, "failed_calls").unwrap_or(0))
}

/// A field of the EVALSHA line of INFO commandstats.
pub fn evalsha_stat(info: &str, field: &str) -> Option<u64> {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))?;
    line.split(',')
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))?
        .trim()
        .parse()
        .ok()
}

impl Ceiling {
    pub fn text(&self) -> String {
        format!(
            "Redis ceiling ({} clients, {} calls each): Connect script {:.0} EVALSHA/s, Release script {:.0} EVALSHA/s: {:.0} sessions/s\n",
            self.clients,
            self.requests,
            self.connect.evalsha_per_s,
            self.release.evalsha_per_s,
            self.sessions_per_s
        )
    }
}

/// The rate from redis-benchmark's quiet output, whose last line reads
/// "EVALSHA ...: 30349.01 requests per second, p50=...".
fn requests_per_s(text: &str) -> Option<f64> {
    let i = text.rfind(" requests per second")?;
    text[..i].rsplit([' ', '\r']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_server_arguments() {
        assert_eq!(
            server_args("redis://127.0.0.1:6390").unwrap(),
            ["-h", "127.0.0.1", "-p", "6390"]
        );
        assert_eq!(
            server_args("redis://u:pw@db:7000/2").unwrap(),
            [
                "-h",
                "db",
                "-p",
                "7000",
                "-n",
                "2",
                "--user",
                "u",
                "-a",
                "pw",
                "--no-auth-warning"
            ]
        );
        assert!(server_args("rediss://db:7000").is_err());
        assert!(server_args("not a url").is_err());
    }

    #[test]
    fn rates() {
        let out = "EVALSHA abc 7 k: rps=30000.0 (overall: 29000.0)\r\r\
                   EVALSHA abc 7 k: 30349.01 requests per second, p50=1.9 msec\n";
        assert_eq!(requests_per_s(out), Some(30349.01));
        assert_eq!(requests_per_s("ERR unknown command\n"), None);
    }

    #[test]
    fn commandstats() {
        let info = "# Commandstats\r\ncmdstat_get:calls=1,usec=2\r\n\
                    cmdstat_evalsha:calls=6000,usec=90000,usec_per_call=15.00,rejected_calls=0,failed_calls=3\r\n";
        assert_eq!(evalsha_stat(info, "calls"), Some(6000));
        assert_eq!(evalsha_stat(info, "failed_calls"), Some(3));
        assert_eq!(evalsha_stat("# Commandstats\r\n", "calls"), None);
    }
}
