//! The `mulligan.v1.Lifecycle` gRPC service: the same endpoint lifecycle as
//! the admin HTTP API, for callers that already speak gRPC.

use std::{net::SocketAddr, sync::Arc};

use tonic::{Request, Response, Status};

use crate::{
    access::{Access, Caller},
    endpoints::{self, EndpointView, Registry},
    proto::{
        self,
        lifecycle_server::{Lifecycle, LifecycleServer},
    },
};

#[derive(Clone, Debug)]
pub struct Control {
    registry: Arc<Registry>,
    access: Access,
}

/// The caller of a gRPC request, for the access policy.
fn caller<T>(request: &Request<T>) -> Caller<'_> {
    Caller {
        peer: request.remote_addr(),
        authorization: request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes()),
    }
}

impl Control {
    pub(crate) fn new(registry: Arc<Registry>, access: Access) -> Self {
        Self { registry, access }
    }

    fn check_write<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.access.may_write(caller(request)) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "call from loopback or send the admin token (authorization: Bearer ...)",
            ))
        }
    }

    pub(crate) fn into_server(self) -> LifecycleServer<Self> {
        LifecycleServer::new(self)
    }

    /// A lifecycle call: refused unless its caller may write.
    fn set(
        &self,
        request: Request<proto::EndpointRef>,
        state: endpoints::State,
        reason: &str,
    ) -> Result<Response<proto::Endpoint>, Status> {
        self.check_write(&request)?;
        let r = request.into_inner();
        let addr: SocketAddr = r
            .address
            .parse()
            .map_err(|_| Status::invalid_argument(format!("not an IP:port: {:?}", r.address)))?;
        let cluster = (!r.cluster.is_empty()).then_some(r.cluster.as_str());
        let changed = self
            .registry
            .set_state(addr, cluster, state, reason)
            .map_err(|e| Status::not_found(e.to_string()))?;
        tracing::info!(%addr, ?state, reason, "endpoint lifecycle (gRPC)");
        // Several clusters may share the address; they all changed alike.
        let first = changed
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found(addr.to_string()))?;
        Ok(Response::new(to_proto(first)))
    }
}

fn to_proto(e: EndpointView) -> proto::Endpoint {
    let state = match e.state {
        endpoints::State::Ready => proto::EndpointState::Ready,
        endpoints::State::NotReady => proto::EndpointState::NotReady,
        endpoints::State::Draining => proto::EndpointState::Draining,
        endpoints::State::Gone => proto::EndpointState::Gone,
    };
    proto::Endpoint {
        address: e.address.to_string(),
        cluster: e.cluster,
        state: state as i32,
        reason: e.reason,
    }
}

#[tonic::async_trait]
impl Lifecycle for Control {
    async fn mark_draining(
        &self,
        request: Request<proto::EndpointRef>,
    ) -> Result<Response<proto::Endpoint>, Status> {
        self.set(request, endpoints::State::Draining, "lifecycle: drain")
    }

    async fn mark_ready(
        &self,
        request: Request<proto::EndpointRef>,
    ) -> Result<Response<proto::Endpoint>, Status> {
        self.set(request, endpoints::State::Ready, "lifecycle: ready")
    }

    async fn list_endpoints(
        &self,
        request: Request<proto::ListEndpointsRequest>,
    ) -> Result<Response<proto::ListEndpointsResponse>, Status> {
        if !self.access.may_read(caller(&request)) {
            return Err(Status::permission_denied("send the admin token"));
        }
        let r = request.into_inner();
        let cluster = (!r.cluster.is_empty()).then_some(r.cluster.as_str());
        let endpoints = self
            .registry
            .list(cluster)
            .into_iter()
            .map(to_proto)
            .collect();
        Ok(Response::new(proto::ListEndpointsResponse { endpoints }))
    }
}
