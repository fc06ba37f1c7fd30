//! The gRPC channel to the limiters: a fixed list, or every address a DNS name resolves
//! to (re-resolved periodically), balanced by tonic (power of two choices).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

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

/// `name:port` for DNS discovery.
pub fn parse_dns_target(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("limiter.dns: {s:?} needs a port (name:port)"))?;
    let port = port
        .parse()
        .map_err(|_| format!("limiter.dns: {port:?} is not a port"))?;
    if name.is_empty() {
        return Err(format!("limiter.dns: {s:?} has no name"));
    }
    Ok((name.to_string(), port))
}

fn endpoint(uri: &str, connect_timeout: Duration) -> Result<Endpoint, String> {
    let uri = if uri.contains("://") {
        uri.to_string()
    } else {
        format!("http://{uri}")
    };
    Ok(Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("limiter endpoint {uri:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// Builds the channel; for DNS targets, spawns the task that keeps the endpoint set
/// current. Calls wait for an endpoint only up to their deadline.
pub fn connect(targets: &Targets, connect_timeout: Duration) -> Result<Channel, String> {
    let (channel, tx) = Channel::balance_channel::<String>(64);
    match targets {
        Targets::List(uris) => {
            for u in uris {
                let ep = endpoint(u, connect_timeout)?;
                tx.try_send(Change::Insert(u.clone(), ep))
                    .map_err(|e| e.to_string())?;
            }
            // The sender must outlive the channel or the balancer sees the endpoints go.
            tokio::spawn(async move {
                tx.closed().await;
            });
        }
        Targets::Dns {
            name,
            port,
            servers,
            every,
        } => {
            let resolver = resolver(servers)?;
            let (name, port, every) = (name.clone(), *port, *every);
            tokio::spawn(async move {
                let mut current: HashSet<IpAddr> = HashSet::new();
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
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
                    for ip in found.difference(&current) {
                        let uri = format!("http://{}", SocketAddr::new(*ip, port));
                        match endpoint(&uri, connect_timeout) {
                            Ok(ep) => {
                                tracing::info!(endpoint = %uri, "limiter discovered");
                                if tx.send(Change::Insert(ip.to_string(), ep)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                    for ip in current.difference(&found) {
                        tracing::info!(address = %ip, "limiter gone from DNS");
                        if tx.send(Change::Remove(ip.to_string())).await.is_err() {
                            return;
                        }
                    }
                    current = found;
                }
            });
        }
    }
    Ok(channel)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_targets_need_a_port() {
        assert_eq!(
            parse_dns_target("lim.svc:7525").unwrap(),
            ("lim.svc".to_string(), 7525)
        );
        assert!(
            parse_dns_target("lim.svc")
                .unwrap_err()
                .contains("needs a port")
        );
        assert!(parse_dns_target(":7525").is_err());
    }
}
