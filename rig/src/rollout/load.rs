//! The open-loop load generator: requests leave at a fixed rate whatever the
//! proxy does (a slow or failing proxy does not slow the load down, as it
//! would with a closed loop), and latency is measured from each request's
//! intended send time, so queueing shows up in the figures (no coordinated
//! omission).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Method;
use tokio::{task::JoinSet, time::Instant};

use crate::{
    client::{self, HttpClient, Proto},
    payload,
};

/// The load each variant receives.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Spec {
    /// Requests per second, per variant.
    pub rate: f64,
    pub duration_s: f64,
    /// Fraction of requests that are POSTs (with a body) instead of GETs.
    pub post_fraction: f64,
    pub post_bytes: usize,
    /// A new connection per request instead of keep-alive.
    pub fresh_connections: bool,
    /// Service time, uniform in [min, max] milliseconds.
    pub service_ms: (u64, u64),
}

/// Why a client saw an error, read from the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ErrorCause {
    /// A draining pod's 503 reached the client.
    Draining,
    /// A booting (not ready) pod's 503.
    NotReady,
    /// Envoy could not connect (a gone pod).
    ConnectFailure,
    /// The connection broke mid-request.
    Reset,
    /// Envoy had no healthy endpoint.
    NoHealthyUpstream,
    /// Any other 5xx.
    Other,
    /// The client itself failed (timeout, connection error to Envoy).
    Client,
}

impl ErrorCause {
    pub const ALL: [ErrorCause; 7] = [
        ErrorCause::Draining,
        ErrorCause::NotReady,
        ErrorCause::ConnectFailure,
        ErrorCause::Reset,
        ErrorCause::NoHealthyUpstream,
        ErrorCause::Other,
        ErrorCause::Client,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCause::Draining => "draining",
            ErrorCause::NotReady => "not_ready",
            ErrorCause::ConnectFailure => "gone",
            ErrorCause::Reset => "reset",
            ErrorCause::NoHealthyUpstream => "no_healthy",
            ErrorCause::Other => "other_5xx",
            ErrorCause::Client => "client",
        }
    }

    /// Caused by a pod being drained, gone or not ready: what mulligan is for.
    pub fn is_rollout(self) -> bool {
        !matches!(self, ErrorCause::Other | ErrorCause::Client)
    }

    fn of(r: &client::Reply) -> Option<ErrorCause> {
        if r.status.as_u16() < 500 {
            return None;
        }
        let body = String::from_utf8_lossy(&r.body);
        Some(match r.headers.get("x-pod-state").map(|v| v.as_bytes()) {
            Some(b"draining") => ErrorCause::Draining,
            Some(b"booting") => ErrorCause::NotReady,
            _ if body.contains("no healthy upstream") => ErrorCause::NoHealthyUpstream,
            _ if body.contains("connection failure") || body.contains("Connection refused") => {
                ErrorCause::ConnectFailure
            }
            _ if body.contains("reset") || body.contains("termination") => ErrorCause::Reset,
            _ => ErrorCause::Other,
        })
    }
}

/// A failed response in a line: its status, the pod state header if any,
/// and the start of its body.
fn seen(r: &client::Reply) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let body: String = body.chars().take(160).collect();
    let pod = r
        .headers
        .get("x-pod-state")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let body = body.trim().replace(['\n', '`'], " ");
    format!("{} (pod {pod}): {body}", r.status.as_u16())
}

/// One request's fate.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Intended send time, ms since the run started.
    pub at_ms: u64,
    /// From the intended send time to the last byte.
    pub latency_us: u64,
    pub error: Option<ErrorCause>,
    /// A failure as the client saw it (status and the body's start), so a
    /// report can show what each cause looked like.
    pub seen: Option<String>,
    pub post: bool,
}

/// Runs the load against `target` until `spec.duration_s`, tagging every
/// request with `x-harness-variant: TAG` (the pods count each numeric tag:
/// see [`super::proxies::Proxy::tag`]) and an `x-harness-id` of `TAG-N`.
pub async fn run(
    target: SocketAddr,
    tag: String,
    spec: &Spec,
    start: Instant,
    progress: Arc<Mutex<Vec<u64>>>,
    slot: usize,
) -> Vec<Sample> {
    let n = (spec.rate * spec.duration_s) as u64;
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let keepalive = HttpClient::new(Proto::Http1);
    let body = bytes::Bytes::from(payload(spec.post_bytes));
    let mut tasks = JoinSet::new();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let intended = start + interval * i as u32;
        tokio::time::sleep_until(intended).await;
        while let Some(Ok(s)) = tasks.try_join_next() {
            out.push(s);
        }
        let post = fastrand::f64() < spec.post_fraction;
        let (lo, hi) = spec.service_ms;
        let ms = lo + fastrand::u64(0..=hi.saturating_sub(lo));
        let http = if spec.fresh_connections {
            HttpClient::fresh()
        } else {
            keepalive.clone()
        };
        let body = body.clone();
        let progress = Arc::clone(&progress);
        let tag = tag.clone();
        tasks.spawn(async move {
            let (method, path, req_body) = if post {
                (Method::POST, format!("/echo?ms={ms}"), client::full(body))
            } else {
                (Method::GET, format!("/?ms={ms}"), client::empty())
            };
            // A unique id per request: the pods count how often each ran.
            let id = format!("{tag}-{i}");
            let r = http
                .send(
                    method,
                    target,
                    &path,
                    &[("x-harness-variant", &tag), ("x-harness-id", &id)],
                    req_body,
                )
                .await;
            let error = match &r {
                Ok(r) => ErrorCause::of(r),
                Err(_) => Some(ErrorCause::Client),
            };
            let seen = error.map(|_| match &r {
                Ok(r) => seen(r),
                Err(e) => e.to_string(),
            });
            progress.lock().unwrap()[slot] += 1;
            Sample {
                at_ms: intended.duration_since(start).as_millis() as u64,
                latency_us: intended.elapsed().as_micros() as u64,
                error,
                seen,
                post,
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out
}
