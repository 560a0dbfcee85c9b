//! HTTP clients for tests: HTTP/1.1 (keep-alive) and HTTP/2 (prior
//! knowledge), buffered or chunked request bodies.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

pub type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Body>,
}

impl HttpClient {
    pub fn new(proto: Proto) -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(30));
        if proto == Proto::Http2 {
            b.http2_only(true);
        }
        Self {
            inner: b.build(HttpConnector::new()),
        }
    }

    /// A client that opens a new connection for every request.
    pub fn fresh() -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_max_idle_per_host(0);
        Self {
            inner: b.build(HttpConnector::new()),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        self.send(Method::GET, addr, path, &[], empty()).await
    }
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A body sent in `chunk`-sized pieces with no length known up front, so
/// HTTP/1.1 uses chunked transfer encoding.
pub fn chunked(data: Vec<u8>, chunk: usize) -> Body {
    let data = Bytes::from(data);
    let pieces: Vec<Bytes> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| data.slice(i..(i + chunk).min(data.len())))
        .collect();
    let stream = futures::stream::iter(pieces).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(stream))
}

/// A one-off GET over a fresh HTTP/1.1 client (admin ports and the like).
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    HttpClient::new(Proto::Http1).get(addr, path).await
}

/// A one-off POST with an empty body.
pub async fn post(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    HttpClient::new(Proto::Http1)
        .send(Method::POST, addr, path, &[], empty())
        .await
}
