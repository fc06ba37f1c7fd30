//! A socketmap responder for the cluster-wide ban list, so that sendmail's access map
//! and Postfix's `check_client_access socketmap:` refuse banned sources themselves,
//! even before a milter is asked.
//!
//! Requests are netstrings `<name> <key>`; keys are a client address, optionally with
//! sendmail's `Connect:` tag. A refused source answers `OK <action>` in the caller's
//! syntax (sendmail `ERROR:4.7.1:421 text`, Postfix `421 4.7.1 text`); anything else
//! is `NOTFOUND` so that the MTA's own rules go on. Names and prefixes are never found.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{refuses, smtp_reply};
use crate::limiter::Limiter;
use crate::listen::{Listener, Stream};

/// This adapter's name in metrics.
const ADAPTER: &str = "socketmap";

/// Postfix's limit for a socketmap request.
const MAX_NETSTRING: usize = 100_000;
const CONNECTION_IDLE: Duration = Duration::from_secs(600);

pub struct Socketmap {
    limiter: Arc<Limiter>,
}

impl Socketmap {
    pub fn new(limiter: Arc<Limiter>) -> Arc<Socketmap> {
        Arc::new(Socketmap { limiter })
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        max_sessions: usize,
        shutdown: impl Future<Output = ()>,
    ) {
        super::accept::serve(ADAPTER, listener, max_sessions, shutdown, move |stream| {
            let me = self.clone();
            async move { me.connection(stream).await }
        })
        .await
    }

    async fn connection(&self, stream: Box<dyn Stream>) -> std::io::Result<()> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        // An MTA keeps its socketmap connection while it has lookups; an idle one goes.
        while let Ok(next) = tokio::time::timeout(CONNECTION_IDLE, read_netstring(&mut r)).await {
            let Some(req) = next? else { break };
            let answer = match std::str::from_utf8(&req) {
                Ok(text) => self.answer(text).await,
                Err(_) => "PERM request is not UTF-8".to_string(),
            };
            write_netstring(&mut w, answer.as_bytes()).await?;
        }
        Ok(())
    }

    /// The answer to `<name> <key>`.
    pub async fn answer(&self, request: &str) -> String {
        let Some((_name, key)) = request.split_once(' ') else {
            return "PERM expected \"name key\"".into();
        };
        let (sendmail, addr) = match mxlimit_core::source::strip_prefix_ci(key, "connect:") {
            Some(rest) => (true, rest),
            None => (false, key),
        };
        let Some(ip) = mxlimit_core::source::parse_client_ip(addr) else {
            return "NOTFOUND ".into();
        };
        match self.limiter.lookup(ip, None).await {
            None => "TEMP limiter unavailable".into(),
            Some(v) if !refuses(&v) => "NOTFOUND ".into(),
            Some(v) => {
                let (code, enhanced, text) = smtp_reply(&v);
                let text = text.replace(['\r', '\n'], " ");
                if sendmail {
                    format!("OK ERROR:{enhanced}:{code} {text}")
                } else {
                    format!("OK {code} {enhanced} {text}")
                }
            }
        }
    }
}

/// Reads `<len>:<bytes>,`; `None` at a clean end of stream.
pub async fn read_netstring<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = 0usize;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if digits == 0 {
                Ok(None)
            } else {
                Err(bad("truncated length"))
            };
        }
        match b[0] {
            b'0'..=b'9' if digits < 7 => {
                len = len * 10 + usize::from(b[0] - b'0');
                digits += 1;
            }
            b':' if digits > 0 => break,
            _ => return Err(bad("not a netstring")),
        }
    }
    if len > MAX_NETSTRING {
        return Err(bad("netstring too long"));
    }
    let mut buf = vec![0; len + 1];
    r.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("truncated netstring"),
        _ => e,
    })?;
    if buf.pop() != Some(b',') {
        return Err(bad("netstring without its comma"));
    }
    Ok(Some(buf))
}

pub async fn write_netstring<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    let mut out = format!("{}:", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.push(b',');
    w.write_all(&out).await?;
    w.flush().await
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn netstrings_round_trip_and_garbage_is_an_error() {
        let mut out = Vec::new();
        write_netstring(&mut out, b"access Connect:1.2.3.4")
            .await
            .unwrap();
        assert_eq!(out, b"22:access Connect:1.2.3.4,");
        let mut r = BufReader::new(&out[..]);
        assert_eq!(
            read_netstring(&mut r).await.unwrap().unwrap(),
            b"access Connect:1.2.3.4"
        );
        assert_eq!(read_netstring(&mut r).await.unwrap(), None);
        for garbage in [&b"x:abc,"[..], b"3:abcd", b"99999999:", b"5:ab"] {
            let mut r = BufReader::new(garbage);
            assert!(read_netstring(&mut r).await.is_err(), "{garbage:?}");
        }
    }
}
