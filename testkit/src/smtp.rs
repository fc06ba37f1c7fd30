//! An SMTP client that connects from any 127.x.y.z source address (Linux lets any
//! loopback address be bound) or any address of an IPv6 /64 routed on lo
//! ([`crate::ipv6`]), so that one machine plays many clients and networks.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

/// One SMTP reply, with how long the server took to give it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u32,
    pub text: String,
    pub took: Duration,
}

pub struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects from `source` and reads the greeting.
    pub async fn connect(source: IpAddr, server: SocketAddr) -> std::io::Result<(Smtp, Reply)> {
        Smtp::connect_saying(source, server, None).await
    }

    /// Connects from `source` and, as ratware does, talks at once: sends `line` before
    /// the greeting comes, then reads the greeting (and `line`'s reply, if the server
    /// answers it, stays unread).
    pub async fn connect_talking_first(
        source: IpAddr,
        server: SocketAddr,
        line: &str,
    ) -> std::io::Result<(Smtp, Reply)> {
        Smtp::connect_saying(source, server, Some(line)).await
    }

    async fn connect_saying(
        source: IpAddr,
        server: SocketAddr,
        first: Option<&str>,
    ) -> std::io::Result<(Smtp, Reply)> {
        let sock = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            // Any address of a /64 routed on lo (crate::ipv6), without adding each.
            let s = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.set_freebind_v6(true)?;
            s.set_nonblocking(true)?;
            TcpSocket::from_std_stream(s.into())
        };
        sock.bind(SocketAddr::new(source, 0))?;
        let t = Instant::now();
        let mut s = sock.connect(server).await?;
        s.set_nodelay(true)?;
        if let Some(line) = first {
            s.write_all(format!("{line}\r\n").as_bytes()).await?;
        }
        let mut c = Smtp {
            r: BufReader::new(s),
        };
        let mut greeting = c.read_reply().await?;
        greeting.took = t.elapsed();
        Ok((c, greeting))
    }

    async fn read_reply(&mut self) -> std::io::Result<Reply> {
        let t = Instant::now();
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                return Ok(Reply {
                    code: 0,
                    text: format!("{text}(connection closed)"),
                    took: t.elapsed(),
                });
            }
            let more = line.as_bytes().get(3) == Some(&b'-');
            text.push_str(line.trim_end());
            text.push('\n');
            if !more {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok(Reply {
                    code,
                    text,
                    took: t.elapsed(),
                });
            }
        }
    }

    /// Sends one command line and reads its reply. A server that has closed the
    /// connection answers `code 0`, whether the close shows as an end of stream or,
    /// racing with our write, as a reset.
    pub async fn cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        let t = Instant::now();
        let r = async {
            self.r
                .get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await?;
            self.read_reply().await
        }
        .await;
        let mut r = match r {
            Err(e) if closed(&e) => Reply {
                code: 0,
                text: format!("(connection closed: {e})"),
                took: Duration::ZERO,
            },
            r => r?,
        };
        r.took = t.elapsed();
        Ok(r)
    }

    /// DATA, a small message, and the final dot.
    pub async fn message(&mut self, from: &str, to: &str) -> std::io::Result<Reply> {
        let r = self.cmd("DATA").await?;
        if r.code != 354 {
            return Ok(r);
        }
        self.cmd(&format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: mxlimit test\r\n\r\nhello\r\n."
        ))
        .await
    }
}
