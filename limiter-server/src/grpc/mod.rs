//! The gRPC `mxlimit.v1.Limiter` service: validates each request, hands it to the
//! engine, and maps store failures to `UNAVAILABLE` so that agents fall back at once.

pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};

use mxlimit_proto::v1::limiter_server::Limiter;
use mxlimit_proto::v1::{
    ConnectReply, ConnectRequest, DisconnectReply, DisconnectRequest, HeartbeatReply,
    HeartbeatRequest, LookupReply, LookupRequest, OffenceReply, OffenceRequest, RecipientReply,
    RecipientRequest, ReleaseReply, ReleaseRequest, Verdict,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::metrics::{DECISIONS, REQUEST_ERRORS, REQUEST_SECONDS};
use mxlimit_core::decision::verdict::{action_label, reason_label};
use mxlimit_core::decision::{Connect, Engine, Heartbeat, Offence, Recipient};
use mxlimit_core::store::{LeaseId, Store, StoreError};
use mxlimit_core::telemetry;

/// The `Limiter` service over an engine.
pub struct LimiterService<S> {
    engine: Arc<Engine<S>>,
}

impl<S> LimiterService<S> {
    pub fn new(engine: Arc<Engine<S>>) -> Self {
        LimiterService { engine }
    }
}

fn unavailable(e: StoreError) -> Status {
    tracing::warn!(error = %e, "store error");
    Status::unavailable(format!("store unavailable: {e}"))
}

/// Replies that carry a verdict, for the decision counter.
trait Decided {
    fn verdict(&self) -> Option<&Verdict>;
}

impl Decided for ConnectReply {
    fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }
}

impl Decided for RecipientReply {
    fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }
}

impl Decided for LookupReply {
    fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }
}

impl Decided for OffenceReply {
    fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }
}

impl Decided for DisconnectReply {
    fn verdict(&self) -> Option<&Verdict> {
        None
    }
}

impl Decided for ReleaseReply {
    fn verdict(&self) -> Option<&Verdict> {
        None
    }
}

impl Decided for HeartbeatReply {
    fn verdict(&self) -> Option<&Verdict> {
        None
    }
}

/// The verdict's reason as one of the known, static label values (a label must not
/// take arbitrary text).
/// Records one call: its latency, its verdict or its error.
fn observe<T: Decided>(rpc: &'static str, start: Instant, r: &Result<Response<T>, Status>) {
    histogram!(REQUEST_SECONDS, "rpc" => rpc).record(start.elapsed());
    match r {
        Ok(reply) => {
            if let Some(v) = reply.get_ref().verdict() {
                counter!(
                    DECISIONS,
                    "rpc" => rpc,
                    "action" => action_label(v.action()),
                    "reason" => reason_label(&v.reason),
                    "shadow" => if v.shadow { "true" } else { "false" },
                )
                .increment(1);
            }
        }
        Err(status) => {
            counter!(REQUEST_ERRORS, "rpc" => rpc, "code" => code_label(status.code()))
                .increment(1);
        }
    }
}

fn code_label(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        InvalidArgument => "invalid_argument",
        Unavailable => "unavailable",
        DeadlineExceeded => "deadline_exceeded",
        Cancelled => "cancelled",
        ResourceExhausted => "resource_exhausted",
        _ => "other",
    }
}

/// The calls themselves; the trait methods below time and count them.
impl<S: Store> LimiterService<S> {
    async fn connect_inner(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectReply>, Status> {
        let r = req.get_ref();
        let c = Connect {
            lease: LeaseId {
                node: validate::node(&r.node)?,
                epoch: validate::id("epoch", &r.epoch, false)?,
                session: validate::id("session_id", &r.session_id, true)?,
            },
            ip: validate::client_ip("client_ip", &r.client_ip)?,
            client_name: validate::client_name(&r.client_name)?,
        };
        validate::helo(&r.helo)?;
        self.engine
            .connect(&c)
            .await
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn recipient_inner(
        &self,
        req: Request<RecipientRequest>,
    ) -> Result<Response<RecipientReply>, Status> {
        let r = req.get_ref();
        let c = Recipient {
            node: validate::node(&r.node)?,
            session: validate::id("session_id", &r.session_id, true)?,
            ip: validate::client_ip("client_ip", &r.client_ip)?,
            client_name: validate::client_name(&r.client_name)?,
            recipient: validate::recipient(&r.recipient)?,
            rejected: r.rejected,
            envelope_rcpts: r.envelope_rcpts,
            envelope_bad_rcpts: r.envelope_bad_rcpts,
        };
        self.engine
            .recipient(&c)
            .await
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn disconnect_inner(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let r = req.get_ref();
        let lease = LeaseId {
            node: validate::node(&r.node)?,
            epoch: validate::id("epoch", &r.epoch, false)?,
            session: validate::id("session_id", &r.session_id, true)?,
        };
        let ip = validate::client_ip("client_ip", &r.client_ip)?;
        self.engine
            .disconnect(ip, lease)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(DisconnectReply {}))
    }

    async fn heartbeat_inner(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let r = req.get_ref();
        validate::count(
            "session_ids and leases",
            r.session_ids.len() + r.leases.len(),
        )?;
        let mut leases = Vec::with_capacity(r.leases.len());
        for l in &r.leases {
            leases.push((
                validate::id("leases.session_id", &l.session_id, true)?,
                validate::client_ip("leases.client_ip", &l.client_ip)?,
            ));
        }
        let mut bare = Vec::with_capacity(r.session_ids.len());
        for s in &r.session_ids {
            bare.push(validate::id("session_ids", s, true)?);
        }
        let h = Heartbeat {
            node: validate::node(&r.node)?,
            epoch: validate::id("epoch", &r.epoch, false)?,
            leases,
            bare,
        };
        self.engine
            .heartbeat(&h)
            .await
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn release_inner(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let r = req.get_ref();
        validate::count("leases", r.leases.len())?;
        let node = validate::node(&r.node)?;
        let epoch = validate::id("epoch", &r.epoch, false)?;
        let mut leases = Vec::with_capacity(r.leases.len());
        for l in &r.leases {
            leases.push((
                validate::id("leases.session_id", &l.session_id, true)?,
                validate::client_ip("leases.client_ip", &l.client_ip)?,
            ));
        }
        let released = self
            .engine
            .release(node, epoch, &leases)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(ReleaseReply { released }))
    }

    async fn offence_inner(
        &self,
        req: Request<OffenceRequest>,
    ) -> Result<Response<OffenceReply>, Status> {
        let r = req.get_ref();
        let o = Offence {
            node: validate::node(&r.node)?,
            ip: validate::client_ip("client_ip", &r.client_ip)?,
            client_name: validate::client_name(&r.client_name)?,
            kind: validate::offence_kind(r.kind)?,
            event: validate::id("event_id", &r.event_id, true)?,
        };
        self.engine
            .offence(&o)
            .await
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn lookup_inner(
        &self,
        req: Request<LookupRequest>,
    ) -> Result<Response<LookupReply>, Status> {
        let r = req.get_ref();
        let ip = validate::client_ip("client_ip", &r.client_ip)?;
        let name = validate::client_name(&r.client_name)?;
        self.engine
            .lookup(ip, name)
            .await
            .map(Response::new)
            .map_err(unavailable)
    }
}

#[tonic::async_trait]
impl<S: Store> Limiter for LimiterService<S> {
    async fn connect(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Connect", req.metadata());
        let r = self.connect_inner(req).instrument(span).await;
        observe("connect", t, &r);
        r
    }

    async fn recipient(
        &self,
        req: Request<RecipientRequest>,
    ) -> Result<Response<RecipientReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Recipient", req.metadata());
        let r = self.recipient_inner(req).instrument(span).await;
        observe("recipient", t, &r);
        r
    }

    async fn disconnect(
        &self,
        req: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Disconnect", req.metadata());
        let r = self.disconnect_inner(req).instrument(span).await;
        observe("disconnect", t, &r);
        r
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Heartbeat", req.metadata());
        let r = self.heartbeat_inner(req).instrument(span).await;
        observe("heartbeat", t, &r);
        r
    }

    async fn offence(
        &self,
        req: Request<OffenceRequest>,
    ) -> Result<Response<OffenceReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Offence", req.metadata());
        let r = self.offence_inner(req).instrument(span).await;
        observe("offence", t, &r);
        r
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Release", req.metadata());
        let r = self.release_inner(req).instrument(span).await;
        observe("release", t, &r);
        r
    }

    async fn lookup(&self, req: Request<LookupRequest>) -> Result<Response<LookupReply>, Status> {
        let t = Instant::now();
        let span = telemetry::server_span("mxlimit.v1.Limiter/Lookup", req.metadata());
        let r = self.lookup_inner(req).instrument(span).await;
        observe("lookup", t, &r);
        r
    }
}
