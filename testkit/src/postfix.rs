//! A private Postfix instance (Debian's `postfix`): its own configuration, queue and
//! data directories in a temporary directory, its own SMTP port on 127.0.0.1, its own
//! log file. Nothing of the system's mail is touched.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// How the instance is wired to mx-agent.
#[derive(Debug, Clone, Default)]
pub struct PostfixOptions {
    /// `smtpd_milters`, e.g. `inet:127.0.0.1:7026`.
    pub milter: Option<String>,
    /// `check_policy_service` target, e.g. `inet:127.0.0.1:7027` (asked at CONNECT
    /// and RCPT; sets `smtpd_delay_reject = no`).
    pub policy: Option<String>,
    /// `check_client_access socketmap:...` target, e.g. `inet:127.0.0.1:7028`.
    pub socketmap: Option<String>,
    /// The agent's policy service asked for bans at every RCPT, beside the milter, as
    /// docs/MTA.md recommends: `check_policy_service { inet:..., policy_context=bans,
    /// default_action=DUNNO, try_limit=1, timeout=10s }` in
    /// `smtpd_recipient_restrictions`.
    pub bans: Option<String>,
    /// Mailboxes that exist (the domain is `mx.test`); every other recipient of the
    /// domain is rejected with 550 5.1.1 User unknown.
    pub mailboxes: Vec<String>,
    /// Lines appended to main.cf as they are (they win over the ones above).
    pub main_cf: Vec<String>,
    /// Also listen on `[::1]` at the same port, for clients with IPv6 addresses.
    pub ipv6: bool,
    /// postscreen in front of smtpd, with its pregreet test enforced
    /// (`postscreen_greet_action = enforce`, `postscreen_greet_wait = 1s`): a client
    /// that talks before the banner is logged as `PREGREET` and never reaches smtpd.
    pub postscreen: bool,
}

pub struct Postfix {
    pub port: u16,
    dir: tempfile::TempDir,
}

fn postfix_cmd(dir: &Path, args: &[&str]) -> std::process::Output {
    // Postfix prints its errors only to a terminal or syslog: give it a terminal.
    let cmd = format!("postfix -c {} {}", dir.display(), args.join(" "));
    Command::new(require("script", "bsdutils"))
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run postfix")
}

impl Postfix {
    pub fn start(name: &str, opts: &PostfixOptions) -> Postfix {
        require("postfix", "postfix");
        let dir = tempfile::Builder::new()
            .prefix("mxlimit-postfix-")
            .tempdir()
            .unwrap();
        // Postfix's daemons run as `postfix` and must reach the queue.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("queue")).unwrap();
        std::fs::create_dir(d.join("data")).unwrap();
        let ok = Command::new("chown")
            .args(["postfix", d.join("data").to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postfix data directory");
        let mut boxes = String::new();
        for m in &opts.mailboxes {
            boxes.push_str(&format!("{m} x\n"));
        }
        std::fs::write(d.join("vmailbox"), boxes).unwrap();

        let mut pf = Postfix { port: 0, dir };
        for attempt in 0..5 {
            pf.port = free_port();
            write_config(pf.dir.path(), name, pf.port, opts);
            let out = Command::new("postmap")
                .args([
                    "-c",
                    pf.dir.path().to_str().unwrap(),
                    pf.dir.path().join("vmailbox").to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "postmap: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let started = postfix_cmd(pf.dir.path(), &["start"]);
            if pf.wait_listening(Duration::from_secs(20)) {
                return pf;
            }
            let log = pf.log();
            postfix_cmd(pf.dir.path(), &["abort"]);
            // Another process took the port between our check and Postfix's bind: retry.
            assert!(
                attempt < 4 && log.contains("bind"),
                "postfix {name} did not start: {}\n{log}",
                String::from_utf8_lossy(&started.stdout)
            );
        }
        unreachable!()
    }

    fn wait_listening(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `[::1]:port`, served when started with `ipv6`.
    pub fn addr6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        postfix_cmd(self.dir.path(), &["abort"]);
    }
}

fn write_config(d: &Path, name: &str, port: u16, o: &PostfixOptions) {
    let q = d.join("queue");
    let mut main = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {q}\n\
         data_directory = {data}\n\
         myhostname = {name}.mx.test\n\
         mydomain = mx.test\n\
         mydestination =\n\
         inet_interfaces = {interfaces}\n\
         inet_protocols = {protocols}\n\
         mynetworks = 127.0.0.1/32\n\
         virtual_mailbox_domains = mx.test\n\
         virtual_mailbox_maps = hash:{vm}\n\
         virtual_transport = discard\n\
         smtpd_peername_lookup = no\n\
         smtpd_error_sleep_time = 0\n\
         smtpd_soft_error_limit = 1000\n\
         smtpd_hard_error_limit = 1000\n\
         smtpd_junk_command_limit = 1000\n\
         smtpd_client_connection_count_limit = 0\n\
         maillog_file = {log}\n\
         maillog_file_prefixes = {dir}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
        q = q.display(),
        data = d.join("data").display(),
        vm = d.join("vmailbox").display(),
        log = d.join("maillog").display(),
        dir = d.display(),
        interfaces = if o.ipv6 {
            "127.0.0.1, [::1]"
        } else {
            "127.0.0.1"
        },
        protocols = if o.ipv6 { "ipv4, ipv6" } else { "ipv4" },
    );
    if let Some(m) = &o.milter {
        // docs/MTA.md: mail flows without the agent; a wedged one costs a bounded wait.
        main.push_str(&format!(
            "smtpd_milters = {m}\nmilter_protocol = 6\nmilter_default_action = accept\n\
             milter_connect_timeout = 5s\nmilter_command_timeout = 10s\n"
        ));
    }
    let mut client = Vec::new();
    if let Some(s) = &o.socketmap {
        client.push(format!("check_client_access socketmap:{s}:mxlimit"));
    }
    if let Some(b) = &o.bans {
        assert!(
            o.policy.is_none(),
            "the policy service: full, or bans beside the milter"
        );
        main.push_str(&format!(
            "smtpd_recipient_restrictions = check_policy_service {{ {b}, policy_context=bans, default_action=DUNNO, try_limit=1, timeout=10s }}\n"
        ));
    }
    if let Some(p) = &o.policy {
        client.push(format!("check_policy_service {p}"));
        main.push_str(&format!(
            "smtpd_delay_reject = no\nsmtpd_recipient_restrictions = check_policy_service {p}\n"
        ));
    }
    if !client.is_empty() {
        main.push_str(&format!(
            "smtpd_client_restrictions = {}\n",
            client.join(", ")
        ));
    }
    if o.postscreen {
        main.push_str(
            "postscreen_greet_action = enforce\n\
             postscreen_greet_wait = 1s\n\
             postscreen_access_list = permit_mynetworks\n",
        );
    }
    for line in &o.main_cf {
        main.push_str(line);
        main.push('\n');
    }
    std::fs::write(d.join("main.cf"), main).unwrap();
    std::fs::write(d.join("master.cf"), master_cf(port, o.postscreen)).unwrap();
}

/// Debian's master.cf with SMTP on our port and nothing chrooted; with `postscreen`,
/// postscreen on the port, handing clients that pass to smtpd (as Debian's commented
/// lines show).
fn master_cf(port: u16, postscreen: bool) -> String {
    let stock = std::fs::read_to_string("/etc/postfix/master.cf")
        .or_else(|_| std::fs::read_to_string("/usr/share/postfix/master.cf.dist"))
        .expect("postfix master.cf");
    let mut out = String::new();
    for line in stock.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('#') || line.starts_with(' ') || fields.len() < 8 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        if f[0] == "smtp" && f[1] == "inet" {
            f[0] = port.to_string();
            if postscreen {
                out.push_str(&format!("{port}  inet  n  -  n  -  1  postscreen\n"));
                // A pass service is private: postscreen finds it in private/.
                f[0] = "smtpd".into();
                f[1] = "pass".into();
                f[2] = "-".into();
            }
        }
        f[4] = "n".into(); // no chroot
        out.push_str(&f.join("  "));
        out.push('\n');
    }
    out
}
