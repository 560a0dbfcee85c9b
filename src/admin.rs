//! The admin HTTP port: health, readiness, metrics and the endpoint
//! lifecycle API that application pods call from their preStop / postStart
//! hooks.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;

use crate::{
    access::{Access, Caller},
    drain::Drain,
    endpoints::{self, Registry},
    metrics,
};

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub drain: Arc<Drain>,
    pub registry: Arc<Registry>,
    pub access: Access,
}

/// The caller of one admin request.
fn caller<'a>(peer: SocketAddr, headers: &'a HeaderMap) -> Caller<'a> {
    Caller {
        peer: Some(peer),
        authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "forbidden: call from loopback or send the admin token (Authorization: Bearer ...)\n",
    )
        .into_response()
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/v1/endpoints", get(list_endpoints))
        .route("/v1/endpoints/{addr}/{action}", post(lifecycle))
        .with_state(state)
}

/// Alive: the process answers. Never fails while mulligan runs, so a drain
/// is not mistaken for a hang and restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready for traffic: false until discovery has its first view of the
/// endpoints, and from the moment a drain begins.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if !state.drain.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.drain.is_serving() {
        (StatusCode::SERVICE_UNAVAILABLE, "discovering endpoints\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn prometheus(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !state.access.may_read(caller(peer, &headers)) {
        return forbidden();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::prometheus().render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ClusterQuery {
    cluster: Option<String>,
}

async fn list_endpoints(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ClusterQuery>,
) -> Response {
    if !state.access.may_read(caller(peer, &headers)) {
        return forbidden();
    }
    let endpoints = state.registry.list(q.cluster.as_deref());
    Json(serde_json::json!({ "endpoints": endpoints })).into_response()
}

/// `POST /v1/endpoints/{addr}/drain` (a preStop hook) and `.../ready`.
async fn lifecycle(
    state: State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((addr, action)): Path<(String, String)>,
    q: Query<ClusterQuery>,
) -> Response {
    let (to, reason) = match action.as_str() {
        "drain" => (endpoints::State::Draining, "lifecycle: drain"),
        "ready" => (endpoints::State::Ready, "lifecycle: ready"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if !state.access.may_write(caller(peer, &headers)) {
        return forbidden();
    }
    set_state(state, addr, q, to, reason)
}

fn set_state(
    State(state): State<AdminState>,
    addr: String,
    Query(q): Query<ClusterQuery>,
    to: endpoints::State,
    reason: &str,
) -> Response {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("not an IP:port address: {addr:?}\n"),
        )
            .into_response();
    };
    match state
        .registry
        .set_state(addr, q.cluster.as_deref(), to, reason)
    {
        Ok(changed) => {
            tracing::info!(%addr, state = ?to, reason, "endpoint lifecycle");
            Json(serde_json::json!({ "endpoints": changed })).into_response()
        }
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}
