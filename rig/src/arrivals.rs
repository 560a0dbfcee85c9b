//! A pod that notes when each request reaches its application, for tests
//! about the pace at which requests arrive ([`super::pods`] keeps what
//! arrived, not when).
//!
//! Not ready, it answers as a booting pod of [`super::pods`] does: `/ready`
//! 503, anything else 503 with `x-mulligan-drain` (rejected, not
//! processed, not noted). Ready, `/ready` is 200 and anything else is read
//! whole, noted and answered `hello`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// One request as it reached the application.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When its headers reached the application.
    pub at: Instant,
    /// Its `x-harness-id`, if any.
    pub id: Option<String>,
    pub method: String,
    pub body: Bytes,
}

#[derive(Default)]
struct Shared {
    ready: AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
}

pub struct StampedPod {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl StampedPod {
    /// A pod on a fresh loopback port, listening, ready or not.
    pub async fn start(ready: bool) -> StampedPod {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
        let addr = listener.local_addr().expect("pod addr");
        let shared = Arc::new(Shared::default());
        shared.ready.store(ready, Ordering::Release);
        let s = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&s), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StampedPod {
            addr,
            shared,
            server,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::Release);
    }

    /// Every request the application got, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }
}

impl Drop for StampedPod {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let ready = shared.ready.load(Ordering::Acquire);
    let answer = |status: StatusCode, body: &'static str| {
        let mut b = Response::builder().status(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            b = b.header("x-mulligan-drain", "1");
        }
        Ok(b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("response"))
    };
    if req.uri().path() == "/ready" {
        return if ready {
            answer(StatusCode::OK, "")
        } else {
            answer(StatusCode::SERVICE_UNAVAILABLE, "")
        };
    }
    if !ready {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, "");
    };
    let id = parts
        .headers
        .get("x-harness-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.arrivals.lock().unwrap().push(Arrival {
        at,
        id,
        method: parts.method.to_string(),
        body,
    });
    answer(StatusCode::OK, "hello\n")
}
