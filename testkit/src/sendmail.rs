//! A private sendmail daemon (Debian's `sendmail-bin`, unpacked privately because it
//! conflicts with Postfix as a package): its own `.cf` built with m4 from `sendmail-cf`,
//! its own queue and port on 127.0.0.1, a qualified host name in its own UTS namespace
//! (sendmail otherwise sleeps a minute trying to qualify the machine's name).
//!
//! Of `mx.test`, `root@mx.test` exists; every other recipient gets
//! "550 5.1.1 ... User unknown" at RCPT.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// Where scripts/test unpacks sendmail-bin, unless `MXLIMIT_SENDMAIL` says otherwise.
pub fn sendmail_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MXLIMIT_SENDMAIL") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-deps/sendmail/usr/libexec/sendmail/sendmail");
    assert!(
        p.is_file(),
        "sendmail is not unpacked at {}: run scripts/test (it unpacks Debian's sendmail-bin) or set MXLIMIT_SENDMAIL",
        p.display()
    );
    p
}

#[derive(Debug, Clone, Default)]
pub struct SendmailOptions {
    /// The milter socket in sendmail's syntax, e.g. `inet:7026@127.0.0.1`.
    pub milter: Option<String>,
    /// A socketmap serving the access map, e.g. `inet:7028@127.0.0.1`.
    pub socketmap: Option<String>,
    /// An access file's text (`Connect:192.0.2\tREJECT` ...), made into the hash map
    /// sendmail reads with the package's own `makemap`. Excludes `socketmap`.
    pub access: Option<String>,
    /// Also listen on `[::1]` at the same port, for clients with IPv6 addresses.
    pub ipv6: bool,
    /// docs/MTA.md's wiring, where mail flows while the agent is down: the milter
    /// without `F=` (the tests' default is `F=T`, so that a broken agent shows), and
    /// the socketmap chained before a hash access map (`access`, empty by default) in
    /// a `sequence`, without `-T<TMPF>`.
    pub recommended: bool,
    /// A virtusertable's text (`@mx.test\terror:nouser User unknown`), made into the
    /// hash map `FEATURE(virtusertable)` reads.
    pub virtusertable: Option<String>,
    /// Capture what sendmail logs (it logs only to syslog): in a mount namespace of its
    /// own, `/dev/log` is a socket of this instance, whose messages are written to
    /// [`Sendmail::log`] as rsyslog's traditional format writes them.
    pub log: bool,
    /// Log to this syslog socket instead (a [`crate::journald::Journald`]'s), bound on
    /// `/dev/log` in sendmail's own mount namespace. Excludes `log`.
    pub syslog: Option<PathBuf>,
    /// sendmail's own `FEATURE(greet_pause)`, in milliseconds: a client that talks
    /// before the greeting is refused and logged ("pre-greeting traffic").
    pub greet_pause_ms: Option<u32>,
}

pub struct Sendmail {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// Set to have the log writer reopen the log's name (rsyslog's HUP).
    reopen: Arc<AtomicBool>,
}

impl Sendmail {
    pub fn start(name: &str, opts: &SendmailOptions) -> Sendmail {
        let bin = sendmail_binary();
        require("m4", "m4");
        require("unshare", "util-linux");
        assert!(
            Path::new("/usr/share/sendmail/cf/m4/cf.m4").is_file(),
            "sendmail-cf is not installed: run scripts/test"
        );
        let dir = tempfile::Builder::new()
            .prefix("mxlimit-sendmail-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("queue")).unwrap();
        std::fs::write(d.join("service.switch"), "hosts files\naliases files\n").unwrap();
        std::fs::write(d.join("helpfile"), "").unwrap();
        assert!(
            opts.recommended || opts.access.is_none() || opts.socketmap.is_none(),
            "one access map: a file or a socketmap (or both in a sequence: recommended)"
        );
        let reopen = Arc::new(AtomicBool::new(false));
        for attempt in 0..5 {
            let port = free_port();
            let mc = mc(d, name, port, opts);
            std::fs::write(d.join("sendmail.mc"), &mc).unwrap();
            let out = Command::new("m4")
                .arg(d.join("sendmail.mc"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "m4: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(d.join("sendmail.cf"), out.stdout).unwrap();
            if let Some(text) = &opts.access {
                make_map(&bin, d, "access", text);
            } else if opts.recommended {
                make_map(&bin, d, "access", "");
            }
            if let Some(text) = &opts.virtusertable {
                make_map(&bin, d, "virtusertable", text);
            }
            let mut unshare = vec!["--uts"];
            let mut script = String::new();
            if opts.log && attempt == 0 {
                syslog_socket(&d.join("log.sock"), d.join("maillog"), reopen.clone());
            }
            assert!(
                !(opts.log && opts.syslog.is_some()),
                "one log: ours or a socket"
            );
            let sock = if opts.log {
                Some(d.join("log.sock"))
            } else {
                opts.syslog.clone()
            };
            if let Some(sock) = sock {
                ensure_dev_log();
                unshare.extend(["--mount", "--propagation", "private"]);
                script.push_str(&format!("mount --bind {} /dev/log && ", sock.display()));
            }
            script.push_str(&format!(
                "hostname {name}.mx.test && exec {bin} -C {cf} -bD -O LogLevel=9",
                bin = bin.display(),
                cf = d.join("sendmail.cf").display()
            ));
            let mut child = Command::new("unshare")
                .args(&unshare)
                .args(["sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("stderr")).unwrap())
                .process_group(0)
                .spawn()
                .expect("start sendmail");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    let err = std::fs::read_to_string(d.join("stderr")).unwrap_or_default();
                    assert!(
                        attempt < 4 && err.contains("in use"),
                        "sendmail exited ({st}): {err}"
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sendmail {
                        port,
                        child,
                        log: d.join("maillog"),
                        reopen,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "sendmail did not listen within 20s"
                );
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
}

/// What sendmail logged so far (with [`SendmailOptions::log`]).
impl Sendmail {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file [`Sendmail::log`] reads, written as sendmail logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// logrotate's default rotation as rsyslog lives it: the log renamed to `to` and a
    /// new, empty one made (`create`), while the writer goes on appending to the
    /// renamed file until [`Sendmail::reopen_log`] (postrotate's HUP).
    pub fn rotate_log(&self, to: &Path) {
        std::fs::rename(&self.log, to).unwrap();
        std::fs::File::create(&self.log).unwrap();
    }

    /// rsyslog's HUP: messages from the next on go to the file under the log's name.
    pub fn reopen_log(&self) {
        self.reopen.store(true, Ordering::SeqCst);
    }

    /// logrotate's `copytruncate`: the log copied to `to`, then cut to nothing in
    /// place; the writer (appending) goes on at its new end.
    pub fn copytruncate_log(&self, to: &Path) {
        std::fs::copy(&self.log, to).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.log)
            .unwrap();
    }
}

/// A syslog socket at `sock` whose messages are appended to `file` as rsyslog's
/// traditional file format writes them: `Mmm dd hh:mm:ss host tag[pid]: message`.
/// glibc's syslog(3) sends `<PRI>Mmm dd hh:mm:ss tag[pid]: message`; the host goes
/// after the time stamp.
fn syslog_socket(sock: &Path, file: PathBuf, reopen: Arc<AtomicBool>) {
    ensure_dev_log();
    let socket = std::os::unix::net::UnixDatagram::bind(sock).expect("syslog socket");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .expect("log file");
        while let Ok(n) = socket.recv(&mut buf) {
            if reopen.swap(false, Ordering::SeqCst) {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)
                {
                    Ok(f) => out = f,
                    Err(_) => return,
                }
            }
            let msg = String::from_utf8_lossy(&buf[..n]);
            let msg = msg.trim_end_matches(['\n', '\0']);
            // Drop `<PRI>`.
            let msg = msg.split_once('>').map_or(msg, |(_, m)| m);
            let line = match (msg.get(..15), msg.get(16..)) {
                (Some(time), Some(rest)) => format!("{time} mx {rest}\n"),
                _ => format!("{msg}\n"),
            };
            if std::io::Write::write_all(&mut out, line.as_bytes()).is_err() {
                return;
            }
        }
    });
}

/// `/dev/log` must exist to be mounted over: where no syslog daemon made it, an empty
/// file is left there (as root; nothing else reads it).
fn ensure_dev_log() {
    if std::fs::symlink_metadata("/dev/log").is_err() {
        std::fs::File::create("/dev/log").expect("create /dev/log (tests run as root)");
    }
}

/// `d/<name>.db` from `text`, by the `makemap` unpacked beside the sendmail binary.
fn make_map(sendmail: &Path, d: &Path, name: &str, text: &str) {
    let makemap = sendmail.with_file_name("makemap");
    // makemap reads the .cf for its TrustedUser; ours, not /etc/mail's.
    let mut child = Command::new(&makemap)
        .arg("-C")
        .arg(d.join("sendmail.cf"))
        .arg("hash")
        .arg(d.join(name))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", makemap.display()));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "makemap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        // The daemon and the children serving sessions share its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// docs/MTA.md's per-RCPT ban check: the client's address looked up in the agent's
/// socketmap before sendmail looks the recipient up, so that a ban bites at the next
/// RCPT even when that recipient is an unknown user (whose rejection a milter cannot
/// turn into a 421).
pub const RCPT_BAN_CHECK: &str = "LOCAL_RULESETS\n\
SLocal_check_rcpt\n\
R$*\t$: < $(mxlimit_bans Connect:$&{client_addr} $: OK $) >\n\
R< ERROR:$-.$-.$-:$+ >\t$#error $@ $1.$2.$3 $: $4\n";

fn mc(d: &Path, name: &str, port: u16, o: &SendmailOptions) -> String {
    let mut mc = format!(
        "divert(-1)\ndivert(0)dnl\n\
         include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n\
         VERSIONID(`mxlimit test {name}')dnl\n\
         OSTYPE(`linux')dnl\n\
         define(`confDOMAIN_NAME', `{name}.mx.test')dnl\n\
         define(`confDONT_PROBE_INTERFACES', `True')dnl\n\
         define(`QUEUE_DIR', `{q}')dnl\n\
         define(`confPID_FILE', `{d}/sendmail.pid')dnl\n\
         define(`STATUS_FILE', `{d}/statistics')dnl\n\
         define(`ALIAS_FILE', `')dnl\n\
         define(`HELP_FILE', `{d}/helpfile')dnl\n\
         define(`confCW_FILE', `')dnl\n\
         define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl\n\
         define(`confDELIVERY_MODE', `queueonly')dnl\n\
         define(`confTO_IDENT', `0')dnl\n\
         define(`confREFUSE_LA', `999')dnl\n\
         define(`confQUEUE_LA', `999')dnl\n\
         define(`confDELAY_LA', `999')dnl\n\
         define(`confPRIVACY_FLAGS', `goaway')dnl\n\
         define(`confMILTER_MACROS_CONNECT', `j, _, {{daemon_name}}, {{client_resolve}}')dnl\n\
         FEATURE(`no_default_msa')dnl\n\
         DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl\n\
         LOCAL_DOMAIN(`mx.test')dnl\n\
         FEATURE(`accept_unresolvable_domains')dnl\n",
        q = d.join("queue").display(),
        d = d.display(),
    );
    if o.ipv6 {
        mc.push_str(&format!(
            "DAEMON_OPTIONS(`Port={port}, Addr=::1, Family=inet6, Name=MTA6')dnl\n"
        ));
    }
    if o.recommended {
        // The member maps must be defined before `access`, hence the divert.
        mc.push_str("define(`confDONT_BLAME_SENDMAIL', `MapInUnsafeDirPath')dnl\n");
        mc.push_str("divert(6)dnl\n");
        if let Some(s) = &o.socketmap {
            // -d1s: a wedged agent costs each lookup 1 s, not sendmail's default 30 s.
            mc.push_str(&format!("Kmxlimit_bans socket -d1s {s}\n"));
        }
        mc.push_str(&format!(
            "Ksite_access hash -o {}\ndivert(0)dnl\n",
            d.join("access").display()
        ));
        let seq = if o.socketmap.is_some() {
            "mxlimit_bans site_access"
        } else {
            "site_access"
        };
        mc.push_str(&format!("FEATURE(`access_db', `sequence {seq}')dnl\n"));
    } else if let Some(s) = &o.socketmap {
        mc.push_str(&format!("FEATURE(`access_db', `socket -T<TMPF> {s}')dnl\n"));
    }
    if o.access.is_some() && !o.recommended {
        // The map lives in a temporary directory under /tmp, which sendmail calls an
        // unsafe path (world writable) and would otherwise refuse to open.
        mc.push_str("define(`confDONT_BLAME_SENDMAIL', `MapInUnsafeDirPath')dnl\n");
        mc.push_str(&format!(
            "FEATURE(`access_db', `hash -T<TMPF> {}')dnl\n",
            d.join("access").display()
        ));
    }
    if let Some(ms) = o.greet_pause_ms {
        mc.push_str(&format!("FEATURE(`greet_pause', `{ms}')dnl\n"));
    }
    if o.virtusertable.is_some() {
        mc.push_str("define(`confDONT_BLAME_SENDMAIL', `MapInUnsafeDirPath')dnl\n");
        mc.push_str(&format!(
            "FEATURE(`virtusertable', `hash -o {}')dnl\n",
            d.join("virtusertable").display()
        ));
    }
    if let Some(m) = &o.milter {
        let flags = if o.recommended { "" } else { "F=T, " };
        mc.push_str(&format!(
            "INPUT_MAIL_FILTER(`mxlimit', `S={m}, {flags}T=C:5s;S:10s;R:10s;E:5m')dnl\n"
        ));
    }
    // Without an alias file the local mailer must not be aliasable, or every local
    // recipient is queued unchecked. Then an unknown user is refused at RCPT by the
    // passwd lookup, which sendmail reports to milters (a rejection by a check_rcpt
    // rule would not be: Debian's sendmail lacks _FFR_MILTER_CHECK_REJECTIONS_TOO).
    mc.push_str("MODIFY_MAILER_FLAGS(`LOCAL', `-A')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n");
    if o.recommended && o.socketmap.is_some() {
        mc.push_str(RCPT_BAN_CHECK);
    }
    mc
}
