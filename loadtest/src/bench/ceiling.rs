//! The ceiling of a Redis for the limiter's work: `redis-benchmark` running EVALSHA of
//! the limiter's own Connect and Release scripts (the same keys and arguments as a
//! decision), so that the limiter's throughput can be put next to what that Redis can
//! do at most.

use std::process::Command;

use limiter_server::store::redis::sources;

use anyhow::{Context, Result, bail};
use serde::Serialize;

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

fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    Ok((
        h.to_string(),
        p.parse().with_context(|| format!("port of {url}"))?,
    ))
}

/// Measures EVALSHA of the Connect script and of the Release script (on the leases the
/// first run left), each with `clients` connections and `requests` calls.
pub fn measure(redis_url: &str, clients: u32, requests: u64) -> Result<Ceiling> {
    let (host, port) = host_port(redis_url)?;
    let port = port.to_string();
    // The keys and arguments of one admitted connection with every limit on, over
    // random networks and sessions (redis-benchmark fills in each __rand_int__).
    let tag = format!("{PREFIX}:{{n4:bench__rand_int__}}");
    let key = |k: &str| format!("{tag}:{k}");
    let member = "10.0.0.1\u{1f}bench\u{1f}e\u{1f}__rand_int__";
    let mut connect: Vec<String> = ["x:a", "x", "r:a", "r", "c", "l", "nodes"]
        .iter()
        .map(|k| key(k))
        .collect();
    connect.extend(
        [
            member, "1000000", "1000000", "60000", "1000000", "1000000", "30000", "0", "bench",
            "n4:bench", "120000", "10.0.0.1",
        ]
        .map(String::from),
    );
    let release = vec![key("c"), key("l"), member.to_string()];
    let bench = |script: &'static str, source: &str, keys: usize, args: &[String]| {
        let sha = load(&host, &port, source)?;
        let mut argv: Vec<String> = ["-h", &host, "-p", &port, "-c"].map(String::from).to_vec();
        argv.extend([
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
        Ok::<_, anyhow::Error>(ScriptRate {
            script,
            evalsha_per_s: requests_per_s(&text)
                .with_context(|| format!("redis-benchmark said: {text}"))?,
        })
    };
    let connect = bench("connect.lua", sources::CONNECT, 7, &connect)?;
    let release = bench("release.lua", sources::RELEASE, 2, &release)?;
    remove_keys(redis_url)?;
    let sessions_per_s = 1.0 / (1.0 / connect.evalsha_per_s + 1.0 / release.evalsha_per_s);
    Ok(Ceiling {
        clients,
        requests,
        connect,
        release,
        sessions_per_s,
    })
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

/// Removes the measurement's keys, so that their expiry does not load the Redis during
/// whatever runs next.
fn remove_keys(redis_url: &str) -> Result<()> {
    use redis::Commands;
    let mut con = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .with_context(|| format!("connect to {redis_url}"))?;
    let keys: Vec<String> = con
        .scan_match::<_, String>(format!("{PREFIX}:*"))?
        .collect::<Result<_, _>>()?;
    for chunk in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(chunk).exec(&mut con)?;
    }
    Ok(())
}

fn load(host: &str, port: &str, script: &str) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port, "SCRIPT", "LOAD", script])
        .output()
        .context("run redis-cli (Debian package redis-tools)")?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // redis-cli exits 0 on a server error, which it prints instead of a hash.
    if !out.status.success() || sha.len() != 40 {
        bail!(
            "SCRIPT LOAD on {host}:{port}: {sha}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(sha)
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
    fn urls() {
        assert_eq!(
            host_port("redis://127.0.0.1:6390").unwrap(),
            ("127.0.0.1".into(), 6390)
        );
        assert_eq!(
            host_port("redis://:pw@db:7000/0").unwrap(),
            ("db".into(), 7000)
        );
        assert_eq!(host_port("redis://db").unwrap(), ("db".into(), 6379));
    }

    #[test]
    fn rates() {
        let out = "EVALSHA abc 7 k: rps=30000.0 (overall: 29000.0)\r\r\
                   EVALSHA abc 7 k: 30349.01 requests per second, p50=1.9 msec\n";
        assert_eq!(requests_per_s(out), Some(30349.01));
        assert_eq!(requests_per_s("ERR unknown command\n"), None);
    }
}
