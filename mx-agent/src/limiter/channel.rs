//! The gRPC channel to the limiters: a fixed list, or every address a DNS name resolves
//! to (re-resolved periodically), balanced by tonic (power of two choices).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::tls::ClientTls;

/// Where the limiters are.
#[derive(Debug, Clone)]
pub enum Targets {
    List(Vec<String>),
    Dns {
        name: String,
        port: u16,
        servers: Vec<SocketAddr>,
        every: Duration,
    },
}

fn endpoint(
    uri: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, String> {
    let uri = if uri.contains("://") {
        uri.to_string()
    } else if tls.is_some() {
        format!("https://{uri}")
    } else {
        format!("http://{uri}")
    };
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("limiter endpoint {uri:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        ep = ep
            .tls_config(t.clone())
            .map_err(|e| format!("limiter endpoint {uri:?}: TLS: {e}"))?;
    }
    Ok(ep)
}

/// The TLS configuration in force and the stamp of the files it came from.
struct TlsState {
    files: ClientTls,
    config: ClientTlsConfig,
    stamp: Vec<mxlimit_core::policy::reload::FileStamp>,
}

impl TlsState {
    fn open(files: ClientTls) -> Result<TlsState, String> {
        let stamp = files.stamp();
        let config = files.load()?;
        Ok(TlsState {
            files,
            config,
            stamp,
        })
    }

    /// A new configuration if the files changed and can be used; on an error the one
    /// in force stays (and the error is reported once per change).
    fn reloaded(&mut self) -> Option<ClientTlsConfig> {
        let now = self.files.stamp();
        if now == self.stamp {
            return None;
        }
        self.stamp = now;
        match self.files.load() {
            Ok(c) => {
                tracing::info!("limiter TLS files changed: reconnecting with them");
                self.config = c.clone();
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "limiter TLS files changed but cannot be used; keeping the ones in force");
                None
            }
        }
    }
}

/// Builds the channel; spawns the task that keeps the endpoint set current: DNS
/// discovery re-resolved every `every`, and with TLS the connections remade when the
/// certificate files change. Calls wait for an endpoint only up to their deadline.
pub fn connect(
    targets: &Targets,
    connect_timeout: Duration,
    tls: Option<ClientTls>,
) -> Result<Channel, String> {
    let (channel, tx) = Channel::balance_channel::<String>(64);
    let tls = tls.map(TlsState::open).transpose()?;
    let reload_every = tls
        .as_ref()
        .map(|t| t.files.settings.reload_every.0)
        .unwrap_or(Duration::from_secs(3600));
    match targets {
        Targets::List(uris) => {
            for u in uris {
                let ep = endpoint(u, connect_timeout, tls.as_ref().map(|t| &t.config))?;
                tx.try_send(Change::Insert(u.clone(), ep))
                    .map_err(|e| e.to_string())?;
            }
            // The sender must outlive the channel or the balancer sees the endpoints go.
            tokio::spawn(keep_listed(
                tx,
                uris.clone(),
                tls,
                connect_timeout,
                reload_every,
            ));
        }
        Targets::Dns {
            name,
            port,
            servers,
            every,
        } => {
            let resolver = resolver(servers)?;
            let target = (name.clone(), *port, *every);
            tokio::spawn(keep_discovered(
                tx,
                resolver,
                target,
                tls,
                connect_timeout,
                reload_every,
            ));
        }
    }
    Ok(channel)
}

/// A fixed list of endpoints: remade with the new certificate when the TLS files change.
async fn keep_listed(
    tx: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    uris: Vec<String>,
    mut tls: Option<TlsState>,
    connect_timeout: Duration,
    reload_every: Duration,
) {
    let mut tick = tokio::time::interval(reload_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let Some(config) = tls.as_mut().and_then(TlsState::reloaded) else {
            continue;
        };
        for u in &uris {
            match endpoint(u, connect_timeout, Some(&config)) {
                Ok(ep) => {
                    if tx.send(Change::Insert(u.clone(), ep)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }
}

/// Endpoints found in DNS: re-resolved every `every` (gone addresses removed, new
/// ones added), and all remade when the TLS files change.
async fn keep_discovered(
    tx: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    resolver: TokioResolver,
    (name, port, every): (String, u16, Duration),
    mut tls: Option<TlsState>,
    connect_timeout: Duration,
    reload_every: Duration,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut current: HashSet<IpAddr> = HashSet::new();
    let mut tick = tokio::time::interval(every);
    let mut tls_tick = tokio::time::interval(reload_every);
    tls_tick.tick().await;
    loop {
        // Addresses whose endpoint must be (re)made now.
        let fresh: Vec<IpAddr> = tokio::select! {
            _ = tick.tick() => {
                let found: HashSet<IpAddr> = match resolver.lookup_ip(name.as_str()).await {
                    Ok(l) => l.iter().collect(),
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "limiter discovery: lookup failed; keeping {} endpoint(s)", current.len());
                        continue;
                    }
                };
                if found.is_empty() {
                    continue;
                }
                for ip in current.difference(&found) {
                    tracing::info!(address = %ip, "limiter gone from DNS");
                    if tx.send(Change::Remove(ip.to_string())).await.is_err() {
                        return;
                    }
                }
                let new = found.difference(&current).copied().collect();
                current = found;
                new
            }
            _ = tls_tick.tick() => {
                match tls.as_mut().and_then(TlsState::reloaded) {
                    Some(_) => current.iter().copied().collect(),
                    None => continue,
                }
            }
        };
        for ip in fresh {
            let uri = format!("{scheme}://{}", SocketAddr::new(ip, port));
            match endpoint(&uri, connect_timeout, tls.as_ref().map(|t| &t.config)) {
                Ok(ep) => {
                    tracing::info!(endpoint = %uri, "limiter endpoint (re)made");
                    if tx.send(Change::Insert(ip.to_string(), ep)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }
}

fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let ns = servers
            .iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], ns),
            TokioRuntimeProvider::default(),
        )
    };
    // Keep resolv.conf's options (ndots, search, timeout); but discovery must see a
    // changed Service soon: the resolver's cache must not hide it.
    builder.options_mut().cache_size = 0;
    builder.build().map_err(|e| e.to_string())
}
