//! The agent, assembled: the limiter client with its local fallback, heartbeats, and
//! every adapter on every listen address. `main` and the tests start it the same way.

use std::sync::Arc;

use mxlimit_core::decision::Engine;
use mxlimit_core::policy::reload::{PolicyHandle, PolicySource};
use mxlimit_core::store::memory::{MemoryConfig, MemoryStore};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::{logs, milter, policy::PolicyService, socketmap::Socketmap};
use crate::config::{AgentConfig, LimiterSettings};
use crate::limiter::channel::{self, Targets};
use crate::limiter::tls::ClientTls;
use crate::limiter::{Limiter, LimiterOptions};
use crate::listen::{ListenAddr, Listener};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("fallback policy: {0}")]
    Fallback(#[from] mxlimit_core::policy::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: ListenAddr,
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Agent {
    pub limiter: Arc<Limiter>,
    /// The addresses actually bound, in the order configured.
    pub milter: Vec<ListenAddr>,
    pub policy: Vec<ListenAddr>,
    pub socketmap: Vec<ListenAddr>,
    /// What the log adapter did (all zero without `[logs]`).
    pub logs: Arc<logs::LogStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    pub async fn start(cfg: &AgentConfig) -> Result<Agent, AgentError> {
        cfg.validate().map_err(AgentError::Config)?;
        let node = match &cfg.node {
            Some(n) => n.clone(),
            None => host_name(),
        };
        let channel = limiter_channel(&cfg.limiter)?;
        let (local, local_policy) = local_fallback(cfg)?;
        let l = &cfg.limiter;
        let limiter = Arc::new(Limiter::new(
            channel,
            local,
            LimiterOptions {
                node,
                deadline: l.deadline.0,
                fail: cfg.fallback.mode,
                retry_after: cfg.fallback.retry_after.0,
                hold_max: l.hold_max.0,
                release_every: l.release_every.0,
            },
        ));

        let (stop, stopped) = watch::channel(false);
        let until = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            local_policy.watch(std::time::Duration::from_secs(2), until()),
        ));
        // The first heartbeat announces this process's epoch at once.
        limiter.heartbeat_once().await;
        tasks.push(tokio::spawn(limiter.clone().heartbeats(until())));
        tasks.push(tokio::spawn(limiter.clone().releases(until())));

        let mut agent = Agent {
            limiter: limiter.clone(),
            milter: Vec::new(),
            policy: Vec::new(),
            socketmap: Vec::new(),
            logs: Arc::default(),
            stop,
            tasks,
        };
        agent.serve_adapters(cfg, &until).await?;
        tracing::info!(
            node = limiter.node(),
            epoch = limiter.epoch(),
            "mx-agent running"
        );
        Ok(agent)
    }

    /// Every adapter on every address configured for it, until `until` resolves.
    async fn serve_adapters<F>(
        &mut self,
        cfg: &AgentConfig,
        until: &impl Fn() -> F,
    ) -> Result<(), AgentError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let limiter = &self.limiter;
        for a in &cfg.milter.listen {
            let listener = bind("milter", a).await?;
            self.milter.push(listener.local_addr());
            let (lim, delay, max, stop) = (
                limiter.clone(),
                cfg.milter.max_delay.0,
                cfg.milter.max_sessions,
                until(),
            );
            self.tasks.push(tokio::spawn(async move {
                if let Err(e) = milter::serve(listener, lim, delay, max, stop).await {
                    tracing::error!(error = %e, "milter stopped");
                }
            }));
        }
        let svc = PolicyService::new(limiter.clone(), cfg.policy.max_delay.0);
        for a in &cfg.policy.listen {
            let listener = bind("policy", a).await?;
            self.policy.push(listener.local_addr());
            self.tasks.push(tokio::spawn(svc.clone().serve(
                listener,
                cfg.policy.max_sessions,
                until(),
            )));
        }
        if cfg.logs.any() {
            let l = &cfg.logs;
            let journal = l.journal.then(|| logs::journal::Journal {
                matches: l.journal_match.clone(),
                directory: l.journal_directory.clone(),
                cursor: l.journal_cursor.clone(),
            });
            self.tasks.extend(logs::serve(
                &l.files,
                journal,
                l.poll.0,
                l.queue,
                limiter.clone(),
                self.logs.clone(),
                until(),
            ));
        }
        let map = Socketmap::new(limiter.clone());
        for a in &cfg.socketmap.listen {
            let listener = bind("socketmap", a).await?;
            self.socketmap.push(listener.local_addr());
            self.tasks.push(tokio::spawn(map.clone().serve(
                listener,
                cfg.socketmap.max_sessions,
                until(),
            )));
        }
        Ok(())
    }

    /// Stops the adapters, then releases the leases of sessions still open.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The channel to the limiters: a fixed list or a DNS name, with TLS when configured
/// (or when an endpoint says https: then with the system's roots).
fn limiter_channel(l: &LimiterSettings) -> Result<tonic::transport::Channel, AgentError> {
    let targets = match &l.dns {
        Some(d) => {
            let (name, port) = crate::config::parse_dns_target(d).map_err(AgentError::Config)?;
            let servers = l
                .dns_servers
                .iter()
                .map(|s| {
                    mxlimit_core::policy::parse_dns_server(s).ok_or_else(|| {
                        AgentError::Config(format!(
                            "limiter.dns_servers: {s:?} is not ip or ip:port"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            Targets::Dns {
                name,
                port,
                servers,
                every: l.resolve_every.0,
            }
        }
        None => Targets::List(l.endpoints.clone()),
    };
    let tls = l
        .tls
        .clone()
        .or_else(|| {
            l.endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
                .then(Default::default)
        })
        .map(|settings| ClientTls {
            settings,
            default_domain: match &targets {
                Targets::Dns { name, .. } => Some(name.trim_end_matches('.').to_string()),
                Targets::List(_) => None,
            },
        });
    channel::connect(&targets, l.connect_timeout.0, tls).map_err(AgentError::Config)
}

/// The local fallback: this host's own limits, on the same engine as the limiter's,
/// over an in-memory store; and its policy, to watch for changes.
fn local_fallback(
    cfg: &AgentConfig,
) -> Result<(Engine<Arc<MemoryStore>>, Arc<PolicyHandle>), AgentError> {
    let source = PolicySource {
        policy_file: cfg.fallback.policy.clone(),
        access_files: cfg.fallback.access.clone(),
    };
    let policy = Arc::new(PolicyHandle::open(source)?);
    let store = Arc::new(MemoryStore::new(MemoryConfig::default()));
    store.sweeper(std::time::Duration::from_secs(10));
    // Decides after the limiter's deadline has passed: it must cost CPU time only.
    let engine = Engine::new(store, policy.clone()).without_name_lookups();
    Ok((engine, policy))
}

async fn bind(adapter: &str, a: &str) -> Result<Listener, AgentError> {
    let addr: ListenAddr = a.parse().map_err(AgentError::Config)?;
    if addr.beyond_loopback() {
        // These protocols carry no credentials: whoever reaches the port can ask about
        // any source, and (milter) report recipients that count toward bans.
        tracing::warn!(
            adapter,
            %addr,
            "listening beyond loopback: the {adapter} protocol has no authentication; \
             firewall the port to the MTA's hosts, or use 127.0.0.1 or a Unix socket"
        );
    }
    Listener::bind(&addr)
        .await
        .map_err(|source| AgentError::Listen { addr, source })
}

/// This host's name, for the node id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
