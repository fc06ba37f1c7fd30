//! A private systemd-journald (Debian's `systemd`): in a mount namespace of its own,
//! with a tmpfs on /run, its sockets and its journal are directories of this
//! instance. Programs log to it through [`Journald::dev_log`], and journalctl reads
//! it with `--directory` [`Journald::directory`]. Nothing of the system's journal
//! is touched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require;

const JOURNALD: &str = "/lib/systemd/systemd-journald";

pub struct Journald {
    child: Child,
    dir: tempfile::TempDir,
}

impl Journald {
    pub fn start() -> Journald {
        require("unshare", "util-linux");
        require("journalctl", "systemd");
        assert!(
            Path::new(JOURNALD).is_file(),
            "{JOURNALD} is missing: install systemd (scripts/test does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mxlimit-journald-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["sock", "journal"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal /run/log/journal && \
             mount --bind {d}/sock /run/systemd/journal && mount --bind {d}/journal /run/log/journal && \
             exec {JOURNALD}",
            d = d.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr")).unwrap())
            .process_group(0)
            .spawn()
            .expect("start systemd-journald");
        let j = Journald { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !j.dev_log().exists() {
            assert!(
                Instant::now() < deadline,
                "systemd-journald did not start: {}",
                std::fs::read_to_string(j.dir.path().join("stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        j
    }

    /// The syslog socket (`/dev/log` for the programs that log here).
    pub fn dev_log(&self) -> PathBuf {
        self.dir.path().join("sock/dev-log")
    }

    /// The journal's directory, for `journalctl --directory`.
    pub fn directory(&self) -> PathBuf {
        self.dir.path().join("journal")
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
