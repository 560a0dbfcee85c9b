//! Replay: sends a captured request again, to an endpoint the registry
//! chose, over pooled keep-alive connections (HTTP/1.1, or HTTP/2 with
//! `rescue.replay_http2`).
//!
//! The request is rebuilt as the upstream first saw it: method, path and
//! query, headers (minus hop-by-hop ones), body; plus `x-mulligan-attempt`
//! so upstream logs can tell a replay. The address comes only from the
//! registry, never from anything in the request.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use http::{header, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{config, labels::labels};

/// The header that numbers attempts: the original is 1, the first replay 2.
pub const ATTEMPT_HEADER: &str = "x-mulligan-attempt";

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
pub(crate) fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A request ready to be sent again, built once per rescue.
#[derive(Debug, Clone)]
pub struct Prepared {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
}

/// Why a captured request cannot be replayed faithfully.
#[derive(Debug, thiserror::Error)]
pub enum Unreplayable {
    #[error("request has no :method or :path")]
    MissingPseudoHeader,
    #[error("header {0:?} cannot be carried by HTTP/1.1")]
    BadHeader(String),
    /// The request's own fault, found before any endpoint is tried, so no
    /// endpoint is blamed for it.
    #[error(":path is not a request target HTTP can carry")]
    BadPath,
    #[error("CONNECT is a tunnel, not a request to replay")]
    Tunnel,
}

impl Prepared {
    /// Rebuilds the request from the headers Envoy sent in the request
    /// headers phase and the captured body.
    pub(crate) fn from_envoy(headers: &[EnvoyHeader], body: Bytes) -> Result<Self, Unreplayable> {
        let (mut method, mut path, mut authority) = (None, None, None);
        let mut map = HeaderMap::with_capacity(headers.len());
        for h in headers {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            match h.key.as_str() {
                ":method" => method = Some(value),
                ":path" => path = Some(value),
                ":authority" => authority = Some(value),
                k if k.starts_with(':') => {}
                k if hop_by_hop(k) || k == "content-length" || k == ATTEMPT_HEADER => {}
                k => {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| Unreplayable::BadHeader(k.to_string()))?;
                    let value = HeaderValue::from_bytes(value)
                        .map_err(|_| Unreplayable::BadHeader(k.to_string()))?;
                    map.append(name, value);
                }
            }
        }
        let method = method
            .and_then(|m| Method::from_bytes(m).ok())
            .ok_or(Unreplayable::MissingPseudoHeader)?;
        if method == Method::CONNECT {
            return Err(Unreplayable::Tunnel);
        }
        let path = origin_form(path.ok_or(Unreplayable::MissingPseudoHeader)?)?;
        if let Some(a) = authority {
            let host = HeaderValue::from_bytes(a)
                .map_err(|_| Unreplayable::BadHeader(":authority".into()))?;
            map.insert(header::HOST, host);
        }
        Ok(Self {
            method,
            path,
            headers: map,
            body,
        })
    }

    /// The URI for `endpoint`, from parts already checked.
    fn uri(&self, endpoint: SocketAddr) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(http::uri::Authority::try_from(endpoint.to_string()).ok()?);
        parts.path_and_query = Some(self.path.clone());
        Uri::from_parts(parts).ok()
    }
}

/// The path as the replay's URI will carry it: origin-form (`/...`) only, so
/// an absolute URL cannot point the replay anywhere, and only what
/// `http::Uri` accepts, so a path it rejects is refused here, before any
/// endpoint is tried, rather than failing every replay.
fn origin_form(path: &[u8]) -> Result<PathAndQuery, Unreplayable> {
    if !path.starts_with(b"/") {
        return Err(Unreplayable::MissingPseudoHeader);
    }
    let parsed = PathAndQuery::try_from(path).map_err(|_| Unreplayable::BadPath)?;
    // The parser drops a `#fragment`: a path that had one would not be the
    // request the app was sent.
    if parsed.as_str().len() != path.len() {
        return Err(Unreplayable::BadPath);
    }
    Ok(parsed)
}

/// A replayed response, read whole (within the size cap).
#[derive(Debug)]
pub struct Replayed {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body's share of `limits.max_buffered_bytes`, held until the
    /// response is dropped (once it has been handed to Envoy).
    _reserved: Reservation,
}

/// Body bytes held in memory across every stream, captured requests and
/// replayed responses alike, under `limits.max_buffered_bytes`.
#[derive(Debug)]
pub struct BufferBudget {
    used: AtomicUsize,
    max: usize,
}

impl BufferBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `n` bytes; false (nothing taken) past the limit.
    pub(crate) fn reserve(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// Bytes taken from a [`BufferBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Reservation {
    /// Nothing taken yet from `budget`.
    pub(crate) fn new(budget: Arc<BufferBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    /// Takes `n` more bytes; false (nothing taken) past the limit.
    pub(crate) fn take(&mut self, n: usize) -> bool {
        let ok = self.budget.reserve(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Gives back everything taken so far.
    pub(crate) fn release_all(&mut self) {
        self.budget.release(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// What one replay attempt got.
#[derive(Debug)]
pub enum Attempt {
    /// The endpoint answered (any status).
    Response(Replayed),
    /// No connection: the request never left mulligan.
    ConnectFailed,
    /// The response was larger than `rescue.max_response_body_bytes`, or
    /// than what `limits.max_buffered_bytes` had left.
    TooLarge,
    /// The request could not be put on the wire: its fault, not the
    /// endpoint's (nothing was sent).
    Unsendable,
    /// Timed out or broke after the request was sent: the app may have it.
    Failed(Failure),
}

labels! {
    /// Why a replay that was sent got no usable response.
    pub enum Failure {
        /// `timeout` ran out, connect to last body byte.
        Timeout => "timeout",
        /// The connection broke before the response headers.
        Broken => "broken",
        /// The response body was cut short.
        BodyCut => "body_cut",
    }
}

/// The pooled HTTP client replays go through.
#[derive(Clone, Debug)]
pub struct Replayer {
    client: Client<HttpConnector, Full<Bytes>>,
    max_response: usize,
    buffers: Arc<BufferBudget>,
}

impl Replayer {
    pub(crate) fn new(cfg: &config::Rescue, buffers: Arc<BufferBudget>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.per_try_timeout));
        // The timer runs hyper's idle sweep. Without one, idle connections
        // are evicted only when the same address is asked for again, and a
        // pod that left (new pods come with new addresses) stays in the
        // pool for good: a slow leak with every rollout.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .http2_only(cfg.replay_http2)
            .build(connector);
        Self {
            client,
            max_response: cfg.max_response_body_bytes,
            buffers,
        }
    }

    /// Sends `request` to `endpoint` as attempt number `attempt` (2 for the
    /// first replay), bounded by `timeout` from connect to last body byte.
    pub(crate) async fn send(
        &self,
        endpoint: SocketAddr,
        request: &Prepared,
        attempt: u32,
        timeout: Duration,
    ) -> Attempt {
        let mut req = Request::new(Full::new(request.body.clone()));
        *req.method_mut() = request.method.clone();
        let Some(uri) = request.uri(endpoint) else {
            return Attempt::Unsendable;
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.clone_from(&request.headers);
        headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        let exchange = async {
            let resp = match self.client.request(req).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return Attempt::ConnectFailed,
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint, error = %e, "replay broke");
                    return Attempt::Failed(Failure::Broken);
                }
            };
            let (parts, body) = resp.into_parts();
            match self.read_body(body).await {
                Ok((body, reserved)) => Attempt::Response(Replayed {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                    _reserved: reserved,
                }),
                Err(a) => a,
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(a) => a,
            Err(_) => Attempt::Failed(Failure::Timeout),
        }
    }
}

impl Replayer {
    /// Reads a response body whole, each chunk counted against the size cap
    /// and the shared buffer budget before it is kept.
    async fn read_body(
        &self,
        mut body: hyper::body::Incoming,
    ) -> Result<(Bytes, Reservation), Attempt> {
        let mut reserved = Reservation::new(Arc::clone(&self.buffers));
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Attempt::Failed(Failure::BodyCut))?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers: not replayed
            };
            if out.len() + chunk.len() > self.max_response || !reserved.take(chunk.len()) {
                return Err(Attempt::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok((out.freeze(), reserved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &[u8]) -> EnvoyHeader {
        EnvoyHeader {
            key: k.into(),
            value: String::new(),
            raw_value: v.to_vec(),
        }
    }

    #[test]
    fn rebuilds_the_request_without_hop_by_hop_headers() {
        let p = Prepared::from_envoy(
            &[
                h(":method", b"PUT"),
                h(":path", b"/a?b=c"),
                h(":authority", b"app.example"),
                h(":scheme", b"http"),
                h("connection", b"keep-alive"),
                h("transfer-encoding", b"chunked"),
                h("content-length", b"3"),
                h("x-request-id", b"abc"),
                h("set-me", b"1"),
                h("set-me", b"2"),
            ],
            Bytes::from_static(b"abc"),
        )
        .expect("replayable");
        assert_eq!(p.method, Method::PUT);
        assert_eq!(p.path, "/a?b=c");
        assert_eq!(p.headers["host"], "app.example");
        assert_eq!(p.headers["x-request-id"], "abc");
        assert_eq!(p.headers.get_all("set-me").iter().count(), 2);
        for gone in ["connection", "transfer-encoding", "content-length"] {
            assert!(p.headers.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_rebuild() {
        assert!(Prepared::from_envoy(&[h(":path", b"/")], Bytes::new()).is_err());
        let bad = Prepared::from_envoy(
            &[h(":method", b"GET"), h(":path", b"/"), h("x", b"a\nb")],
            Bytes::new(),
        );
        assert!(matches!(bad, Err(Unreplayable::BadHeader(_))));
        // A path that is an absolute URL could point anywhere: refused.
        let absolute = Prepared::from_envoy(
            &[h(":method", b"GET"), h(":path", b"http://169.254.169.254/")],
            Bytes::new(),
        );
        assert!(absolute.is_err());
        // What `http::Uri` rejects, a fragment it would drop, a tunnel:
        // the request's own fault, found before any endpoint is tried.
        for (method, path) in [
            ("GET", "/a<b>"),
            ("GET", "/a b"),
            ("GET", "/a#b"),
            ("CONNECT", "/"),
        ] {
            let r = Prepared::from_envoy(
                &[h(":method", method.as_bytes()), h(":path", path.as_bytes())],
                Bytes::new(),
            );
            assert!(
                matches!(r, Err(Unreplayable::BadPath | Unreplayable::Tunnel)),
                "{method} {path}: {r:?}"
            );
        }
        // Braces and quotes in a path, as some clients send them, are
        // carried as they came.
        let braces = Prepared::from_envoy(
            &[h(":method", b"GET"), h(":path", br#"/q/{"a"}?x=1"#)],
            Bytes::new(),
        );
        assert_eq!(braces.expect("replayable").path, r#"/q/{"a"}?x=1"#);
    }
}
