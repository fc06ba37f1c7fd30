//! A milter client, playing the MTA's side of the protocol (v6) the way sendmail and
//! Postfix do, for driving a milter directly and timing its steps.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the milter answered to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    /// A custom reply: `421 4.3.2 Connection rate limit exceeded.`
    Code(String),
    Other(u8),
}

impl Reply {
    /// The SMTP code of a custom reply.
    pub fn code(&self) -> Option<u32> {
        match self {
            Reply::Code(t) => t.get(..3).and_then(|c| c.parse().ok()),
            _ => None,
        }
    }
}

pub struct MilterClient {
    s: TcpStream,
    /// The protocol options the milter asked for.
    pub opts: u32,
}

/// The MTA offers everything of protocol v6, as Postfix 3.7 does.
const OFFER_ACTIONS: u32 = 0x1ff;
const OFFER_OPTS: u32 = 0x1f_ffff;
pub const RCPT_REJ: u32 = 0x800;

impl MilterClient {
    /// Connects and negotiates.
    pub async fn open(addr: SocketAddr) -> std::io::Result<MilterClient> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut c = MilterClient { s, opts: 0 };
        let mut p = Vec::new();
        p.extend(6u32.to_be_bytes());
        p.extend(OFFER_ACTIONS.to_be_bytes());
        p.extend(OFFER_OPTS.to_be_bytes());
        c.send(b'O', &p).await?;
        let (cmd, data) = c.recv().await?;
        assert_eq!(cmd, b'O', "negotiation reply");
        c.opts = u32::from_be_bytes(data[8..12].try_into().unwrap());
        Ok(c)
    }

    async fn send(&mut self, cmd: u8, data: &[u8]) -> std::io::Result<()> {
        let mut p = Vec::with_capacity(5 + data.len());
        p.extend(((data.len() + 1) as u32).to_be_bytes());
        p.push(cmd);
        p.extend_from_slice(data);
        self.s.write_all(&p).await
    }

    async fn recv(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        loop {
            let len = self.s.read_u32().await? as usize;
            let mut buf = vec![0; len];
            self.s.read_exact(&mut buf).await?;
            let cmd = buf.remove(0);
            // "progress" says the milter is still working (a delay); the answer follows.
            if cmd != b'p' {
                return Ok((cmd, buf));
            }
        }
    }

    async fn answer(&mut self) -> std::io::Result<Reply> {
        let (cmd, data) = self.recv().await?;
        Ok(match cmd {
            b'c' => Reply::Continue,
            b'a' => Reply::Accept,
            b'r' => Reply::Reject,
            b't' => Reply::Tempfail,
            b'y' => Reply::Code(
                String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(&data)).into_owned(),
            ),
            other => Reply::Other(other),
        })
    }

    async fn macros(&mut self, stage: u8, macros: &[(&str, &str)]) -> std::io::Result<()> {
        let mut p = vec![stage];
        for (k, v) in macros {
            p.extend(k.as_bytes());
            p.push(0);
            p.extend(v.as_bytes());
            p.push(0);
        }
        self.send(b'D', &p).await
    }

    pub async fn connect(
        &mut self,
        host: &str,
        ip: IpAddr,
        macros: &[(&str, &str)],
    ) -> std::io::Result<Reply> {
        let family = if ip.is_ipv4() { b'4' } else { b'6' };
        self.connect_as(host, family, Some(&ip.to_string()), macros)
            .await
    }

    /// A connect with the family byte and address text as given, the way an MTA may
    /// write them (`6` and `IPv6:2001:db8::1` from sendmail, `L` and a socket path, `U`
    /// and nothing).
    pub async fn connect_as(
        &mut self,
        host: &str,
        family: u8,
        addr: Option<&str>,
        macros: &[(&str, &str)],
    ) -> std::io::Result<Reply> {
        self.macros(b'C', macros).await?;
        let mut p = host.as_bytes().to_vec();
        p.push(0);
        p.push(family);
        if let Some(a) = addr {
            p.extend(if family == b'L' { 0u16 } else { 25000u16 }.to_be_bytes());
            p.extend(a.as_bytes());
            p.push(0);
        }
        self.send(b'C', &p).await?;
        self.answer().await
    }

    pub async fn mail(&mut self, from: &str) -> std::io::Result<Reply> {
        self.macros(b'M', &[("i", "ABC123")]).await?;
        let mut p = format!("<{from}>").into_bytes();
        p.push(0);
        self.send(b'M', &p).await?;
        self.answer().await
    }

    /// A recipient the MTA accepted.
    pub async fn rcpt(&mut self, to: &str) -> std::io::Result<Reply> {
        self.rcpt_with(
            to,
            &[
                ("{rcpt_mailer}", "virtual"),
                ("{rcpt_host}", ""),
                ("{rcpt_addr}", to),
            ],
        )
        .await
    }

    /// A recipient the MTA rejected as unknown (sent because of `SMFIP_RCPT_REJ`).
    pub async fn rejected_rcpt(&mut self, to: &str) -> std::io::Result<Reply> {
        self.rcpt_with(
            to,
            &[
                ("{rcpt_mailer}", "error"),
                ("{rcpt_host}", "5.1.1"),
                ("{rcpt_addr}", "User unknown"),
            ],
        )
        .await
    }

    pub async fn rcpt_with(&mut self, to: &str, macros: &[(&str, &str)]) -> std::io::Result<Reply> {
        self.macros(b'R', macros).await?;
        let mut p = format!("<{to}>").into_bytes();
        p.push(0);
        self.send(b'R', &p).await?;
        self.answer().await
    }

    pub async fn data(&mut self) -> std::io::Result<Reply> {
        self.send(b'T', &[]).await?;
        self.answer().await
    }

    /// Ends the SMTP session (the milter's close callback runs).
    pub async fn quit(mut self) -> std::io::Result<()> {
        self.send(b'Q', &[]).await?;
        // The milter closes its side after QUIT.
        let mut rest = Vec::new();
        let _ = self.s.read_to_end(&mut rest).await;
        Ok(())
    }

    /// Raw bytes, for protocol-garbage tests.
    pub async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// Whether the milter closed the connection (reads until EOF).
    pub async fn closed(mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.s.read_to_end(&mut rest)
            )
            .await,
            Ok(Ok(_))
        )
    }
}
