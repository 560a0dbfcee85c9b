//! A stand-in Kubernetes API server on loopback: enough of the list and
//! watch protocol (resourceVersions, streamed watch events, 410 Gone on an
//! expired watch, outages) for mulligan's discovery to be tested against real
//! Kubernetes JSON without a cluster.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{rt::TokioExecutor, rt::TokioIo, server::conn::auto};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast};

#[derive(Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    kind_of_event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Oldest resourceVersion a watch may resume from.
    oldest: u64,
    objects: Vec<(&'static str, Value)>,
    history: Vec<Change>,
}

pub struct KubeApi {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<()>,
    up: Arc<AtomicBool>,
}

type Body = BoxBody<Bytes, Infallible>;

impl KubeApi {
    pub async fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let addr = listener.local_addr().expect("addr");
        let api = KubeApi {
            addr,
            store: Arc::new(Mutex::new(Store::default())),
            changes: broadcast::channel(1024).0,
            up: Arc::new(AtomicBool::new(true)),
        };
        let (store, changes, up) = (
            Arc::clone(&api.store),
            api.changes.clone(),
            Arc::clone(&api.up),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (store, changes, up) = (Arc::clone(&store), changes.clone(), Arc::clone(&up));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(Arc::clone(&store), changes.clone(), Arc::clone(&up), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While down, every request gets a 503.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Creates or replaces an object (by kind and name).
    pub fn apply(&self, kind: &'static str, mut object: Value) {
        let mut s = self.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = object["metadata"]["name"].clone();
        let existing = s
            .objects
            .iter()
            .position(|(k, o)| *k == kind && o["metadata"]["name"] == name);
        let event = match existing {
            Some(i) => {
                s.objects[i].1 = object.clone();
                "MODIFIED"
            }
            None => {
                s.objects.push((kind, object.clone()));
                "ADDED"
            }
        };
        s.history.push(Change {
            rv,
            kind,
            kind_of_event: event,
            object,
        });
        drop(s);
        let _ = self.changes.send(());
    }

    pub fn delete(&self, kind: &'static str, name: &str) {
        let mut s = self.store.lock().unwrap();
        let Some(i) = s
            .objects
            .iter()
            .position(|(k, o)| *k == kind && o["metadata"]["name"] == name)
        else {
            return;
        };
        let (_, mut object) = s.objects.remove(i);
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push(Change {
            rv,
            kind,
            kind_of_event: "DELETED",
            object,
        });
        drop(s);
        let _ = self.changes.send(());
    }

    /// Compacts history: every open watch ends with 410 Gone and watchers
    /// must list again.
    pub fn expire_watches(&self) {
        let mut s = self.store.lock().unwrap();
        s.oldest = s.rv + 1;
        drop(s);
        let _ = self.changes.send(());
    }
}

/// An EndpointSlice of `service` with endpoints (ip, ready, serving, terminating).
pub fn endpoint_slice(
    service: &str,
    name: &str,
    port: u16,
    endpoints: &[(&str, bool, bool, bool)],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready, serving, terminating)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        })).collect::<Vec<_>>(),
    })
}

pub fn service(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80}]},
    })
}

pub fn pod(name: &str, app: &str, ip: &str, deleting: bool) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    });
    if deleting {
        p["metadata"]["deletionTimestamp"] = json!("2026-11-21T12:00:00Z");
    }
    p
}

/// A Pod of `app` that is scheduled but not started (pulling its image):
/// Pending, with no IP yet.
pub fn pending_pod(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    })
}

fn matches(object: &Value, selector: Option<&str>) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',')
            .filter(|t| !t.is_empty())
            .all(|term| match term.split_once('=') {
                Some((k, v)) => object["metadata"]["labels"][k] == v,
                None => false,
            })
    })
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

async fn handle(
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<()>,
    up: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !up.load(Ordering::Acquire) {
        return Ok(full(
            StatusCode::SERVICE_UNAVAILABLE,
            status(503, "ServiceUnavailable"),
        ));
    }
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req.uri().query().map(url_pairs).unwrap_or_default();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, name): (&'static str, Option<&str>) = match parts.as_slice() {
        ["api", "v1", "namespaces", _, "services", n] => ("services", Some(n)),
        ["api", "v1", "namespaces", _, "pods"] => ("pods", None),
        ["apis", "discovery.k8s.io", "v1", "namespaces", _, "endpointslices"] => {
            ("endpointslices", None)
        }
        _ => return Ok(full(StatusCode::NOT_FOUND, status(404, "NotFound"))),
    };
    if let Some(name) = name {
        let s = store.lock().unwrap();
        return Ok(
            match s
                .objects
                .iter()
                .find(|(k, o)| *k == kind && o["metadata"]["name"] == name)
            {
                Some((_, o)) => full(StatusCode::OK, o.clone()),
                None => full(StatusCode::NOT_FOUND, status(404, "NotFound")),
            },
        );
    }
    let selector = param("labelSelector");
    let watch = matches!(param("watch").as_deref(), Some("true" | "1"));
    if !watch {
        let s = store.lock().unwrap();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, o)| *k == kind && matches(o, selector.as_deref()))
            .map(|(_, o)| o.clone())
            .collect();
        let list_kind = if kind == "pods" {
            "PodList"
        } else {
            "EndpointSliceList"
        };
        let api_version = if kind == "pods" {
            "v1"
        } else {
            "discovery.k8s.io/v1"
        };
        return Ok(full(
            StatusCode::OK,
            json!({
                "apiVersion": api_version, "kind": list_kind,
                "metadata": {"resourceVersion": s.rv.to_string()},
                "items": items,
            }),
        ));
    }
    // A watch: every change after `resourceVersion`, as it happens.
    let mut from: u64 = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let mut notified = changes.subscribe();
    tokio::spawn(async move {
        loop {
            let (events, expired) = {
                let s = store.lock().unwrap();
                if from + 1 < s.oldest {
                    (Vec::new(), true)
                } else {
                    let ev: Vec<Change> = s
                        .history
                        .iter()
                        .filter(|c| {
                            c.rv > from && c.kind == kind && matches(&c.object, selector.as_deref())
                        })
                        .cloned()
                        .collect();
                    (ev, false)
                }
            };
            if expired {
                let line =
                    json!({"type": "ERROR", "object": status(410, "Expired")}).to_string() + "\n";
                let _ = tx.send(Ok(Frame::data(Bytes::from(line)))).await;
                return;
            }
            for c in events {
                from = c.rv;
                let line = json!({"type": c.kind_of_event, "object": c.object}).to_string() + "\n";
                if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                    return;
                }
            }
            if notified.recv().await.is_err() {
                return;
            }
            // Past this point every change is newer than `from`, unless
            // history was compacted (checked at the top).
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("watch response"))
}

/// `a=b&c=d` with percent-decoding.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
