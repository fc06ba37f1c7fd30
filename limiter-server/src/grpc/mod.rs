//! The gRPC `mxlimit.v1.Limiter` service: validates each request, hands it to the
//! engine, and maps store failures to `UNAVAILABLE` so that agents fall back at once.

pub mod validate;

use std::sync::Arc;

use mxlimit_proto::v1::limiter_server::Limiter;
use mxlimit_proto::v1::{
    ConnectReply, ConnectRequest, DisconnectReply, DisconnectRequest, HeartbeatReply,
    HeartbeatRequest, LookupReply, LookupRequest, RecipientReply, RecipientRequest,
};
use tonic::{Request, Response, Status};

use crate::decision::{Connect, Engine, Heartbeat, Recipient};
use crate::store::{LeaseId, Store, StoreError};

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

#[tonic::async_trait]
impl<S: Store> Limiter for LimiterService<S> {
    async fn connect(
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

    async fn recipient(
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

    async fn disconnect(
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

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let r = req.get_ref();
        validate::count("session_ids", r.session_ids.len())?;
        validate::count("leases", r.leases.len())?;
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

    async fn lookup(&self, req: Request<LookupRequest>) -> Result<Response<LookupReply>, Status> {
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
