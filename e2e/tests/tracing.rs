//! Tracing across hosts: an SMTP session through the mx-agent binary is one trace,
//! and the limiter's span for each call is a child of the agent's span for it. The
//! spans are received by a real OTLP/gRPC receiver started here.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxlimit_core::policy::reload::PolicyHandle;
use mxlimit_core::store::memory::MemoryStore;
use testkit::milter::{MilterClient, Reply};
use testkit::otlp::{Receiver, Span};

fn one<'a>(spans: &'a [Span], service: &str, name: &str, kind: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.kind == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_smtp_session_is_one_trace_from_the_agent_to_the_limiter() {
    let otlp = Receiver::start().await;
    // This process plays the limiter host; the agent is its own process.
    let _telemetry =
        mxlimit_core::telemetry::init_with_endpoint("limiter-server", "warn", &otlp.endpoint())
            .unwrap();
    let lim = testkit::Limiter::start(
        Arc::new(MemoryStore::new(Default::default())),
        Arc::new(PolicyHandle::fixed(testkit::policy("", ""))),
    )
    .await;
    let limiter = format!("http://{}", lim.addr);
    let endpoint = otlp.endpoint();
    let (mut agent, milter) = common::spawn_agent(
        "mx1",
        &limiter,
        // A Disconnect per session, in the session's trace (batched releases are
        // spans of their own: one Release serves many sessions).
        &["--deadline", "2s", "--release-every", "0s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    let mut c = MilterClient::open(milter).await.unwrap();
    assert_eq!(
        c.connect("unknown", "192.0.2.7".parse().unwrap(), &[])
            .await
            .unwrap(),
        Reply::Continue
    );
    c.mail("someone@example.net").await.unwrap();
    c.rejected_rcpt("nobody@example.org").await.unwrap();
    c.quit().await.unwrap();

    // Both processes export in batches: wait for the session's last span.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = otlp.spans();
        let done = one(&spans, "mx-agent", "smtp.session", "internal").is_some()
            && one(
                &spans,
                "limiter-server",
                "mxlimit.v1.Limiter/Disconnect",
                "server",
            )
            .is_some();
        if done {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans so far: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();

    let session = one(&spans, "mx-agent", "smtp.session", "internal").unwrap();
    assert_eq!(session.attr("client_ip"), Some("192.0.2.7"));
    assert_eq!(session.attr("node"), Some("mx1"));
    for rpc in ["Connect", "Recipient", "Disconnect"] {
        let name = format!("mxlimit.v1.Limiter/{rpc}");
        let call = one(&spans, "mx-agent", &name, "client")
            .unwrap_or_else(|| panic!("no agent span for {rpc}: {spans:#?}"));
        let served = one(&spans, "limiter-server", &name, "server")
            .unwrap_or_else(|| panic!("no limiter span for {rpc}: {spans:#?}"));
        // One trace: the session, the agent's call in it, the limiter's work under that.
        assert_eq!(call.trace_id, session.trace_id, "{rpc}");
        assert_eq!(call.parent_span_id, session.span_id, "{rpc}");
        assert_eq!(served.trace_id, session.trace_id, "{rpc}");
        assert_eq!(
            served.parent_span_id, call.span_id,
            "{rpc}: the agent's span is the limiter's parent"
        );
    }
}
