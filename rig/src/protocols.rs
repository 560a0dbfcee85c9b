//! gRPC and WebSocket "pods" and clients: what [`super::pods`] is for plain
//! HTTP, for the protocols that need more than a request and a reply.
//!
//! A [`ProtoPod`] is a real hyper server on loopback speaking HTTP/1.1 and
//! h2c (prior knowledge) on one port:
//! - gRPC (h2c), method `/test.Echo/Unary`: the request's message back, then
//!   trailers `grpc-status: 0` and `x-pod: NAME`;
//! - `/test.Echo/Stream`: `N` messages (`N` = the request message's first
//!   byte), 2 ms apart, then the same trailers;
//! - `/test.Echo/Cut`: `N` messages, then the stream is reset mid-response
//!   (no trailers): a server that dies while streaming;
//! - WebSocket (HTTP/1.1 `Upgrade: websocket`): `101 Switching Protocols`,
//!   then every byte the client sends comes back. Envoy treats an upgraded
//!   connection as opaque bytes, so the echo is raw bytes, not frames. An
//!   upgrade to `/fail` is answered `500` (keep-alive): an app that fails.
//!
//! What a pod does with each request depends on its [`ProtoState`].

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Where a protocol pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtoState {
    /// Serving.
    Ready = 0,
    /// preStop, as mulligan's docs ask of an app: HTTP `503` with
    /// `x-mulligan-drain: 1`, the request not processed (gRPC and upgrades
    /// alike; `connection: close` over HTTP/1.1).
    Draining = 1,
    /// preStop, the gRPC way: a trailers-only response (`200`,
    /// `grpc-status: 14` UNAVAILABLE) with `x-mulligan-drain: 1`, the
    /// request not processed.
    Unavailable = 2,
}

impl ProtoState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => ProtoState::Ready,
            1 => ProtoState::Draining,
            _ => ProtoState::Unavailable,
        }
    }
}

struct Shared {
    name: String,
    state: AtomicU8,
    /// Requests (gRPC calls, upgrades) that reached the application.
    served: AtomicU64,
    /// Requests rejected by a draining pod.
    rejected: AtomicU64,
    /// Requests that arrived over HTTP/2.
    http2: AtomicU64,
}

pub struct ProtoPod {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl ProtoPod {
    /// A pod on a fresh loopback port, in `state`.
    pub async fn start(name: &str, state: ProtoState) -> Arc<ProtoPod> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
        let addr = listener.local_addr().expect("pod addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: AtomicU8::new(state as u8),
            served: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            http2: AtomicU64::new(0),
        });
        let server = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Arc::new(ProtoPod {
            addr,
            shared,
            server,
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn set_state(&self, state: ProtoState) {
        self.shared.state.store(state as u8, Ordering::Release);
    }

    /// Requests that reached the application.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Acquire)
    }

    /// Requests a draining pod turned away.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Acquire)
    }

    /// Requests that arrived over HTTP/2.
    pub fn http2_requests(&self) -> u64 {
        self.shared.http2.load(Ordering::Acquire)
    }
}

impl Drop for ProtoPod {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in the set: aborting the accept task cuts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(Arc::clone(&shared), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A body that may fail on purpose (`/test.Echo/Cut`): hyper then resets the
/// stream.
type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let state = ProtoState::from_u8(shared.state.load(Ordering::Acquire));
    let h2 = req.version() == http::Version::HTTP_2;
    if h2 {
        shared.http2.fetch_add(1, Ordering::AcqRel);
    }
    let upgrade = is_upgrade(&req);
    match state {
        ProtoState::Ready => {}
        // The request is read first: an h2 answer sent before the body,
        // then RST_STREAM(NO_ERROR), races mulligan's look at the 503 (see
        // docs/decide.md, "gRPC and WebSocket").
        ProtoState::Draining => {
            let _ = req.into_body().collect().await;
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            let mut b = Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-pod", shared.name.as_str())
                .header("x-mulligan-drain", "1");
            if !h2 {
                b = b.header("connection", "close");
            }
            return Ok(b.body(full("draining\n")).expect("response"));
        }
        // Trailers-only is gRPC's; an upgrade gets the HTTP form.
        ProtoState::Unavailable if upgrade => {
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            return Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-pod", shared.name.as_str())
                .header("x-mulligan-drain", "1")
                .header("connection", "close")
                .body(full("draining\n"))
                .expect("response"));
        }
        ProtoState::Unavailable => {
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            return Ok(trailers_only(&shared.name, 14, "draining"));
        }
    }
    if upgrade && req.uri().path() == "/fail" {
        shared.served.fetch_add(1, Ordering::AcqRel);
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("x-pod", shared.name.as_str())
            .body(full("failed\n"))
            .expect("response"));
    }
    if upgrade {
        shared.served.fetch_add(1, Ordering::AcqRel);
        return Ok(websocket(&shared.name, req));
    }
    Ok(grpc(shared, req).await)
}

/// A gRPC trailers-only response: one HEADERS frame that ends the stream.
fn trailers_only(pod: &str, status: u32, message: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .header("grpc-status", status.to_string())
        .header("grpc-message", message)
        .header("x-pod", pod)
        .header("x-mulligan-drain", "1")
        .body(full(Bytes::new()))
        .expect("response")
}

async fn grpc(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.uri().path().to_string();
    let Ok(body) = req.into_body().collect().await else {
        return trailers_only(&shared.name, 13, "request body failed");
    };
    let Some(message) = decode(body.to_bytes()).into_iter().next() else {
        return trailers_only(&shared.name, 3, "no request message");
    };
    shared.served.fetch_add(1, Ordering::AcqRel);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("value"));
    trailers.insert("x-pod", shared.name.parse().expect("pod name"));
    let count = message.first().copied().unwrap_or(0) as usize;
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = match method.as_str() {
        "/test.Echo/Unary" => vec![
            Ok(Frame::data(encode(&message))),
            Ok(Frame::trailers(trailers)),
        ],
        "/test.Echo/Stream" => (0..count)
            .map(|i| Ok(Frame::data(encode(&stream_message(i)))))
            .chain([Ok(Frame::trailers(trailers))])
            .collect(),
        "/test.Echo/Cut" => (0..count)
            .map(|i| Ok(Frame::data(encode(&stream_message(i)))))
            .chain([Err(std::io::Error::other("cut mid-stream on purpose"))])
            .collect(),
        _ => return trailers_only(&shared.name, 12, "unknown method"),
    };
    // A real pause between messages, so they travel separately.
    let stream = futures::stream::iter(frames).then(|f| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        f
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .header("x-pod", shared.name.as_str())
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

/// Message `i` of a server stream: deterministic and distinct per index.
pub fn stream_message(i: usize) -> Bytes {
    Bytes::from(format!("message {i}: {}", "x".repeat(100 + i)))
}

/// Accepts the upgrade, then echoes every byte on the upgraded connection.
fn websocket(pod: &str, req: Request<Incoming>) -> Response<Body> {
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("x-pod", pod)
        .body(full(Bytes::new()))
        .expect("response")
}

/// One gRPC length-prefixed message (uncompressed).
pub fn encode(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("message fits"));
    b.put_slice(message);
    b.freeze()
}

/// The messages in a gRPC body; a torn last message is dropped.
pub fn decode(mut body: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            break;
        }
        body.advance(5);
        out.push(body.split_to(len));
    }
    out
}

/// A gRPC call's outcome as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcReply {
    /// The HTTP status.
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The messages received, in order.
    pub messages: Vec<Bytes>,
    /// The trailers, if the stream ended with them.
    pub trailers: Option<HeaderMap>,
    /// Whether the response ended in a stream error (a reset) instead.
    pub reset: bool,
}

impl GrpcReply {
    /// `grpc-status`, from the trailers or a trailers-only response's headers.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }

    /// The value of `name` in the trailers.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One gRPC call over a fresh h2c (prior knowledge) connection to `addr`:
/// `message` to `method`, the whole response read, frame by frame.
pub async fn grpc_call(addr: SocketAddr, method: &str, message: &[u8]) -> GrpcReply {
    let tcp = TcpStream::connect(addr).await.expect("connect to Envoy");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(encode(message)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("gRPC call timed out")
        .expect("gRPC response headers");
    let (parts, mut body) = resp.into_parts();
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut reset = false;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("gRPC body timed out")
    {
        match frame {
            Ok(f) if f.is_data() => data.put(f.into_data().expect("data")),
            Ok(f) => trailers = f.into_trailers().ok(),
            Err(_) => {
                reset = true;
                break;
            }
        }
    }
    GrpcReply {
        status: parts.status,
        headers: parts.headers,
        messages: decode(data.freeze()),
        trailers,
        reset,
    }
}

/// A WebSocket handshake's outcome, read off a raw HTTP/1.1 connection.
pub struct Upgrade {
    /// The response's status code.
    pub status: u16,
    /// The response head (status line and headers), as received.
    pub head: String,
    /// The connection, upgraded when `status` is 101.
    pub stream: TcpStream,
}

/// Sends a WebSocket upgrade request for `path` to `addr` and reads the
/// response head.
pub async fn upgrade(addr: SocketAddr, path: &str) -> Upgrade {
    upgrade_host(addr, path, "app").await
}

/// [`upgrade`] with `host` as the request's `host`.
pub async fn upgrade_host(addr: SocketAddr, path: &str, host: &str) -> Upgrade {
    let mut stream = TcpStream::connect(addr).await.expect("connect to Envoy");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: nothing past the head is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("upgrade response timed out")
            .expect("reading upgrade response");
        assert!(
            n == 1,
            "connection closed inside the response head: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Upgrade {
        status,
        head,
        stream,
    }
}

impl Upgrade {
    /// The value of header `name` in the response head (names compared
    /// case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Writes `data` and reads back as many bytes.
    pub async fn echo(&mut self, data: &[u8]) -> Vec<u8> {
        self.stream.write_all(data).await.expect("write upgraded");
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(30), self.stream.read_exact(&mut back))
            .await
            .expect("echo timed out")
            .expect("read upgraded");
        back
    }
}
