//! The milter's connection slots: at most `max_sessions` MTA connections at a time.
//!
//! indymilter waits for a free slot before it accepts, which leaves one connection
//! too many in the kernel's backlog until the MTA's own timeouts fire (sendmail's
//! `T=R`, Postfix's `milter_command_timeout`), and nobody learns of it. Here the
//! connection is accepted and, when every slot is taken, closed at once, counted and
//! warned about: the MTA applies its default for a missing milter right away.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::ADAPTER;
use crate::metrics::{Undecided, undecided};

/// A listener that hands out at most `max` connections at a time.
pub struct Slots<L> {
    inner: L,
    slots: Arc<Semaphore>,
    max: usize,
    /// After a failed accept (out of file descriptors, say): wait before the next.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl<L> Slots<L> {
    pub fn new(inner: L, max: usize) -> Slots<L> {
        Slots {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            backoff: None,
        }
    }
}

impl<L: indymilter::Listener> indymilter::Listener for Slots<L> {
    type Io = Slotted<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(wait) = self.backoff.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.backoff = None;
            }
            // An accept error is the listener's, not the milter's: indymilter would
            // stop serving for good on it, so it is logged and retried instead.
            let stream = match ready!(self.inner.poll_accept(cx)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "milter: accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return Poll::Ready(Ok(Slotted {
                        inner: stream,
                        _slot: slot,
                    }));
                }
                Err(_) => {
                    undecided(
                        ADAPTER,
                        Undecided::SlotsFull,
                        &format_args!(
                            "milter: {} MTA connections open (milter.max_sessions); closed one more, the MTA's default action applies",
                            self.max
                        ),
                    );
                    drop(stream);
                }
            }
        }
    }
}

/// A connection holding its slot until it is dropped (when its session ends).
pub struct Slotted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
