//! A private Exim daemon (Debian's `exim4-daemon-light` 4.96, unpacked privately
//! because it conflicts with Postfix as a package): its own configuration, spool, log
//! directory and port on 127.0.0.1 (and `[::1]`), wired to mx-agent's policy service
//! with the repository's own `examples/exim4/mxlimit_main.conf` and
//! `mxlimit_acl.conf`, included as they ship, the agent's address given as a macro.
//!
//! Debian's binary runs as the `Debian-exim` user, which its `exim4-base` package
//! makes; the machine is left alone: in a mount namespace of its own, `/etc/passwd`
//! and `/etc/group` are copies that add it (with `mail`'s ids).
//!
//! Of `mx.test`, the given mailboxes exist; every other recipient gets `550 Unknown
//! user` at RCPT (Debian's `cannot_route_message`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// The user and group Debian's Exim runs as, made here with `mail`'s ids.
const EXIM_IDS: u32 = 8;

/// Where scripts/test unpacks exim4-daemon-light, unless `MXLIMIT_EXIM` says otherwise.
pub fn exim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MXLIMIT_EXIM") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-deps/exim/usr/sbin/exim4");
    assert!(
        p.is_file(),
        "Exim is not unpacked at {}: run scripts/test (it unpacks Debian's exim4-daemon-light) or set MXLIMIT_EXIM",
        p.display()
    );
    p
}

/// The ACLs operators include, as docs/MTA.md shows them.
pub fn shipped_acl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/exim4/mxlimit_acl.conf")
}

/// The main-section settings operators include.
pub fn shipped_main() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/exim4/mxlimit_main.conf")
}

#[derive(Debug, Clone, Default)]
pub struct EximOptions {
    /// mx-agent's policy service as `${readsocket}` names it, `inet:127.0.0.1:7027`:
    /// the shipped ACLs at connect and RCPT. Without it, Exim alone.
    pub policy: Option<String>,
    /// Local parts of `mx.test` that exist.
    pub mailboxes: Vec<String>,
    /// Also listen on `[::1]` at the same port, for clients with IPv6 addresses.
    pub ipv6: bool,
    /// `MXLIMIT_TIMEOUT` (the shipped default is 10s), e.g. `1s`.
    pub timeout: Option<String>,
}

pub struct Exim {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Exim {
    pub fn start(name: &str, opts: &EximOptions) -> Exim {
        let bin = exim_binary();
        require("unshare", "util-linux");
        let dir = tempfile::Builder::new()
            .prefix("mxlimit-exim-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // Exim's own user reaches its spool and log through this directory.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["spool", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
            std::os::unix::fs::chown(d.join(sub), Some(EXIM_IDS), Some(EXIM_IDS)).unwrap();
        }
        with_exim_user(
            "/etc/passwd",
            &d.join("passwd"),
            "Debian-exim:x:8:8:Exim:/nonexistent:/usr/sbin/nologin",
        );
        with_exim_user("/etc/group", &d.join("group"), "Debian-exim:x:8:");
        for attempt in 0..5 {
            let port = free_port();
            std::fs::write(d.join("exim.conf"), config(d, &bin, name, port, opts)).unwrap();
            // Macros given with -D win over the shipped file's (readconf.c); root may
            // give any.
            let mut macros = String::new();
            if let Some(p) = &opts.policy {
                macros.push_str(&format!(" -DMXLIMIT_POLICY={p}"));
            }
            if let Some(t) = &opts.timeout {
                macros.push_str(&format!(" -DMXLIMIT_TIMEOUT={t}"));
            }
            let script = format!(
                "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && exec {bin} -C {d}/exim.conf{macros} -bdf",
                d = d.display(),
                bin = bin.display(),
            );
            let mut child = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("stderr")).unwrap())
                .process_group(0)
                .spawn()
                .expect("start exim");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    let err = std::fs::read_to_string(d.join("stderr")).unwrap_or_default();
                    let log = std::fs::read_to_string(d.join("log/paniclog")).unwrap_or_default();
                    assert!(
                        attempt < 4 && (err.contains("in use") || log.contains("in use")),
                        "exim exited ({st}): {err}\n{log}"
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Exim { port, child, dir };
                }
                assert!(Instant::now() < deadline, "exim did not listen within 20s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `[::1]:port`, served when started with `ipv6`.
    pub fn addr6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port))
    }

    /// Exim's mainlog, as it writes it (`log_file_path`).
    pub fn mainlog_path(&self) -> PathBuf {
        self.dir.path().join("log/mainlog")
    }

    /// The mainlog and the paniclog so far.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let read = |f: &str| std::fs::read_to_string(d.join("log").join(f)).unwrap_or_default();
        format!("{}{}", read("mainlog"), read("paniclog"))
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        // The daemon and the processes serving sessions share its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A copy of `from` with `line` added, unless the name is there already.
fn with_exim_user(from: &str, to: &Path, line: &str) {
    let mut text = std::fs::read_to_string(from).unwrap_or_default();
    let name = line.split(':').next().unwrap_or_default();
    if !text.lines().any(|l| l.split(':').next() == Some(name)) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(to, text).unwrap();
}

fn config(d: &Path, bin: &Path, name: &str, port: u16, o: &EximOptions) -> String {
    let boxes = if o.mailboxes.is_empty() {
        "root".to_string()
    } else {
        o.mailboxes.join(" : ")
    };
    let mut c = format!(
        "keep_environment =\n\
         primary_hostname = {name}.mx.test\n\
         spool_directory = {d}/spool\n\
         log_file_path = {d}/log/%slog\n\
         exim_path = {bin}\n\
         daemon_smtp_ports = {port}\n\
         local_interfaces = {interfaces}\n\
         tls_advertise_hosts =\n\
         host_lookup =\n\
         rfc1413_hosts =\n\
         smtp_accept_max = 200\n\
         domainlist local_domains = mx.test\n\
         domainlist relay_to_domains =\n\
         hostlist relay_from_hosts = 127.0.0.1\n",
        d = d.display(),
        bin = bin.display(),
        interfaces = if o.ipv6 {
            "<; 127.0.0.1 ; ::1"
        } else {
            "127.0.0.1"
        },
    );
    if o.policy.is_some() {
        // The shipped main settings as they are (this test's agent and timeout come
        // from the command line, which wins over the file's macros).
        c.push_str(&format!(".include {}\n", shipped_main().display()));
    }
    // As Debian's conf.d/main/02_exim4-config_options.
    c.push_str(
        ".ifndef MAIN_ACL_CHECK_RCPT\nMAIN_ACL_CHECK_RCPT = acl_check_rcpt\n.endif\n\
         acl_smtp_rcpt = MAIN_ACL_CHECK_RCPT\n",
    );
    c.push_str("\nbegin acl\n\n");
    if o.policy.is_some() {
        c.push_str(&format!(".include {}\n\n", shipped_acl().display()));
    }
    // The gist of Debian's acl_check_rcpt: local submissions and relay hosts go,
    // other clients only to local domains and existing recipients.
    c.push_str(&format!(
        "acl_check_rcpt:\n\
         \x20 accept hosts = :\n\
         \x20 accept hosts = +relay_from_hosts\n\
         \x20 require message = relay not permitted\n\
         \x20         domains = +local_domains : +relay_to_domains\n\
         \x20 require verify = recipient\n\
         \x20 accept\n\
         \n\
         begin routers\n\
         \n\
         known:\n\
         \x20 driver = accept\n\
         \x20 domains = +local_domains\n\
         \x20 local_parts = {boxes}\n\
         \x20 transport = devnull\n\
         \x20 cannot_route_message = Unknown user\n\
         \n\
         begin transports\n\
         \n\
         devnull:\n\
         \x20 driver = appendfile\n\
         \x20 file = /dev/null\n\
         \x20 user = mail\n"
    ));
    c
}
