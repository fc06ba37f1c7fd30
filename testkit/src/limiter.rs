//! One limiter-server in this process, on a free port (the `limiter` feature).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use limiter_server::server::{ServeOptions, serve};
use mxlimit_core::decision::Engine;
use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::Store;
use mxlimit_core::store::ledger::Ledger;
use mxlimit_proto::v1::limiter_client::LimiterClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::channel;

/// One limiter-server, in this process, on a free port.
pub struct Limiter {
    pub addr: SocketAddr,
    pub policy: Arc<PolicyHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Limiter {
    pub async fn start<S: Store + Ledger>(store: S, policy: Arc<PolicyHandle>) -> Limiter {
        Limiter::start_at(store, policy, "127.0.0.1:0".parse().unwrap()).await
    }

    /// On a given address (to come back where a stopped one was).
    pub async fn start_at<S: Store + Ledger>(
        store: S,
        policy: Arc<PolicyHandle>,
        at: SocketAddr,
    ) -> Limiter {
        Limiter::start_tls(store, policy, at, None).await
    }

    /// Serving over TLS when `tls` is given.
    pub async fn start_tls<S: Store + Ledger>(
        store: S,
        policy: Arc<PolicyHandle>,
        at: SocketAddr,
        tls: Option<Arc<limiter_server::tls::ServerTls>>,
    ) -> Limiter {
        let options = ServeOptions {
            tls,
            ..Default::default()
        };
        Limiter::start_with(store, policy, at, options).await
    }

    /// With any server options (health checks every 200 ms whatever they say).
    pub async fn start_with<S: Store + Ledger>(
        store: S,
        policy: Arc<PolicyHandle>,
        at: SocketAddr,
        options: ServeOptions,
    ) -> Limiter {
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Arc::new(Engine::new(store, policy.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            health_interval: Duration::from_millis(200),
            ..options
        };
        let task = tokio::spawn(async move {
            serve(engine, listener, options, async move {
                let _ = stopped.await;
            })
            .await
            .expect("server");
        });
        Limiter {
            addr,
            policy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> LimiterClient<Channel> {
        LimiterClient::new(channel(self.addr).await)
    }

    /// Reports `n` recipients of `ip` rejected as unknown, as an MX's milter does (each
    /// call its own session and recipient, so none is taken for a retry).
    pub async fn bad_rcpts(&self, ip: &str, n: u32) {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut c = self.client().await;
        for _ in 0..n {
            let i = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.recipient(mxlimit_proto::v1::RecipientRequest {
                node: "mx1".into(),
                session_id: format!("{ip}-{i}"),
                client_ip: ip.into(),
                recipient: format!("nobody{i}@example.org"),
                rejected: true,
                smtp_code: 550,
                envelope_rcpts: 1,
                envelope_bad_rcpts: 1,
                ..Default::default()
            })
            .await
            .expect("Recipient");
        }
    }

    /// Stops taking calls, finishes those in flight.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}
