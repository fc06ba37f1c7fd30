//! Verified reverse names for host and domain rules: PTR, then forward-confirmed
//! (the name must resolve back to the address), cached.
//!
//! A decision waits at most `dns.deadline` for a name. A lookup that takes longer goes
//! on in the background and fills the cache for the next session of that client; a
//! failed or unconfirmed lookup means "no name". No decision ever stalls on DNS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::watch;

use crate::policy::parse_dns_server;
use crate::policy::settings::DnsSettings;

type Name = Option<Arc<str>>;

struct Cached {
    name: Name,
    until: Instant,
}

struct Inner {
    settings: DnsSettings,
    resolver: Option<TokioResolver>,
    cache: Mutex<HashMap<IpAddr, Cached>>,
    /// Lookups under way, so that a burst from one client costs one lookup.
    pending: Mutex<HashMap<IpAddr, watch::Receiver<Option<Name>>>>,
}

/// Reverse-name lookups, rebuilt when the DNS settings change on reload.
#[derive(Default)]
pub struct NameResolver {
    inner: Mutex<Option<Arc<Inner>>>,
}

impl NameResolver {
    fn inner(&self, settings: &DnsSettings) -> Arc<Inner> {
        let mut slot = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slot.as_ref()
            && i.settings == *settings
        {
            return i.clone();
        }
        let resolver = match build_resolver(settings) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "no DNS resolver; host and domain rules match only names callers send");
                None
            }
        };
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            resolver,
            cache: Mutex::default(),
            pending: Mutex::default(),
        });
        *slot = Some(inner.clone());
        inner
    }

    /// The verified name of `ip`, if known within the deadline.
    pub async fn name(&self, ip: IpAddr, settings: &DnsSettings) -> Name {
        let inner = self.inner(settings);
        if let Some(hit) = inner.cached(ip) {
            return hit;
        }
        let mut rx = inner.clone().start(ip)?;
        let deadline = settings.deadline.0;
        match tokio::time::timeout(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone().flatten(),
            _ => None,
        }
    }
}

impl Inner {
    fn cached(&self, ip: IpAddr) -> Option<Name> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&ip)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.name.clone())
    }

    /// Starts (or joins) the lookup of `ip`; `None` when there is no resolver.
    fn start(self: Arc<Self>, ip: IpAddr) -> Option<watch::Receiver<Option<Name>>> {
        let resolver = self.resolver.clone()?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = pending.get(&ip) {
            return Some(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        pending.insert(ip, rx.clone());
        drop(pending);
        let timeout = self.settings.timeout.0;
        tokio::spawn(async move {
            let found = tokio::time::timeout(timeout, confirmed_name(&resolver, ip))
                .await
                .unwrap_or(None);
            let (name, ttl) = match found {
                Some((name, valid_for)) => (
                    Some(name),
                    valid_for.clamp(self.settings.min_ttl.0, self.settings.max_ttl.0),
                ),
                None => (None, self.settings.negative_ttl.0),
            };
            self.store(ip, name.clone(), ttl);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ip);
            let _ = tx.send(Some(name));
        });
        Some(rx)
    }

    fn store(&self, ip: IpAddr, name: Name, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.cache_size.max(1) {
            cache.retain(|_, c| c.until > now);
            // Still full: drop an arbitrary quarter rather than grow.
            if cache.len() >= self.settings.cache_size.max(1) {
                let drop_n = cache.len() / 4 + 1;
                let victims: Vec<IpAddr> = cache.keys().take(drop_n).copied().collect();
                for v in victims {
                    cache.remove(&v);
                }
            }
        }
        cache.insert(
            ip,
            Cached {
                name,
                until: now + ttl,
            },
        );
    }
}

/// PTR names of `ip` that resolve back to `ip`; the first one wins.
async fn confirmed_name(resolver: &TokioResolver, ip: IpAddr) -> Option<(Arc<str>, Duration)> {
    let ptr = resolver.reverse_lookup(ip).await.ok()?;
    let valid_for = ptr.valid_until().saturating_duration_since(Instant::now());
    let names: Vec<String> = ptr
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .take(4)
        .collect();
    for name in names {
        let Ok(fwd) = resolver.lookup_ip(name.as_str()).await else {
            continue;
        };
        if fwd.iter().any(|a| crate::source::canonical(a) == ip) {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            return Some((
                name.into(),
                valid_for.min(fwd.valid_until().saturating_duration_since(Instant::now())),
            ));
        }
    }
    None
}

fn build_resolver(s: &DnsSettings) -> Result<TokioResolver, String> {
    let mut builder = if s.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let servers: Vec<NameServerConfig> = s
            .servers
            .iter()
            .filter_map(|t| parse_dns_server(t))
            .map(|addr: SocketAddr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    // Keep resolv.conf's options (ndots, search ...); only the time limits are ours.
    let opts = builder.options_mut();
    opts.timeout = s.timeout.0;
    opts.attempts = 1;
    builder.build().map_err(|e| e.to_string())
}
