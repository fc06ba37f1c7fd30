//! Real `redis-server` processes: one server, or a Redis Cluster of N primaries.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// One `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.path().to_path_buf(), &extra) {
                return RedisServer {
                    port,
                    child,
                    dir,
                    extra,
                };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command and returns the reply in RESP (for checks of the keyspace).
    pub fn cmd(&self, args: &[&str]) -> String {
        resp_command(self.port, args)
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers, as a
    /// server that hangs or a network that drops packets.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port, self.dir.path().to_path_buf(), &self.extra) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` and waits until it answers PING; None if the port was taken.
// Every path reaps the child: `try_wait` did when it returns None here.
#[allow(clippy::zombie_processes)]
fn spawn(port: u16, dir: PathBuf, extra: &[String]) -> Option<Child> {
    let bin = require("redis-server", "redis-server");
    let mut child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // exited: port taken
        }
        // A server started with --requirepass answers NOAUTH: up all the same.
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && ["PONG", "NOAUTH"]
                .iter()
                .any(|r| resp_command(port, &["PING"]).contains(r))
        {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on port {port} did not answer within 10s");
}

/// Sends one command in RESP and reads one reply (whole, for simple replies and arrays).
pub fn resp_command(port: u16, args: &[&str]) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return format!("-ERR {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    read_reply(&mut r)
}

fn read_reply(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return String::new();
    }
    let line = line.trim_end().to_string();
    match line.chars().next() {
        Some('$') => {
            let n: i64 = line[1..].parse().unwrap();
            if n < 0 {
                return "(nil)".into();
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n as usize]).into_owned()
        }
        Some('*') => {
            let n: i64 = line[1..].parse().unwrap();
            (0..n.max(0))
                .map(|_| read_reply(r))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => line,
    }
}

/// A Redis Cluster of `n` primaries, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// Each node's TLS port, when started with [`RedisCluster::start_tls`].
    pub tls_ports: Vec<u16>,
}

/// PEM files for a cluster over TLS: every node's server certificate and key, the
/// client certificate and key it shows other nodes on the cluster bus (a server-only
/// certificate is refused there), and the CA that signed them and every client.
pub struct ClusterTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bus_cert: PathBuf,
    pub bus_key: PathBuf,
    pub ca: PathBuf,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        RedisCluster::start_nodes(n, 0, None)
    }

    /// `n` primaries with one replica each (`nodes[n..]` are the replicas), for
    /// failovers; nodes give up on a silent peer after 2 s.
    pub fn start_with_replicas(n: usize) -> RedisCluster {
        RedisCluster::start_nodes(n, 1, None)
    }

    /// Nodes that serve clients over TLS (requiring a client certificate of the CA) and
    /// talk to each other over TLS on the cluster bus; each keeps a plaintext port for
    /// the harness's own checks, and reports its TLS port to TLS clients.
    pub fn start_tls(n: usize, tls: &ClusterTls) -> RedisCluster {
        RedisCluster::start_nodes(n, 0, Some(tls))
    }

    fn start_nodes(n: usize, replicas: usize, tls: Option<&ClusterTls>) -> RedisCluster {
        let mut tls_ports = Vec::new();
        let node_timeout = if replicas > 0 { "2000" } else { "5000" };
        let total = n * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    node_timeout,
                ]
                .map(String::from)
                .to_vec();
                if let Some(t) = tls {
                    let port = free_port();
                    tls_ports.push(port);
                    args.extend(["--tls-port".into(), port.to_string()]);
                    // The bus port would be the TLS port + 10000, which may not exist.
                    args.extend(["--cluster-port".into(), free_port().to_string()]);
                    for (flag, file) in [
                        ("--tls-cert-file", &t.cert),
                        ("--tls-key-file", &t.key),
                        ("--tls-client-cert-file", &t.bus_cert),
                        ("--tls-client-key-file", &t.bus_key),
                        ("--tls-ca-cert-file", &t.ca),
                    ] {
                        args.extend([flag.into(), file.display().to_string()]);
                    }
                    args.extend(
                        ["--tls-auth-clients", "yes", "--tls-cluster", "yes"].map(String::from),
                    );
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                RedisServer::start_with(&args)
            })
            .collect();
        let cli = require("redis-cli", "redis-tools");
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must see the whole cluster before clients use it.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = node.cmd(&["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok within 20s: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes, tls_ports }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// `rediss://` seeds of a cluster started with [`RedisCluster::start_tls`].
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect()
    }

    /// All keys on all primaries.
    pub fn keys(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.cmd(&["KEYS", "*"])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|k| !k.is_empty())
            .collect()
    }
}

/// Watches the commands clients send to one server (Redis `MONITOR`), leaving out those
/// run by scripts and the health checks' PINGs.
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Monitor {
    pub fn start(port: u16) -> Monitor {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut ok = String::new();
        r.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("+OK"), "MONITOR: {ok}");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push(std::mem::take(&mut line));
            }
        });
        Monitor { lines }
    }

    /// Client commands seen so far, by name. The limiters' ledger rounds (keys tagged
    /// `{adm}`, and the `TIME` they read) run in the background, off the decision
    /// path: they are left out.
    pub fn commands(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains(" lua]") && !l.contains("{adm}"))
            .filter_map(|l| l.split('"').nth(1).map(str::to_ascii_uppercase))
            .filter(|c| c != "PING" && c != "INFO" && c != "TIME")
            .collect()
    }

    pub fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}
