//! Logs and traces, for the limiter and the agent alike. Logs go to stderr (text or
//! JSON). Traces go over OTLP/gRPC when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; sampling follows
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (parent-based, always on by
//! default). Trace context travels between agent and limiter in gRPC metadata (W3C
//! `traceparent`), so one SMTP session is one trace across hosts.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use thiserror::Error;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("bad log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("a logger is already installed")]
    Installed,
}

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: without it, no span is made on the decision path.
pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Whether the environment asks for OTLP traces.
pub fn otlp_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Keeps the exporter alive; dropping it sends the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export did not finish: {e}");
        }
    }
}

/// Installs the logger (and the trace exporter, if configured) for the process.
/// `service` names the process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(service: &'static str, filter: &str, json: bool) -> Result<Telemetry, TelemetryError> {
    install(service, filter, json, otlp_configured().then_some(None))
}

/// As `init`, exporting to `endpoint` whatever the environment says (for embedding
/// and tests).
pub fn init_with_endpoint(
    service: &'static str,
    filter: &str,
    endpoint: &str,
) -> Result<Telemetry, TelemetryError> {
    install(service, filter, false, Some(Some(endpoint.to_string())))
}

/// `otlp`: None = no traces; Some(None) = the environment's endpoint.
fn install(
    service: &'static str,
    filter: &str,
    json: bool,
    otlp: Option<Option<String>>,
) -> Result<Telemetry, TelemetryError> {
    let env_filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter(filter.into(), e.to_string()))?;
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json()
            .flatten_event(true)
            .with_filter(env_filter)
            .boxed()
    } else {
        fmt.with_filter(env_filter).boxed()
    };
    let (otel, provider) = if let Some(endpoint) = otlp {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(e) = endpoint {
            builder = builder.with_endpoint(e);
        }
        let exporter = builder
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        // Spans are made at INFO, whatever the log filter says.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(LevelFilter::INFO)
            .boxed();
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::Installed)?;
    TRACING.store(provider.is_some(), Ordering::Relaxed);
    if provider.is_some()
        && let Some(p) = unsupported_protocol(|k| std::env::var(k).ok())
    {
        // The spans would go to a collector port that does not speak gRPC: say so
        // once, loudly, rather than lose them in silence.
        tracing::warn!(
            protocol = %p,
            "the OTLP protocol asked for (OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL) is not grpc: mxlimit exports traces over OTLP/gRPC only (collector port 4317 by default)"
        );
    }
    Ok(Telemetry { provider })
}

/// The OTLP protocol asked for, when it is not the gRPC this exporter speaks.
fn unsupported_protocol(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|k| var(k).filter(|v| !v.trim().is_empty()))
    .filter(|v| !v.trim().eq_ignore_ascii_case("grpc"))
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts the current span's trace context into an outgoing call's metadata.
pub fn inject(metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// A server span for one incoming call, the caller's span its parent when the call
/// carries trace context. Disabled (free) when traces are not exported.
pub fn server_span(rpc: &'static str, metadata: &MetadataMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = rpc,
        otel.kind = "server",
        rpc.system = "grpc"
    );
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(parent);
    span
}

/// A client span for one outgoing call, child of the current span.
pub fn client_span(rpc: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "rpc",
        otel.name = rpc,
        otel.kind = "client",
        rpc.system = "grpc"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_protocol_other_than_grpc_is_reported() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(unsupported_protocol(env(&[])), None);
        assert_eq!(
            unsupported_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            None
        );
        assert_eq!(
            unsupported_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])),
            Some("http/protobuf".into())
        );
        // The traces-specific variable wins over the general one.
        assert_eq!(
            unsupported_protocol(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ])),
            None
        );
    }

    #[test]
    fn trace_context_round_trips_through_metadata() {
        use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
        let sc = SpanContext::new(
            opentelemetry::trace::TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            opentelemetry::trace::SpanId::from(0xb7ad6b7169203331),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let mut md = MetadataMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut md));
        assert_eq!(
            md.get("traceparent").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let back = TraceContextPropagator::new().extract(&MetadataExtractor(&md));
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
    }
}
