//! Reloading rules without a restart: on SIGHUP, and when a file changes (polled, so
//! that it also sees Kubernetes ConfigMap updates, which swap a symlink). A file that
//! does not load is refused with its errors and the old rules stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{Policy, PolicyError};

/// Where the policy comes from.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    pub policy_file: Option<PathBuf>,
    pub access_files: Vec<PathBuf>,
}

impl PolicySource {
    pub fn load(&self) -> Result<Policy, PolicyError> {
        Policy::load(self.policy_file.as_deref(), &self.access_files)
    }
}

/// The policy in force, swapped whole on reload.
#[derive(Debug)]
pub struct PolicyHandle {
    current: ArcSwap<Policy>,
    source: PolicySource,
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
    /// Bumped after each policy put in force, so that what was derived from an older
    /// one (held refusals) can tell.
    generation: AtomicU64,
}

/// What tells cheaply that a watched file changed: its modification time and size;
/// None while it is missing.
pub type FileStamp = Option<(SystemTime, u64)>;

/// The stamp of one file. `metadata` follows symlinks, so a Kubernetes ConfigMap or
/// Secret update (a swapped `..data` link) is a change.
pub fn file_stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

impl PolicyHandle {
    /// Loads the policy for the first time; an error here stops the server.
    pub fn open(source: PolicySource) -> Result<PolicyHandle, PolicyError> {
        let policy = source.load()?;
        log_loaded(&policy, "rules loaded");
        Ok(PolicyHandle::with(policy, source))
    }

    /// A handle on a policy built in code (tests, embedded use); it reloads nothing.
    pub fn fixed(policy: Policy) -> PolicyHandle {
        PolicyHandle::with(policy, PolicySource::default())
    }

    fn with(policy: Policy, source: PolicySource) -> PolicyHandle {
        PolicyHandle {
            current: ArcSwap::from_pointee(policy),
            source,
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The policy in force. Callers keep the `Arc` for one decision, so a reload in
    /// the middle of it changes nothing for that decision.
    pub fn get(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Replaces the policy (tests and embedded use).
    pub fn set(&self, policy: Policy) {
        self.current.store(Arc::new(policy));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many policies were put in force after the first. Read it before
    /// [`PolicyHandle::get`]: the policy got is then at least that new.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Reads the files again; on success the new rules are in force, on failure the
    /// old ones stay and the error says what is wrong where.
    pub fn reload(&self) -> Result<Arc<Policy>, PolicyError> {
        match self.source.load() {
            Ok(p) => {
                log_loaded(&p, "rules reloaded");
                let p = Arc::new(p);
                self.current.store(p.clone());
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::RULE_RELOADS, "result" => "ok").increment(1);
                Ok(p)
            }
            Err(e) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::RULE_RELOADS, "result" => "error").increment(1);
                tracing::error!(error = %e, "rules not reloaded; the previous rules stay in force");
                Err(e)
            }
        }
    }

    fn fingerprint(&self) -> Vec<FileStamp> {
        let mut files = self.get().files.clone();
        if files.is_empty() {
            files.extend(self.source.policy_file.clone());
            files.extend(self.source.access_files.iter().cloned());
        }
        files.iter().map(|f| file_stamp(f)).collect()
    }

    /// Reloads on SIGHUP and whenever a file's modification time or size changes,
    /// checked every `interval`, until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; rules reload on file change only");
                None
            }
        };
        let mut seen = self.fingerprint();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let by_signal = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = self.fingerprint();
            if by_signal || now != seen {
                if by_signal {
                    tracing::info!("SIGHUP: reloading rules");
                }
                // Remember the files as they are now even when they fail to load, so a
                // broken file is reported once, not on every tick.
                let _ = self.reload();
                seen = self.fingerprint();
            }
        }
    }
}

fn log_loaded(p: &Policy, msg: &str) {
    for w in &p.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        entries = p.entry_count,
        files = p.files.len(),
        shadow = p.settings.shadow,
        "{msg}"
    );
}
