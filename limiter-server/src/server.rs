//! The gRPC server: the `Limiter` service, gRPC health (per service: the limiter is
//! NOT_SERVING while its store is unreachable) and reflection, and graceful shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mxlimit_proto::v1::admin_server::AdminServer;
use mxlimit_proto::v1::limiter_server::LimiterServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::auth::{AdminAuth, AuthConfig, RequireAdmin};
use crate::admin::service::AdminService;
use crate::admin::{KeeperOptions, keeper};
use crate::grpc::LimiterService;
use crate::tls::ServerTls;
use mxlimit_core::decision::Engine;
use mxlimit_core::store::Store;
use mxlimit_core::store::ledger::Ledger;

/// The health-check name of the limiter service.
pub const SERVICE_NAME: &str = "mxlimit.v1.Limiter";
/// Largest Limiter request decoded: room for a heartbeat's 100 000 leases with 128-byte
/// ids and IPv6 addresses (about 18 MB; past it, tonic's `OUT_OF_RANGE` before anything
/// is decoded).
pub const MAX_REQUEST_BYTES: usize = 24 << 20;

/// Server settings beyond the engine.
#[derive(Debug)]
pub struct ServeOptions {
    /// Upper bound of any one request, whatever deadline the caller sent.
    pub request_timeout: Duration,
    /// How often the store is pinged for the health status.
    pub health_interval: Duration,
    /// After shutdown begins, how long open connections may stay before the server
    /// returns anyway (hyper can wait forever on a client that never hangs up).
    pub shutdown_grace: Duration,
    /// Serve gRPC over TLS (mutual TLS when the files name a client CA).
    pub tls: Option<Arc<ServerTls>>,
    /// A second, plaintext port that serves only gRPC health: for probes that cannot
    /// speak TLS (Kubernetes' gRPC probes) while the main port requires it.
    pub health_listener: Option<TcpListener>,
    /// Who may call `Admin`; without credentials every admin call is refused.
    pub admin: Option<Arc<AdminAuth>>,
    pub keeper: KeeperOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            request_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            health_listener: None,
            admin: None,
            keeper: KeeperOptions::default(),
        }
    }
}

// Long on purpose: what runs beside the gRPC server and how each part stops, in the
// order they start and stop.
/// Serves until `shutdown` resolves, then stops taking calls and lets the ones in
/// flight finish.
pub async fn serve<S: Store + Ledger>(
    engine: Arc<Engine<S>>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mxlimit_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");

    // The limiter is ready only while its store answers.
    let watcher = tokio::spawn(report_store_health(
        engine.clone(),
        health.clone(),
        options.health_interval,
    ));

    // Counting starts before the first call is served, not when the keeper's task
    // first runs.
    engine.tally().enable();
    let (keeper_stop, keeper_stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(keeper(engine.clone(), options.keeper, async move {
        let _ = keeper_stopped.await;
    }));
    let admin = admin_server(engine.clone(), options.admin, options.keeper.keep);

    let (began, draining) = tokio::sync::oneshot::channel::<()>();
    let (health_stop, health_stopped) = tokio::sync::watch::channel(false);
    if let Some(l) = options.health_listener {
        serve_health_port(
            l,
            health_service.clone(),
            options.request_timeout,
            health_stopped,
        );
    }
    let router = tonic::transport::Server::builder()
        .timeout(options.request_timeout)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            LimiterServer::new(LimiterService::new(engine))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(admin);
    let stopping = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing calls in flight");
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let _ = began.send(());
    };
    type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let server: Serving = match options.tls {
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopping,
        )),
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), stopping),
        ),
    };
    let grace = options.shutdown_grace;
    let result = tokio::select! {
        r = server => r,
        _ = async {
            if draining.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?grace, "connections still open after the shutdown grace; closing them");
            Ok(())
        }
    };
    watcher.abort();
    let _ = health_stop.send(true);
    // The last counts go to the ledger before the process exits.
    let _ = keeper_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), keeper).await;
    result
}

/// Pings the store every `every` and reports the limiter SERVING only while it answers;
/// every tenth time, also how full the store is (metrics).
async fn report_store_health<S: Store>(
    engine: Arc<Engine<S>>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
) {
    let mut last = true;
    let mut tick = tokio::time::interval(every);
    for round in 0u64.. {
        tick.tick().await;
        if round % 10 == 0 {
            report_store_usage(engine.store()).await;
        }
        let ok = match tokio::time::timeout(every, engine.store().ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if last {
                    tracing::error!(error = %e, "store unreachable; reporting NOT_SERVING");
                }
                false
            }
            Err(_) => {
                if last {
                    tracing::error!("store ping timed out; reporting NOT_SERVING");
                }
                false
            }
        };
        if ok && !last {
            tracing::info!("store reachable again; reporting SERVING");
        }
        if ok != last {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(SERVICE_NAME, status).await;
            last = ok;
        }
    }
}

async fn report_store_usage<S: Store>(store: &S) {
    use crate::metrics::{STORE_EVICTED, STORE_HELD, STORE_LIMIT};
    match store.usage().await {
        Ok(Some(u)) => {
            metrics::gauge!(STORE_HELD, "unit" => u.unit).set(u.held as f64);
            metrics::gauge!(STORE_LIMIT, "unit" => u.unit).set(u.limit as f64);
            metrics::counter!(STORE_EVICTED).absolute(u.evicted);
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "store usage not read"),
    }
}

/// The `Admin` service behind its authentication (none given: every call refused).
fn admin_server<S: Store + Ledger>(
    engine: Arc<Engine<S>>,
    auth: Option<Arc<AdminAuth>>,
    keep: u32,
) -> InterceptedService<AdminServer<AdminService<S>>, RequireAdmin> {
    let auth = auth.unwrap_or_else(|| {
        AdminAuth::new(AuthConfig::default()).expect("no credentials is a valid configuration")
    });
    AdminServer::with_interceptor(AdminService::new(engine, keep), RequireAdmin(auth))
}

/// The plaintext port that serves only gRPC health, until `stopped` turns true.
fn serve_health_port(
    listener: TcpListener,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let only_health = tonic::transport::Server::builder()
        .timeout(timeout)
        .add_service(health_service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    tokio::spawn(async move {
        if let Err(e) = only_health.await {
            tracing::error!(error = %e, "the health port stopped");
        }
    });
}
