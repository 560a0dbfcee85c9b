//! Micro benchmarks of what mulligan does per ext_proc stream, without the
//! network. Healthy requests open no stream at all (the wiring asks only
//! about 5xx), so every figure here is paid by a failure only:
//! - `decide/attempt_retry`: a failed attempt (a 503 with the drain header)
//!   through the attempt role's `Exchange`, judged retry;
//! - `decide/gate_pass`: a retry's request headers through the gate, let
//!   through;
//! - `decide/final_503`: the 503 the client gets, through the final role,
//!   answered with `Retry-After`;
//! - `decide/classify_decide`: classification and policy alone;
//! - `idle_guard/*`: waiting for Envoy's next message with and without the
//!   `limits.stream_idle_timeout` timer around it (every message pays it).
//!
//! `cargo bench --bench hot_path`

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use envoy_types::pb::{
    envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::ext_proc::v3::{processing_request::Request, HttpHeaders, ProcessingRequest},
    },
    google::protobuf::{value::Kind, Struct, Value},
};
use mulligan::{
    classify::{classify, Observed},
    config::Config,
    drain::Drain,
    endpoints::Registry,
    ext_proc::{Context, Exchange, Role},
    metrics::Metrics,
    policy::{decide, RequestFacts},
};

fn header(k: &str, v: &str) -> HeaderValue {
    HeaderValue {
        key: k.into(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    }
}

/// Envoy's attributes on a message of the reference wiring.
fn attributes(code: Option<f64>, id: &str) -> Struct {
    let mut attrs = Struct::default();
    let mut put = |k: &str, v: Kind| {
        attrs.fields.insert(k.into(), Value { kind: Some(v) });
    };
    if let Some(code) = code {
        put("response.code", Kind::NumberValue(code));
    }
    put(
        "upstream.address",
        Kind::StringValue("127.0.0.1:8001".into()),
    );
    put("xds.cluster_name", Kind::StringValue("app".into()));
    put("request.id", Kind::StringValue(id.into()));
    put("request.method", Kind::StringValue("GET".into()));
    attrs
}

/// A retry's request headers, as the gate sees them.
fn retry_headers(id: &str) -> ProcessingRequest {
    let headers = [
        (":method", "GET"),
        (":path", "/projects/42/documents?page=3"),
        (":authority", "app.example.com"),
        (":scheme", "https"),
        ("x-envoy-attempt-count", "2"),
        ("x-request-id", id),
    ];
    let mut r = ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    r.attributes
        .insert("envoy.filters.http.ext_proc".into(), attributes(None, id));
    r
}

/// A failed response's headers: a 503, with the drain header when `drained`.
fn response_headers(id: &str, drained: bool) -> ProcessingRequest {
    let mut headers = vec![
        header(":status", "503"),
        header("content-type", "text/plain"),
        header("content-length", "19"),
    ];
    if drained {
        headers.push(header("x-mulligan-drain", "1"));
    }
    let mut r = ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            ..Default::default()
        })),
        ..Default::default()
    };
    r.attributes.insert(
        "envoy.filters.http.ext_proc".into(),
        attributes(Some(503.0), id),
    );
    r
}

fn context() -> Arc<Context> {
    let mut cfg = Config::default();
    cfg.endpoints.default = (1..=10)
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + p)))
        .collect();
    let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
    let metrics = Metrics::new();
    Arc::new(Context::new(&cfg, registry, metrics, Drain::new()))
}

/// A fresh request id per iteration: the verdict remembers each request's
/// failures, and a request failing again and again is held, not retried.
fn next_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "6f1c2a4e-9d7b-4c1e-8a3f-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One message through a fresh stream of `role`.
fn one(c: &mut Criterion, name: &str, role: Role, message: fn(&str) -> ProcessingRequest) {
    let ctx = context();
    c.bench_function(name, |b| {
        b.iter_batched(
            || message(&next_id()),
            |m| {
                futures::executor::block_on(async {
                    let mut x = Exchange::new(Arc::clone(&ctx), role);
                    black_box(x.on_message(m).await)
                })
            },
            BatchSize::SmallInput,
        )
    });
}

fn streams(c: &mut Criterion) {
    one(c, "decide/attempt_retry", Role::Attempt, |id| {
        response_headers(id, true)
    });
    one(c, "decide/gate_pass", Role::Retry, retry_headers);
    one(c, "decide/final_503", Role::Final, |id| {
        response_headers(id, false)
    });
}

/// Checks, once, that each bench measures the answer it names.
fn answers() {
    let ctx = context();
    let set = |r: Option<envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse>| {
        format!("{r:?}")
    };
    futures::executor::block_on(async {
        let mut x = Exchange::new(Arc::clone(&ctx), Role::Attempt);
        let r = set(x.on_message(response_headers("a", true)).await);
        assert!(r.contains("x-mulligan-retry"), "attempt_retry: {r}");
        let mut x = Exchange::new(Arc::clone(&ctx), Role::Retry);
        let r = set(x.on_message(retry_headers("a")).await);
        assert!(
            r.contains("RequestHeaders") && !r.contains("Immediate"),
            "gate_pass: {r}"
        );
        let mut x = Exchange::new(Arc::clone(&ctx), Role::Final);
        let r = set(x.on_message(response_headers("b", false)).await);
        assert!(r.contains("retry-after"), "final_503: {r}");
    });
}

fn decide_path(c: &mut Criterion) {
    answers();
    c.bench_function("decide/classify_decide", |b| {
        b.iter(|| {
            let cause = classify(black_box(&Observed {
                status: 503,
                details: "via_upstream",
                drain_header: true,
                ..Default::default()
            }));
            black_box(decide(
                cause,
                RequestFacts {
                    idempotent_method: true,
                    idempotency_key: false,
                },
                false,
            ))
        })
    });
}
/// A message that arrives after the stream started waiting for it (the
/// common case: Envoy's next phase comes later), awaited bare and inside
/// the idle timeout, side by side in one run.
fn idle_guard(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let idle = std::time::Duration::from_secs(300);
    let mut g = c.benchmark_group("idle_guard");
    g.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
                tokio::spawn(async move { tx.send(1) });
                black_box(rx.await.ok())
            })
        })
    });
    g.bench_function("with_timeout", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
                tokio::spawn(async move { tx.send(1) });
                black_box(tokio::time::timeout(idle, rx).await.ok())
            })
        })
    });
    g.finish();
}

criterion_group!(benches, decide_path, streams, idle_guard);
criterion_main!(benches);
