//! Upstream "pods": real hyper HTTP servers on loopback whose lifecycle a
//! test flips, as Kubernetes would during a rollout.
//!
//! Routes (any method):
//! - `/ready`: 200 when ready (a readiness probe), 503 otherwise;
//! - `/echo`: the request body back, byte for byte;
//! - `/bytes/N`: N deterministic bytes ([`super::payload`]);
//! - `/stream/CHUNKS/SIZE`: a streamed response, CHUNKS pieces of SIZE bytes;
//! - `/delay/MS`: answers after MS milliseconds (a hanging upstream);
//! - `/trickle/N/MS`: N bytes (`content-length: N`), one every MS ms;
//! - `/cut/N`: promises N bytes (`content-length: N`), sends half, then
//!   resets the connection;
//! - `/status/CODE`: answers CODE;
//! - `/overload`: 503 with `x-envoy-overloaded` (a pod shedding load);
//! - anything else: `hello from NAME`.
//!
//! `/v2/ROUTE` is the same as `/ROUTE` (where a route's prefix rewrite sends it).
//!
//! `?ms=N` on any route adds N milliseconds of service time. Requests that
//! carry `x-harness-variant: N` (a small number) are counted per variant,
//! so the rollout harness can tell which proxy sent them.
//!
//! Every reply carries `x-pod: NAME`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinSet,
};

/// Where a pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PodState {
    /// Listening, but not ready: 503 to everything.
    Booting = 0,
    /// Serving.
    Ready = 1,
    /// preStop: 503 with `connection: close`, the request not processed.
    Draining = 2,
    /// preStop, but still serving each request, with `connection: close`.
    DrainingServing = 3,
    /// Port closed: connections are refused, open ones are cut.
    Gone = 4,
    /// Broken: processes each request (it counts as served), then answers
    /// a plain 503, with no drain signal.
    Failing = 5,
}

impl PodState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => PodState::Booting,
            1 => PodState::Ready,
            2 => PodState::Draining,
            3 => PodState::DrainingServing,
            5 => PodState::Failing,
            _ => PodState::Gone,
        }
    }
}

struct Shared {
    name: String,
    state: AtomicU8,
    /// Requests that reached the application (served, not rejected).
    served: AtomicU64,
    /// Requests rejected with a 503 (booting or draining).
    rejected: AtomicU64,
    /// A draining pod marks its 503 with `x-mulligan-drain` (it rejected the
    /// request without processing it), as mulligan's docs ask apps to.
    drain_header: std::sync::atomic::AtomicBool,
    /// Arrivals per `x-harness-variant` (0..8), rejected ones included.
    by_variant: [AtomicU64; 8],
    /// The first requests that reached the application, as they arrived.
    seen: Mutex<Vec<Seen>>,
    /// Executions per `x-harness-id`: more than one is a request run twice.
    executions: Mutex<std::collections::HashMap<String, u32>>,
    /// Arrivals over HTTP/2 (Envoy speaks HTTP/1.1 to pods in the rig).
    http2: AtomicU64,
    /// While gone: the pod's port, held (see [`hold_port`]).
    held_port: Mutex<Option<TcpSocket>>,
}

/// Holds a gone pod's port: bound, never listening, so a connection is
/// refused as by a pod that is gone, and no other socket of the test run
/// takes the port meanwhile (the kernel hands out unbound ports first). A
/// port given back instead could go to another test's pod or Envoy, which
/// would then answer for the gone pod.
fn hold_port(shared: &Shared, addr: SocketAddr) {
    let held = TcpSocket::new_v4().and_then(|s| {
        // Past the TIME_WAIT of the pod's own connections.
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    });
    *shared.held_port.lock().unwrap() = held.ok();
}

/// A request as it reached a pod's application: what a test compares
/// between a first attempt and a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Every header, in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Requests a pod keeps in [`Pod::seen`]; later ones are only counted.
const SEEN_KEPT: usize = 1000;

pub struct Pod {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tells the accept loop to stop gracefully (see [`Pod::exit`]).
    stop: Mutex<Option<tokio::sync::oneshot::Sender<Duration>>>,
    /// Set for a pod that speaks TLS ([`Pod::start_tls`]).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Pod {
    /// A pod on a fresh loopback port, in `state`.
    pub async fn start(name: &str, state: PodState) -> Arc<Pod> {
        Self::start_with(name, state, None).await
    }

    /// A pod that speaks TLS with `tls` (see [`super::tls`]).
    pub async fn start_tls(
        name: &str,
        state: PodState,
        tls: tokio_rustls::TlsAcceptor,
    ) -> Arc<Pod> {
        Self::start_with(name, state, Some(tls)).await
    }

    async fn start_with(
        name: &str,
        state: PodState,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Arc<Pod> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
        let addr = listener.local_addr().expect("pod addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: AtomicU8::new(state as u8),
            served: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            drain_header: std::sync::atomic::AtomicBool::new(true),
            by_variant: Default::default(),
            http2: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            executions: Mutex::new(Default::default()),
            held_port: Mutex::new(None),
        });
        let pod = Arc::new(Pod {
            addr,
            shared,
            server: Mutex::new(None),
            stop: Mutex::new(None),
            tls,
        });
        if state == PodState::Gone {
            drop(listener);
            hold_port(&pod.shared, addr);
        } else {
            pod.serve(listener);
        }
        pod
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> PodState {
        PodState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// Moves the pod to `state`; into or out of `Gone` closes or reopens the
    /// port (the same port: SO_REUSEADDR).
    pub async fn set_state(&self, state: PodState) {
        let was = self.state();
        self.shared.state.store(state as u8, Ordering::Release);
        if state == PodState::Gone && was != PodState::Gone {
            let task = self.server.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
            hold_port(&self.shared, self.addr);
        } else if was == PodState::Gone && state != PodState::Gone {
            self.shared.held_port.lock().unwrap().take();
            let listener = TcpListener::bind(self.addr).await.expect("rebind pod port");
            self.serve(listener);
        }
    }

    /// A graceful exit (SIGTERM after preStop): the port closes at once, but
    /// requests already in flight on open connections finish (new ones on
    /// them get a draining 503 with `connection: close`), for up to `grace`;
    /// then every connection is cut. [`Pod::set_state`] to `Gone` is the
    /// abrupt version (a crash).
    pub fn exit(&self, grace: Duration) {
        self.shared
            .state
            .store(PodState::Gone as u8, Ordering::Release);
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(grace);
        }
    }

    /// Requests that arrived over HTTP/2.
    pub fn http2_requests(&self) -> u64 {
        self.shared.http2.load(Ordering::Acquire)
    }

    /// Arrivals tagged with `x-harness-variant: variant`.
    pub fn arrivals(&self, variant: usize) -> u64 {
        self.shared.by_variant[variant].load(Ordering::Acquire)
    }

    /// Whether a draining pod's 503 carries `x-mulligan-drain`.
    pub fn set_drain_header(&self, on: bool) {
        self.shared.drain_header.store(on, Ordering::Release);
    }

    /// Requests that reached the application.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Acquire)
    }

    /// The first requests that reached the application.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// `x-harness-id`s this pod's application ran, with how often.
    pub fn executions(&self) -> std::collections::HashMap<String, u32> {
        self.shared.executions.lock().unwrap().clone()
    }

    /// Requests answered 503 without processing.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Acquire)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let tls = self.tls.clone();
        let addr = self.addr;
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<Duration>();
        *self.stop.lock().unwrap() = Some(stop_tx);
        let task = tokio::spawn(async move {
            // Connections live in the set: aborting this task cuts them all.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    grace = &mut stop => {
                        drop(listener);
                        hold_port(&shared, addr);
                        let grace = grace.unwrap_or_default();
                        let _ = tokio::time::timeout(grace, async {
                            while conns.join_next().await.is_some() {}
                        })
                        .await;
                        return;
                    }
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let shared = Arc::clone(&shared);
                        let tls = tls.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                handle(Arc::clone(&shared), req)
                            });
                            let http = auto::Builder::new(TokioExecutor::new());
                            match tls {
                                None => {
                                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                                }
                                Some(tls) => {
                                    let Ok(stream) = tls.accept(stream).await else { return };
                                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// A body may fail on purpose (`/cut`): hyper then aborts the connection.
type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let state = PodState::from_u8(shared.state.load(Ordering::Acquire));
    let path = req.uri().path().to_string();
    if req.version() == http::Version::HTTP_2 {
        shared.http2.fetch_add(1, Ordering::AcqRel);
    }
    if let Some(v) = req.headers().get("x-harness-variant") {
        let index = v.to_str().ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(i) = index {
            if let Some(c) = shared.by_variant.get(i) {
                c.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    let service_ms: u64 = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let reply = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("x-pod", shared.name.as_str())
    };
    if path == "/ready" {
        let status = if state == PodState::Ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(reply(status).body(full("")).unwrap());
    }
    match state {
        PodState::Booting => {
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            let mut b = reply(StatusCode::SERVICE_UNAVAILABLE).header("x-pod-state", "booting");
            if shared.drain_header.load(Ordering::Acquire) {
                b = b.header("x-mulligan-drain", "1");
            }
            return Ok(b.body(full("not ready\n")).unwrap());
        }
        // Gone, but reached on a connection that was already open (a
        // graceful exit): rejected like a draining pod.
        PodState::Draining | PodState::Gone => {
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            let mut b = reply(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-pod-state", "draining")
                .header("connection", "close");
            if shared.drain_header.load(Ordering::Acquire) {
                b = b.header("x-mulligan-drain", "1");
            }
            return Ok(b.body(full("draining\n")).unwrap());
        }
        _ => {}
    }
    let (_parts, body) = match record(&shared, req).await {
        Ok(r) => r,
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST).body(full("")).unwrap()),
    };
    shared.served.fetch_add(1, Ordering::AcqRel);
    if state == PodState::Failing {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE)
            .body(full("failed after processing\n"))
            .unwrap());
    }
    if service_ms > 0 {
        tokio::time::sleep(Duration::from_millis(service_ms)).await;
    }
    let mut builder = reply(StatusCode::OK);
    if state == PodState::DrainingServing {
        builder = builder.header("connection", "close");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // `/v2/...` serves the same routes (a route's prefix rewrite lands there).
    let segments = match segments.as_slice() {
        ["v2", rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let body = match segments {
        ["echo"] => full(body),
        ["bytes", n] => full(super::payload(n.parse().unwrap_or(0))),
        ["stream", chunks, size] => {
            let chunks: usize = chunks.parse().unwrap_or(1);
            let size: usize = size.parse().unwrap_or(1);
            let data = Bytes::from(super::payload(chunks * size));
            let stream = futures::stream::iter(0..chunks).then(move |i| {
                let piece = data.slice(i * size..(i + 1) * size);
                async move {
                    // A real pause between chunks, so they travel separately.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok::<_, std::io::Error>(Frame::data(piece))
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        ["trickle", n, ms] => {
            let n: usize = n.parse().unwrap_or(1);
            let pause = Duration::from_millis(ms.parse().unwrap_or(100));
            let data = Bytes::from(super::payload(n));
            let stream = futures::stream::iter(0..n).then(move |i| {
                let piece = data.slice(i..i + 1);
                async move {
                    tokio::time::sleep(pause).await;
                    Ok::<_, std::io::Error>(Frame::data(piece))
                }
            });
            builder = builder.header("content-length", n);
            BodyExt::boxed(StreamBody::new(stream))
        }
        ["cut", n] => {
            let n: usize = n.parse().unwrap_or(2);
            let half = Bytes::from(super::payload(n / 2));
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::other("cut mid-body on purpose")),
            ];
            builder = builder.header("content-length", n);
            BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
        }
        ["status", code] => {
            let code = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            return Ok(reply(code.unwrap_or(StatusCode::BAD_REQUEST))
                .body(full("status\n"))
                .unwrap());
        }
        ["overload"] => {
            return Ok(reply(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-envoy-overloaded", "true")
                .body(full("overloaded\n"))
                .unwrap());
        }
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            full(format!("hello from {} after {ms} ms\n", shared.name))
        }
        _ => full(format!("hello from {}\n", shared.name)),
    };
    Ok(builder.body(body).unwrap())
}

/// Reads the whole request and records it (method, URI, headers, body, and
/// its `x-harness-id`) as the application received it.
async fn record(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, Bytes), hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Some(id) = parts
        .headers
        .get("x-harness-id")
        .and_then(|v| v.to_str().ok())
    {
        *shared
            .executions
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default() += 1;
    }
    let mut seen = shared.seen.lock().unwrap();
    if seen.len() < SEEN_KEPT {
        seen.push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            body: body.clone(),
        });
    }
    Ok((parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a bind without `SO_REUSEADDR` gets `addr`: what the
    /// kernel's choice of a port for `bind(0)` (every pod and Envoy
    /// listener of the rig) asks first.
    fn free(addr: SocketAddr) -> bool {
        TcpSocket::new_v4().and_then(|s| s.bind(addr)).is_ok()
    }

    /// A gone pod refuses connections and keeps its port: another socket
    /// of the run taking it would answer in the gone pod's place.
    #[tokio::test]
    async fn a_gone_pod_refuses_connections_and_keeps_its_port() {
        for start in [PodState::Gone, PodState::Ready] {
            let pod = Pod::start("p", start).await;
            pod.set_state(PodState::Gone).await;
            assert!(
                !free(pod.addr),
                "started {start:?}: the port was given back"
            );
            assert!(
                tokio::net::TcpStream::connect(pod.addr).await.is_err(),
                "started {start:?}: a gone pod accepted a connection"
            );
            pod.set_state(PodState::Ready).await;
            let r = crate::client::get(pod.addr, "/").await;
            assert!(r.is_ok_and(|r| r.status == 200), "started {start:?}: back");
        }
        let pod = Pod::start("p", PodState::Ready).await;
        pod.exit(Duration::ZERO);
        let deadline = tokio::time::Instant::now() + crate::LOADED;
        while tokio::net::TcpStream::connect(pod.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "exit never closed the port"
            );
            tokio::task::yield_now().await;
        }
        assert!(!free(pod.addr), "an exited pod's port was given back");
    }
}
