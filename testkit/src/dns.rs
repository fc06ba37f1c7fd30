//! A real DNS server for name tests: Debian's `dnsmasq` on a free loopback port,
//! answering only the records a test gives it, logging every query.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

pub struct DnsServer {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    /// `args` are dnsmasq record options, e.g. `--host-record=mx.example.com,192.0.2.1`.
    pub fn start(args: &[&str]) -> DnsServer {
        let bin = require("dnsmasq", "dnsmasq-base");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("queries.log");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                ])
                .arg(format!("--port={port}"))
                .arg("--log-queries")
                .arg(format!("--log-facility={}", log.display()))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            // Ready once it has logged its start.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: next port
                }
                if std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("started")
                {
                    return DnsServer {
                        port,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "dnsmasq did not start within 10s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("dnsmasq did not start on any of 5 ports");
    }

    /// Stops and starts again on the same port with other records.
    pub fn restart(&mut self, args: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let bin = require("dnsmasq", "dnsmasq-base");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                ])
                .arg(format!("--port={}", self.port))
                .arg("--log-queries")
                .arg(format!("--log-facility={}", self.log.display()))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            loop {
                if std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .contains("started")
                {
                    return;
                }
                if let Ok(Some(_)) = self.child.try_wait() {
                    break; // the port is not free yet
                }
                assert!(Instant::now() < deadline, "dnsmasq did not restart");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many queries for `name` dnsmasq has seen.
    pub fn queries(&self, name: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("]: query[") && l.contains(&format!(" {name} from")))
            .count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
impl DnsServer {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
