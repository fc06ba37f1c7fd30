//! Where an adapter listens: TCP or a Unix socket, written the way MTAs write them.
//!
//! `inet:127.0.0.1:7000` (Postfix), `inet:7000@127.0.0.1` (sendmail), `127.0.0.1:7000`,
//! `[::1]:7000`, `unix:/run/mxlimit/milter.sock` or `local:/run/...` (sendmail).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_prefix("unix:").or_else(|| t.strip_prefix("local:")) {
            return unix(p, s);
        }
        if t.starts_with('/') {
            return unix(t, s);
        }
        let t = t
            .strip_prefix("inet6:")
            .or_else(|| t.strip_prefix("inet:"))
            .unwrap_or(t);
        // sendmail writes port@host.
        if let Some((port, host)) = t.split_once('@') {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ip = host
                .parse()
                .map_err(|_| format!("{s:?}: {host:?} is not an IP address"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)));
        }
        t.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not a listen address (inet:HOST:PORT, inet:PORT@HOST or unix:/path)")
        })
    }
}

impl ListenAddr {
    /// A TCP address that others than this host can reach (not loopback).
    pub fn beyond_loopback(&self) -> bool {
        matches!(self, ListenAddr::Tcp(a) if !a.ip().is_loopback())
    }
}

fn unix(p: &str, orig: &str) -> Result<ListenAddr, String> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(format!("{orig:?}: a Unix socket needs an absolute path"));
    }
    Ok(ListenAddr::Unix(PathBuf::from(p)))
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "inet:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// One accepted connection, either kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

impl Listener {
    /// Binds; a stale Unix socket file (left by a crash) is replaced.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::Unix(p) => {
                remove_stale(p)?;
                Ok(Listener::Unix(
                    UnixListener::bind(p)?,
                    SocketFile(p.clone()),
                ))
            }
        }
    }

    pub async fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Listener::Unix(l, _) => Box::new(l.accept().await?.0),
        })
    }

    /// The address actually bound (for port 0).
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Tcp(l) => ListenAddr::Tcp(l.local_addr().expect("bound socket")),
            Listener::Unix(_, f) => ListenAddr::Unix(f.0.clone()),
        }
    }
}

/// A Unix socket's file, removed when the listener goes.
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn remove_stale(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => {
            // A live server answers; refuse to steal its socket.
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use", p.display()),
                ));
            }
            std::fs::remove_file(p)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", p.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_mtas_write() {
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
        assert_eq!("inet:127.0.0.1:7000".parse(), Ok(tcp("127.0.0.1:7000")));
        assert_eq!("inet:7000@127.0.0.1".parse(), Ok(tcp("127.0.0.1:7000")));
        assert_eq!("inet6:7000@[::1]".parse(), Ok(tcp("[::1]:7000")));
        assert_eq!("127.0.0.1:7000".parse(), Ok(tcp("127.0.0.1:7000")));
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(ListenAddr::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            "local:/run/m.sock".parse(),
            Ok(ListenAddr::Unix("/run/m.sock".into()))
        );
        assert!(
            "unix:relative"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("absolute path")
        );
        assert!(
            "inet:nohost"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("not a listen address")
        );
    }

    #[test]
    fn only_loopback_and_unix_sockets_stay_on_the_host() {
        for (a, beyond) in [
            ("inet:127.0.0.1:7000", false),
            ("inet:7000@[::1]", false),
            ("unix:/run/mxlimit/milter.sock", false),
            ("inet:0.0.0.0:7000", true),
            ("inet:[::]:7000", true),
            ("inet:7000@192.0.2.10", true),
        ] {
            let addr: ListenAddr = a.parse().unwrap();
            assert_eq!(addr.beyond_loopback(), beyond, "{a}");
        }
    }
}
