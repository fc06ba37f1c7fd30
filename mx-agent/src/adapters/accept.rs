//! The accept loop of the line-protocol adapters (policy service, socketmap): one
//! task per MTA connection, at most `max_sessions` at a time; one more is closed at
//! once, counted and warned about, and the MTA's own default for an unreachable
//! service applies to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::listen::{Listener, Stream};
use crate::metrics::{Undecided, undecided};

/// Serves `listener` until `shutdown`, each connection with `handle`.
pub async fn serve<F, Fut>(
    adapter: &'static str,
    listener: Listener,
    max_sessions: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(Box<dyn Stream>) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_sessions));
    tracing::info!(listen = %listener.local_addr(), "{adapter} listening");
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            s = listener.accept() => s,
        };
        match stream {
            Ok(stream) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    undecided(
                        adapter,
                        Undecided::SlotsFull,
                        &format_args!(
                            "{adapter}: {max_sessions} MTA connections open ({adapter}.max_sessions); closed one more"
                        ),
                    );
                    continue;
                };
                let work = handle(stream);
                tokio::spawn(async move {
                    if let Err(e) = work.await {
                        // Garbage from the MTA's side, or a connection that broke.
                        let cause = if e.kind() == std::io::ErrorKind::InvalidData {
                            Undecided::ProtocolError
                        } else {
                            Undecided::IoError
                        };
                        undecided(
                            adapter,
                            cause,
                            &format_args!("{adapter}: the MTA's connection ended in an error: {e}"),
                        );
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "{adapter}: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
